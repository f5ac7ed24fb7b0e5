"""A dome of calibrated cameras around the hand, stored the way InterHand2.6M stores its rig.

Units are metres inside the toolkit; the writer converts ``campos`` to millimetres.
Camera frame is OpenCV (x right, y down, z forward) and ``camrot`` is the world->camera
rotation, so ``X_cam = camrot @ (X_world - campos)`` and ``u = fx * X / Z + cx``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

#: World "up" of the rig (the dome's pole). Only the camera placement depends on it.
WORLD_UP = np.array([0.0, 0.0, 1.0])
PORTRAIT = (334, 512)
LANDSCAPE = (512, 334)


@dataclass(frozen=True)
class RigCamera:
    """One calibrated camera of the dome.

    Attributes:
        cam_id: InterHand-style camera id, e.g. ``"400002"``.
        campos: (3,) camera centre in world coordinates, metres.
        camrot: (3, 3) world->camera rotation (rows are the camera axes in world coordinates).
        focal: (2,) ``[fx, fy]`` in pixels.
        princpt: (2,) ``[cx, cy]`` in pixels.
        width, height: image size in pixels.
        gain: (3,) this camera's RGB gain (white balance and exposure of a real rig), applied
            to linear radiance before the sRGB encoding.
    """

    cam_id: str
    campos: np.ndarray
    camrot: np.ndarray
    focal: np.ndarray
    princpt: np.ndarray
    width: int
    height: int
    gain: np.ndarray

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) pinhole matrix K."""
        return np.array(
            [
                [self.focal[0], 0.0, self.princpt[0]],
                [0.0, self.focal[1], self.princpt[1]],
                [0, 0, 1.0],
            ]
        )

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points (metres) -> (N, 3) camera-frame points."""
        return (np.asarray(points, dtype=np.float64) - self.campos) @ self.camrot.T

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points -> ((N, 2) pixel coordinates ``(u, v)``, (N,) depths Z)."""
        cam = self.world_to_camera(points)
        z = cam[:, 2]
        uv = cam[:, :2] / z[:, None] * self.focal + self.princpt
        return uv, z

    def ray_directions(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Unit world directions (N, 3) of the rays through pixel coordinates ``u``, ``v`` (N,).

        Pixel ``(i, j)``'s centre is at ``u = j + 0.5``, ``v = i + 0.5`` only if the caller
        says so: this is the plain inverse of :meth:`project`.
        """
        cam = np.stack(
            [
                (u - self.princpt[0]) / self.focal[0],
                (v - self.princpt[1]) / self.focal[1],
                np.ones_like(u),
            ],
            axis=-1,
        )
        world = cam @ self.camrot  # R^T applied to each row
        return world / np.linalg.norm(world, axis=-1, keepdims=True)


def look_at_rotation(campos: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """World->camera rotation (3, 3) of a camera at ``campos`` looking at ``target``.

    OpenCV axes: z forward, x right, y down; ``roll`` (radians) turns the camera about its
    optical axis. Requires the viewing direction not to be parallel to :data:`WORLD_UP`.
    """
    forward = target - campos
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, WORLD_UP)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward])


def camera_ids(n_cameras: int) -> list[str]:
    """InterHand-style camera ids: ``400002``, ``400004``, ... (strings)."""
    return [str(400002 + 2 * i) for i in range(n_cameras)]


def make_dome(
    rng: np.random.Generator,
    n_cameras: int,
    *,
    distance: float = 1.0,
    focal: float = 1200.0,
    landscape_every: int = 3,
    min_elevation_deg: float = -35.0,
    max_elevation_deg: float = 72.0,
) -> list[RigCamera]:
    """Cameras spread over a dome around the world origin, all looking at the hand.

    Directions follow a golden-angle spiral, area-uniform in elevation between
    ``min_elevation_deg`` (below the hand) and ``max_elevation_deg``; distance, aim, focal
    length, principal point, roll and colour gain get small per-camera perturbations like
    a real calibrated rig. Every ``landscape_every``-th camera is landscape (512x334).

    Returns:
        ``n_cameras`` cameras with ids from :func:`camera_ids`.
    """
    golden = np.pi * (3.0 - np.sqrt(5.0))
    sin_lo, sin_hi = np.sin(np.radians([min_elevation_deg, max_elevation_deg]))
    cameras: list[RigCamera] = []
    for index, cam_id in enumerate(camera_ids(n_cameras)):
        sin_elev = sin_lo + (sin_hi - sin_lo) * (index + 0.5) / n_cameras
        elev = np.arcsin(sin_elev) + rng.normal(0.0, np.radians(2.0))
        azim = index * golden + rng.normal(0.0, np.radians(2.0))
        direction = np.array(
            [np.cos(elev) * np.cos(azim), np.cos(elev) * np.sin(azim), np.sin(elev)]
        )
        campos = direction * distance * (1.0 + rng.uniform(-0.05, 0.05))
        target = rng.normal(0.0, 0.01, size=3)
        # Most rig cameras are nearly upright; a few are mounted visibly rolled.
        roll = rng.normal(0.0, np.radians(3.0))
        if index % 5 == 4:
            roll += rng.choice([-1.0, 1.0]) * rng.uniform(np.radians(10.0), np.radians(25.0))
        width, height = LANDSCAPE if index % landscape_every == landscape_every - 1 else PORTRAIT
        fx = focal * (1.0 + rng.normal(0.0, 0.03))
        fy = fx * (1.0 + rng.normal(0.0, 0.002))
        princpt = np.array([width / 2.0, height / 2.0]) + rng.normal(0.0, 3.0, size=2)
        exposure = 1.0 + rng.normal(0.0, 0.04)
        gain = np.clip(exposure * (1.0 + rng.normal(0.0, 0.03, size=3)), 0.85, 1.15)
        cameras.append(
            RigCamera(
                cam_id=cam_id,
                campos=campos,
                camrot=look_at_rotation(campos, target, roll),
                focal=np.array([fx, fy]),
                princpt=princpt,
                width=width,
                height=height,
                gain=gain,
            )
        )
    return cameras


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3, 3) taking unit vector ``a`` onto unit vector ``b``.

    Requires ``a`` and ``b`` not to point in opposite directions.
    """
    a = np.asarray(a, dtype=np.float64) / np.linalg.norm(a)
    b = np.asarray(b, dtype=np.float64) / np.linalg.norm(b)
    axis = np.cross(a, b)
    cos = float(a @ b)
    skew = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + skew + skew @ skew / (1.0 + cos)


def cut_by_border(
    camera: RigCamera,
    rng: np.random.Generator,
    *,
    distance_range: tuple[float, float] = (0.5, 0.65),
    inset_px: tuple[float, float] = (5.0, 35.0),
) -> RigCamera:
    """``camera`` moved closer and turned so the hand is cut by one edge of its image.

    InterHand2.6M's dome has cameras that see the hand only partly: close ones and ones
    aimed past it. The camera keeps its direction from the hand but moves to a distance in
    ``distance_range`` (metres), then pans/tilts (keeping roughly its roll) until the hand's centre,
    the world origin, lands ``inset_px`` pixels inside a randomly chosen edge. Even edge-on,
    the hand's half-width there (about 30 mm, 65 px at 0.55 m) exceeds the inset, so part
    of the hand always lies outside the image.
    """
    direction = camera.campos / np.linalg.norm(camera.campos)
    campos = direction * rng.uniform(*distance_range)
    inset = rng.uniform(*inset_px)
    edge = int(rng.integers(4))  # left, right, top, bottom
    u = camera.width / 2.0 + rng.uniform(-0.15, 0.15) * camera.width
    v = camera.height / 2.0 + rng.uniform(-0.15, 0.15) * camera.height
    if edge == 0:
        u = inset
    elif edge == 1:
        u = camera.width - inset
    elif edge == 2:
        v = inset
    else:
        v = camera.height - inset
    wanted = np.array(
        [
            (u - camera.princpt[0]) / camera.focal[0],
            (v - camera.princpt[1]) / camera.focal[1],
            1.0,
        ]
    )
    # Turn the camera (in its own frame) so that the ray to the origin passes through (u, v).
    current = camera.camrot @ (-campos)
    camrot = rotation_between(wanted, current).T @ camera.camrot
    return dataclasses.replace(camera, campos=campos, camrot=camrot)


def with_white_balance(camera: RigCamera, rng: np.random.Generator, spread: float) -> RigCamera:
    """``camera`` with a white-balance error on top of its gain, as auto white balance leaves.

    A colour-temperature tilt (red up, blue down or the reverse, standard deviation
    ``spread``) and a smaller green/magenta tint multiply the camera's RGB gain.
    """
    tilt = rng.normal(0.0, spread)
    tint = rng.normal(0.0, spread / 2.0)
    balance = np.clip(np.array([1.0 + tilt, 1.0 + tint, 1.0 - tilt]), 0.7, 1.3)
    return dataclasses.replace(camera, gain=camera.gain * balance)
