"""HandAvatar's frame filters: drop views where the hand is too small, cut by the border,
too dark, grayscale, or barely visible. Every drop has a reason, counted in the
capture's :class:`~handnerf.data.interhand.SelectionReport`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from handnerf.data.crops import bbox_from_mask
from handnerf.data.interhand import FrameView, SelectionReport


@dataclass(frozen=True)
class FrameFilterConfig:
    """Thresholds (HandAvatar's values by default); ``None`` switches a filter off.

    Attributes:
        min_bbox_px: drop when the hand's bbox is narrower or shorter than this.
        border_margin_px: drop when the hand's bbox comes within this of an image edge.
        min_max_intensity: drop when the brightest pixel value is below this (too dark).
        drop_grayscale: drop grayscale images (colour channels equal up to ``grayscale_tolerance``).
        grayscale_tolerance: largest channel spread (max - min of R, G, B) still counted as gray;
            JPEG chroma noise in a gray image stays within a few levels.
        min_mask_px: drop when the hand mask has fewer pixels than this.
    """

    min_bbox_px: float | None = 80
    border_margin_px: float | None = 10
    min_max_intensity: int | None = 20
    drop_grayscale: bool = True
    grayscale_tolerance: int = 6
    min_mask_px: int | None = 3000


def hand_bbox(view: FrameView, mask: np.ndarray | None) -> tuple[float, float, float, float] | None:
    """``(x0, y0, x1, y1)`` of the hand: from the mask when given, else data.json's bbox."""
    if mask is not None:
        return bbox_from_mask(mask)
    if view.bbox is None:
        return None
    x, y, w, h = view.bbox
    return x, y, x + w, y + h


def check_bbox_size(
    bbox: tuple[float, float, float, float] | None, config: FrameFilterConfig
) -> str | None:
    if config.min_bbox_px is None or bbox is None:
        return None
    width, height = bbox[2] - bbox[0], bbox[3] - bbox[1]
    if min(width, height) < config.min_bbox_px:
        return f"hand bbox under {config.min_bbox_px:g} px"
    return None


def check_border(
    bbox: tuple[float, float, float, float] | None,
    image_width: int,
    image_height: int,
    config: FrameFilterConfig,
) -> str | None:
    if config.border_margin_px is None or bbox is None:
        return None
    margin = config.border_margin_px
    x0, y0, x1, y1 = bbox
    if x0 < margin or y0 < margin or x1 > image_width - margin or y1 > image_height - margin:
        return f"hand bbox within {margin:g} px of the border"
    return None


def check_dark(image: np.ndarray, config: FrameFilterConfig) -> str | None:
    if config.min_max_intensity is None:
        return None
    if int(np.max(image)) < config.min_max_intensity:
        return f"too dark (max < {config.min_max_intensity})"
    return None


def is_grayscale(image: np.ndarray, tolerance: int = 6) -> bool:
    """Whether an (H, W, 3) image has (nearly) equal colour channels everywhere.

    A pixel counts as coloured when its channel spread exceeds ``tolerance``; the image
    is grayscale when fewer than 0.1 % of its pixels are (JPEG ringing leaves a few).
    """
    if image.ndim == 2 or image.shape[-1] == 1:
        return True
    channels = image.astype(np.int16)
    spread = channels.max(axis=-1) - channels.min(axis=-1)
    return float(np.mean(spread > tolerance)) < 1e-3


def check_grayscale(image: np.ndarray, config: FrameFilterConfig) -> str | None:
    if config.drop_grayscale and is_grayscale(image, config.grayscale_tolerance):
        return "grayscale image"
    return None


def check_mask_area(mask: np.ndarray | None, config: FrameFilterConfig) -> str | None:
    if config.min_mask_px is None or mask is None:
        return None
    if int(np.count_nonzero(mask)) < config.min_mask_px:
        return f"mask under {config.min_mask_px} px"
    return None


def check_frame(
    view: FrameView,
    image: np.ndarray,
    mask: np.ndarray | None,
    config: FrameFilterConfig | None = None,
) -> str | None:
    """The first reason to drop ``view``, or None to keep it.

    Args:
        image: (H, W, 3) uint8 of the view.
        mask: (H, W) bool hand mask, or None (then the bbox comes from data.json and the
            mask-area filter is skipped).
    """
    config = config or FrameFilterConfig()
    bbox = hand_bbox(view, mask)
    for reason in (
        check_mask_area(mask, config),
        check_bbox_size(bbox, config),
        check_border(bbox, view.camera.width, view.camera.height, config),
        check_dark(image, config),
        check_grayscale(image, config),
    ):
        if reason is not None:
            return reason
    return None


def filter_views(
    views: Sequence[FrameView],
    load_image: Callable[[FrameView], np.ndarray],
    load_mask: Callable[[FrameView], np.ndarray] | None = None,
    config: FrameFilterConfig | None = None,
    report: SelectionReport | None = None,
) -> list[FrameView]:
    """The views that pass every filter; each drop is counted in ``report`` as
    ``"filter: <reason>"`` and a final step ``"after frame filters"`` is added."""
    config = config or FrameFilterConfig()
    kept: list[FrameView] = []
    for view in views:
        mask = load_mask(view) if load_mask is not None else None
        reason = check_frame(view, load_image(view), mask, config)
        if reason is None:
            kept.append(view)
        elif report is not None:
            report.skip(f"filter: {reason}")
    if report is not None:
        report.add_step("after frame filters", len(kept))
    return kept
