"""Square hand crops and full-frame downscales, with the camera adjusted to match.

Pixel coordinates follow :mod:`handnerf.data.camera`'s corner convention, under which a
crop at ``(x0, y0)`` of side ``w`` resized to ``S`` maps ``u -> (u - x0) * S / w`` exactly;
``cv2.resize`` samples with the same convention, so image and camera stay consistent.
Parts of a crop outside the image are black (HandAvatar's protocol: black background);
:attr:`Crop.valid` marks the pixels that come wholly from inside the image, so that an
evaluation can leave the padding out instead of scoring a render against black it never saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from handnerf.config import choice
from handnerf.data.camera import PinholeCamera
from handnerf.errors import ConfigError, DataError


@dataclass(frozen=True)
class CropConfig:
    """How a view is cut for training/evaluation.

    Attributes:
        mode: ``"crop"`` (square crop around the hand) or ``"full"`` (whole frame).
        scale: crop side relative to the longer side of the hand's bbox (HandAvatar: 1.3).
        out_size: crop output side in pixels (HandAvatar: 256).
        full_scale: resize factor of the whole frame in ``"full"`` mode (LiveHand/HandNeRF: 0.5).
    """

    mode: str = choice("crop", ("crop", "full"))
    scale: float = 1.3
    out_size: int = 256
    full_scale: float = 1.0


@dataclass(frozen=True, eq=False)
class Crop:
    """A cut-out view.

    Attributes:
        image: (S_h, S_w, 3) uint8.
        mask: (S_h, S_w) bool, or None.
        camera: the camera of ``image`` (same pose, adjusted K and size).
        box: ``(x0, y0, w, h)`` of the source region in source pixels (may extend outside).
        valid: (S_h, S_w) bool, True where the pixel is resampled only from source pixels
            (no padding in its footprint); None when the crop has no padding at all.
    """

    image: np.ndarray
    mask: np.ndarray | None
    camera: PinholeCamera
    box: tuple[int, int, int, int]
    valid: np.ndarray | None = None

    @property
    def valid_pixels(self) -> np.ndarray:
        """(S_h, S_w) bool: :attr:`valid`, or all True when the crop has no padding."""
        if self.valid is None:
            return np.ones(self.image.shape[:2], dtype=bool)
        return self.valid

    @property
    def padding_pixels(self) -> int:
        """How many output pixels see any padding (0 for a crop inside the image)."""
        return 0 if self.valid is None else int(np.count_nonzero(~self.valid))


def bbox_from_mask(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """``(x0, y0, x1, y1)`` of a (H, W) mask's pixels (x1/y1 exclusive), None when empty."""
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    cols = np.flatnonzero(np.asarray(mask).any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def bbox_from_points(
    camera: PinholeCamera, points: np.ndarray
) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` of (N, 3) world points projected by ``camera`` (those in front)."""
    uv, depth = camera.project(points)
    uv = uv[depth > 0]
    if len(uv) == 0:
        raise DataError(f"camera {camera.name}: no point lies in front of the camera")
    return (
        float(uv[:, 0].min()),
        float(uv[:, 1].min()),
        float(uv[:, 0].max()),
        float(uv[:, 1].max()),
    )


def square_box(
    bbox_xyxy: tuple[float, float, float, float], scale: float = 1.3
) -> tuple[int, int, int, int]:
    """An integer square ``(x0, y0, side, side)`` centred on a bbox, side ``scale * max(w, h)``."""
    x0, y0, x1, y1 = bbox_xyxy
    side = max(1, math.ceil(max(x1 - x0, y1 - y0) * scale))
    left = round((x0 + x1) / 2 - side / 2)
    top = round((y0 + y1) / 2 - side / 2)
    return left, top, side, side


def _cut(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The ``box`` region of ``array`` (H, W, ...), zero where it leaves the array."""
    x0, y0, w, h = box
    out = np.zeros((h, w, *array.shape[2:]), dtype=array.dtype)
    height, width = array.shape[:2]
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + w, width), min(y0 + h, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``size = (width, height)``: area averaging when shrinking, bilinear otherwise."""
    width, height = size
    if array.shape[1] == width and array.shape[0] == height:
        return array.copy()
    shrinking = width < array.shape[1] or height < array.shape[0]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=interpolation)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return _resize(np.asarray(mask, dtype=np.float32), size) >= 0.5


# A float32 resample of all-ones weights can land a few ulps under 1.
_FULL_COVERAGE = 1.0 - 1e-4


def padding_free(
    source_shape: tuple[int, int], box: tuple[int, int, int, int], size: tuple[int, int]
) -> np.ndarray | None:
    """(height, width) bool of the crop ``box`` of a ``source_shape = (H, W)`` image resized
    to ``size = (width, height)``: True where no padding enters the resampled pixel.

    Returns None when ``box`` lies wholly inside the image (no pixel sees padding).
    """
    height, width = source_shape
    x0, y0, w, h = box
    if x0 >= 0 and y0 >= 0 and x0 + w <= width and y0 + h <= height:
        return None
    # Resample the source's coverage exactly like the image: a pixel whose footprint
    # (area average or bilinear neighbours) touches padding gets a coverage below 1.
    coverage = _resize(_cut(np.ones((height, width), np.float32), box), size)
    return coverage >= _FULL_COVERAGE


def crop_box(
    image: np.ndarray,
    camera: PinholeCamera,
    box: tuple[int, int, int, int],
    out_size: int = 256,
    mask: np.ndarray | None = None,
) -> Crop:
    """Cut ``box = (x0, y0, w, h)`` out of (H, W, 3) ``image`` and resize it to ``out_size``."""
    if image.shape[:2] != (camera.height, camera.width):
        raise DataError(
            f"camera {camera.name}: image is {image.shape[1]}x{image.shape[0]}, "
            f"camera expects {camera.width}x{camera.height}"
        )
    x0, y0, w, h = box
    size = (int(out_size), int(out_size))
    image_out = _resize(_cut(image, box), size)
    mask_out = None if mask is None else _resize_mask(_cut(np.asarray(mask, bool), box), size)
    return Crop(
        image=image_out,
        mask=mask_out,
        camera=camera.cropped(x0, y0, w, h, size),
        box=(x0, y0, w, h),
        valid=padding_free(image.shape[:2], (x0, y0, w, h), size),
    )


def crop_hand(
    image: np.ndarray,
    camera: PinholeCamera,
    mask: np.ndarray | None = None,
    points: np.ndarray | None = None,
    scale: float = 1.3,
    out_size: int = 256,
) -> Crop:
    """A square crop around the hand: bbox of ``mask`` if given, else of projected ``points``.

    Args:
        image: (H, W, 3) uint8.
        camera: ``image``'s camera.
        mask: (H, W) bool hand mask (preferred source of the bbox).
        points: (N, 3) world points of the hand (e.g. posed MANO vertices).
        scale: crop side over the bbox's longer side.
        out_size: output side in pixels.
    """
    bbox = bbox_from_mask(mask) if mask is not None else None
    if bbox is None:
        if points is None:
            raise DataError(
                f"camera {camera.name}: cannot crop around the hand: the mask is empty "
                "and no points were given"
            )
        bbox = bbox_from_points(camera, points)
    return crop_box(image, camera, square_box(bbox, scale), out_size, mask)


def downscale(
    image: np.ndarray,
    camera: PinholeCamera,
    factor: float,
    mask: np.ndarray | None = None,
) -> Crop:
    """The whole frame resized by ``factor`` (size rounded to whole pixels), K scaled to match."""
    scaled_camera = camera.scaled(factor)
    size = (scaled_camera.width, scaled_camera.height)
    return Crop(
        image=_resize(image, size),
        mask=None if mask is None else _resize_mask(mask, size),
        camera=scaled_camera,
        box=(0, 0, camera.width, camera.height),
    )


def prepare_view(
    image: np.ndarray,
    camera: PinholeCamera,
    config: CropConfig,
    mask: np.ndarray | None = None,
    points: np.ndarray | None = None,
) -> Crop:
    """Apply a :class:`CropConfig`: hand crop or full-frame downscale."""
    if config.mode == "crop":
        return crop_hand(image, camera, mask, points, config.scale, config.out_size)
    if config.mode == "full":
        return downscale(image, camera, config.full_scale, mask)
    raise ConfigError(f"crop mode must be 'crop' or 'full', got {config.mode!r}")
