"""The viewer's camera: a viewpoint independent of image size, and its conversions.

viser reports a browser's camera as a camera-to-world rotation (``wxyz`` quaternion), a
position, a vertical field of view and the canvas aspect, all in OpenCV axes (x right,
y down, z forward): the same axes as :class:`PinholeCamera`. A :class:`ViewCamera` holds
that viewpoint and makes a :class:`PinholeCamera` of any resolution from it, so the same
view renders as a small preview while it moves and at full size when it stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from handnerf.data.camera import PinholeCamera
from handnerf.errors import ConfigError


@dataclass(frozen=True, eq=False)
class ViewCamera:
    """A viewpoint: where the camera is, where it looks, how wide it sees.

    Attributes:
        R: (3, 3) world -> camera rotation (``X_cam = R (X_world - center)``), OpenCV axes.
        center: (3,) camera centre in world coordinates, metres.
        fov_y: vertical field of view in radians.
        aspect: image width over height.
    """

    R: np.ndarray
    center: np.ndarray
    fov_y: float
    aspect: float

    def __post_init__(self) -> None:
        if not (0.0 < self.fov_y < math.pi) or not self.aspect > 0:
            raise ConfigError(
                f"viewer camera: fov_y must be in (0, pi) and aspect positive, "
                f"got fov_y={self.fov_y}, aspect={self.aspect}"
            )

    @classmethod
    def from_viser(
        cls, wxyz: np.ndarray, position: np.ndarray, fov: float, aspect: float
    ) -> ViewCamera:
        """A browser camera as viser reports it (camera -> world ``wxyz`` and ``position``)."""
        w, x, y, z = (float(v) for v in np.asarray(wxyz).reshape(4))
        R_world_camera = Rotation.from_quat([x, y, z, w]).as_matrix()
        return cls(
            R=R_world_camera.T,
            center=np.asarray(position, dtype=np.float64).reshape(3).copy(),
            fov_y=float(fov),
            aspect=float(aspect),
        )

    @classmethod
    def from_pinhole(cls, camera: PinholeCamera) -> ViewCamera:
        """The viewpoint of a capture camera (its principal point taken as centred)."""
        fx, fy = float(camera.K[0, 0]), float(camera.K[1, 1])
        half_h = camera.height / (2.0 * fy)
        half_w = camera.width / (2.0 * fx)
        return cls(
            R=np.asarray(camera.R, dtype=np.float64).copy(),
            center=camera.center.astype(np.float64),
            fov_y=2.0 * math.atan(half_h),
            aspect=half_w / half_h,
        )

    @property
    def wxyz(self) -> np.ndarray:
        """(4,) camera -> world rotation as viser's ``wxyz`` quaternion."""
        x, y, z, w = Rotation.from_matrix(self.R.T).as_quat()
        return np.array([w, x, y, z])

    @property
    def forward(self) -> np.ndarray:
        """(3,) viewing direction in world coordinates (the camera's +z)."""
        return self.R[2].copy()

    @property
    def up(self) -> np.ndarray:
        """(3,) image-up direction in world coordinates (the camera's -y)."""
        return -self.R[1]

    def image_size(self, long_side: int) -> tuple[int, int]:
        """``(width, height)`` in pixels of an image whose longer side is ``long_side``."""
        if long_side < 1:
            raise ConfigError(f"viewer image size must be >= 1 px, got {long_side}")
        if self.aspect >= 1.0:
            return long_side, max(1, round(long_side / self.aspect))
        return max(1, round(long_side * self.aspect)), long_side

    def pinhole(self, long_side: int) -> PinholeCamera:
        """This viewpoint as a pinhole camera whose image's longer side is ``long_side`` px.

        Square pixels, principal point at the image centre, and the vertical field of view
        kept exactly (the width is rounded to whole pixels).
        """
        width, height = self.image_size(long_side)
        focal = 0.5 * height / math.tan(0.5 * self.fov_y)
        K = np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])
        return PinholeCamera(
            K=K, R=self.R.copy(), t=-self.R @ self.center, width=width, height=height, name="view"
        )
