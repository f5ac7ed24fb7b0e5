"""Pinhole cameras in InterHand2.6M's convention, in metres.

World -> camera is ``X_cam = R @ X_world + t`` with ``t = -R @ campos`` (``campos`` is the
camera centre in world coordinates), OpenCV axes (x right, y down, z forward), no lens
distortion. Image coordinates are *continuous* with the corner convention: pixel
``(col, row)`` covers ``[col, col + 1) x [row, row + 1)`` and its centre is at
``(col + 0.5, row + 0.5)``. With that convention resizing an image by ``s`` scales every
intrinsic (``fx, fy, cx, cy``) by exactly ``s``, and cropping at ``(x0, y0)`` shifts the
principal point by exactly ``(-x0, -y0)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from handnerf.errors import DataError

#: Tolerance on ``R @ R.T - I`` and ``det(R) - 1``; InterHand stores rotations with ~1e-7 noise.
_ROTATION_TOLERANCE = 1e-4
#: Largest magnitude accepted in a camera entry: beyond it float32 math on GPU overflows
#: (and no real capture is kilometres across or has focal lengths of 1e10 px).
_MAX_VALUE = 1e9


def holds_json_bool(value: object) -> bool:
    """Whether a JSON value holds ``true``/``false`` anywhere in its (nested) lists.

    ``np.asarray([True, 0.5])`` is a float array: a boolean among numbers would silently
    become 1.0, so fields of numbers look for booleans explicitly.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            return True
        if isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _as_array(value: object, shape: tuple[int, ...], where: str, field: str) -> np.ndarray:
    """``value`` as a finite float64 array of ``shape``, else DataError naming ``where``/``field``."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nesting
        raise DataError(f"{where}: {field} is not numeric ({exc})") from exc
    # Without a dtype, numpy keeps strings, bools, None and ints too big for int64 as
    # they are, so they can be refused instead of being coerced into numbers.
    if raw.dtype.kind not in "iuf":
        raise DataError(f"{where}: {field} is not numeric (holds {raw.dtype} values)")
    if holds_json_bool(value):
        raise DataError(f"{where}: {field} is not numeric (holds true/false)")
    array = raw.astype(np.float64)
    if array.shape != shape:
        raise DataError(f"{where}: {field} must have shape {shape}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise DataError(f"{where}: {field} contains NaN or inf")
    if np.any(np.abs(array) > _MAX_VALUE):
        raise DataError(f"{where}: {field} holds values beyond {_MAX_VALUE:g} ({array.tolist()})")
    return array


@dataclass(frozen=True, eq=False)
class PinholeCamera:
    """An undistorted pinhole camera.

    Attributes:
        K: (3, 3) intrinsics in pixels.
        R: (3, 3) world -> camera rotation.
        t: (3,) world -> camera translation in metres (``X_cam = R X_world + t``).
        width: image width in pixels.
        height: image height in pixels.
        name: camera id (InterHand's ``'400002'``), for messages and bookkeeping.
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int
    name: str = ""

    @classmethod
    def from_interhand(
        cls,
        campos_mm: object,
        camrot: object,
        focal: object,
        princpt: object,
        width: int,
        height: int,
        name: str,
        where: str,
    ) -> PinholeCamera:
        """Build from one camera of InterHand2.6M's ``camera.json`` (campos in millimetres).

        ``where`` names the source for error messages, e.g.
        ``"annotations/test/InterHand2.6M_test_camera.json: cams['0'] camera '400002'"``.
        Raises DataError on wrong shapes, non-finite values, a rotation that is not
        orthonormal with determinant +1, non-positive focal lengths or image size.
        """
        campos = _as_array(campos_mm, (3,), where, "campos") / 1000.0
        rotation = _as_array(camrot, (3, 3), where, "camrot")
        focal_xy = _as_array(focal, (2,), where, "focal")
        principal = _as_array(princpt, (2,), where, "princpt")
        orthogonality = np.abs(rotation @ rotation.T - np.eye(3)).max()
        determinant = float(np.linalg.det(rotation))
        if orthogonality > _ROTATION_TOLERANCE or abs(determinant - 1.0) > _ROTATION_TOLERANCE:
            raise DataError(
                f"{where}: camrot is not a rotation (max |R R^T - I| = {orthogonality:.2e}, "
                f"det = {determinant:.4f}; expected an orthonormal matrix with det +1)"
            )
        if np.any(focal_xy <= 0):
            raise DataError(f"{where}: focal must be positive, got {focal_xy.tolist()}")
        if int(width) <= 0 or int(height) <= 0:
            raise DataError(f"{where}: image size must be positive, got {width}x{height}")
        intrinsics = np.array(
            [[focal_xy[0], 0.0, principal[0]], [0.0, focal_xy[1], principal[1]], [0.0, 0.0, 1.0]]
        )
        return cls(
            K=intrinsics,
            R=rotation,
            t=-rotation @ campos,
            width=int(width),
            height=int(height),
            name=str(name),
        )

    @property
    def center(self) -> np.ndarray:
        """(3,) camera centre in world coordinates, metres (``-R^T t``)."""
        return -self.R.T @ self.t

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.width, self.height

    def world_to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) camera-frame points."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return points @ self.R.T + self.t

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project (N, 3) world points.

        Returns ``uv`` (N, 2) continuous pixel coordinates (corner convention) and
        ``depth`` (N,) the camera-frame z; points with ``depth <= 0`` lie behind the
        camera and their ``uv`` is meaningless (inf/NaN is avoided by dividing by a
        clamped depth).
        """
        cam = self.world_to_camera(points)
        depth = cam[:, 2]
        safe = np.where(np.abs(depth) < 1e-12, 1e-12, depth)
        uv = (cam[:, :2] / safe[:, None]) * np.diag(self.K)[:2] + self.K[:2, 2]
        return uv, depth

    def pixel_grid(self) -> np.ndarray:
        """(H * W, 2) integer ``(col, row)`` of every pixel, row-major."""
        rows, cols = np.mgrid[0 : self.height, 0 : self.width]
        return np.stack([cols.ravel(), rows.ravel()], axis=-1)

    def world_rays(self, pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rays through pixel centres.

        Args:
            pixels: (N, 2) integer ``(col, row)`` pixel indices; ``None`` gives every pixel
                in row-major order (N = H * W). The ray passes through ``(col + 0.5, row + 0.5)``.

        Returns:
            origins (N, 3) (the camera centre, world metres) and unit directions (N, 3) in world.
        """
        if pixels is None:
            pixels = self.pixel_grid()
        pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
        centres = pixels + 0.5
        fx, fy = self.K[0, 0], self.K[1, 1]
        cx, cy = self.K[0, 2], self.K[1, 2]
        dirs_cam = np.stack(
            [(centres[:, 0] - cx) / fx, (centres[:, 1] - cy) / fy, np.ones(len(centres))],
            axis=-1,
        )
        # Rows of R are the camera axes in world coordinates, so R^T maps camera -> world.
        dirs_world = dirs_cam @ self.R
        dirs_world /= np.linalg.norm(dirs_world, axis=-1, keepdims=True)
        origins = np.broadcast_to(self.center, dirs_world.shape).copy()
        return origins, dirs_world

    def scaled(self, factor: float) -> PinholeCamera:
        """The camera of this image resized by ``factor`` (size rounded to whole pixels).

        The intrinsics scale by the exact per-axis ratio of the new to the old size, which
        is what ``cv2.resize`` to that size does under the corner convention.
        """
        if not factor > 0:
            raise ValueError(f"scale factor must be positive, got {factor}")
        new_width = max(1, round(self.width * factor))
        new_height = max(1, round(self.height * factor))
        return self.resized(new_width, new_height)

    def resized(self, new_width: int, new_height: int) -> PinholeCamera:
        """The camera of this image resized to ``new_width x new_height``."""
        sx = new_width / self.width
        sy = new_height / self.height
        scale = np.diag([sx, sy, 1.0])
        return PinholeCamera(
            K=scale @ self.K,
            R=self.R,
            t=self.t,
            width=int(new_width),
            height=int(new_height),
            name=self.name,
        )

    def cropped(
        self, x0: float, y0: float, w: float, h: float, out_size: int | Sequence[int]
    ) -> PinholeCamera:
        """The camera of the crop ``[x0, x0 + w) x [y0, y0 + h)`` resized to ``out_size``.

        ``out_size`` is an int (square output) or ``(out_width, out_height)``. A projected
        point ``uv`` lands at ``((u - x0) * out_width / w, (v - y0) * out_height / h)``.
        """
        if isinstance(out_size, int):
            out_width = out_height = out_size
        else:
            out_width, out_height = (int(v) for v in out_size)
        if w <= 0 or h <= 0 or out_width <= 0 or out_height <= 0:
            raise ValueError(f"crop and output sizes must be positive, got {w}x{h} -> {out_size}")
        sx = out_width / w
        sy = out_height / h
        affine = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy], [0.0, 0.0, 1.0]])
        return PinholeCamera(
            K=affine @ self.K,
            R=self.R,
            t=self.t,
            width=out_width,
            height=out_height,
            name=self.name,
        )


def camera_to_json(camera: PinholeCamera) -> dict[str, Any]:
    """``camera`` as JSON: ``K`` (3, 3), ``R`` (3, 3), ``t`` (3,), ``width``, ``height``."""
    return {
        "K": camera.K.tolist(),
        "R": camera.R.tolist(),
        "t": camera.t.tolist(),
        "width": camera.width,
        "height": camera.height,
    }


def camera_from_json(entry: dict[str, Any], name: str) -> PinholeCamera:
    """The camera :func:`camera_to_json` wrote (a prepared cache's ``cameras`` entry)."""
    return PinholeCamera(
        K=np.asarray(entry["K"], dtype=np.float64),
        R=np.asarray(entry["R"], dtype=np.float64),
        t=np.asarray(entry["t"], dtype=np.float64),
        width=int(entry["width"]),
        height=int(entry["height"]),
        name=name,
    )
