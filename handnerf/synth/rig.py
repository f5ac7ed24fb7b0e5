"""A dome of calibrated cameras around the hand, stored the way InterHand2.6M stores its rig.

Units are metres inside the toolkit; the writer converts ``campos`` to millimetres.
Camera frame is OpenCV (x right, y down, z forward) and ``camrot`` is the world->camera
rotation, so ``X_cam = camrot @ (X_world - campos)`` and ``u = fx * X / Z + cx``.
"""

from __future__ import annotations

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
