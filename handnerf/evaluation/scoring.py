"""Score one evaluated view under a protocol, never scoring a crop's padding.

A hand crop near the image border reaches past it; those crop pixels hold black padding,
not a photograph of anything. Comparing the render there against black would penalise a
model for drawing the (real) scene that the camera never recorded, so padding is taken
out of every metric:

- **PSNR**: the squared error is averaged over the valid (non-padding) pixels only (and
  over the hand mask's valid pixels for ``metric_region="mask"``).
- **SSIM**: the SSIM map is averaged over the valid pixels only; before it is computed
  render and ground truth are both set to zero in the padding, so the 11x11 windows of
  valid pixels next to the padding see identical values on both sides there and the
  render's padding cannot move any window's statistics.
- **LPIPS**: a convolutional network has no pixel mask, so it sees the whole crop with
  render and ground truth both zero in the padding: the padding then holds no difference
  of its own, and whatever the render drew there does not change the score. (Features of
  the valid pixels next to the padding still see the zero border, identically in both
  images; that is as far as LPIPS can leave padding out.)

Besides the protocol's numbers every view gets the inside-mask numbers (PSNR/SSIM over the
ground-truth hand mask, LPIPS on both images set to 0 outside it), so that reports under
different protocols share one comparable row, and the protocol's extras: HandNeRF's
projected-box zeroing (:func:`projected_box_mask`), LiveHand's LPIPS x1000 and XHand's
code-compatible PSNR (:func:`xhand_code_psnr`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from handnerf.data.camera import PinholeCamera
from handnerf.data.crops import bbox_from_mask
from handnerf.data.filters import (
    check_bbox_size,
    check_border,
    check_dark,
    check_grayscale,
    check_mask_area,
)
from handnerf.errors import ParameterError
from handnerf.evaluation.protocols import EvalProtocol
from handnerf.metrics.image import psnr, ssim
from handnerf.metrics.perceptual import PerceptualMetric

#: A render pixel counts as "predicted hand" when a channel exceeds this: non-black once
#: quantised to 8 bits (the renders have no alpha; the background is black).
PRED_MASK_THRESHOLD = 0.5 / 255.0
#: XHand's code computes PSNR as ``28*log10(1/sqrt(MSE))``, not ``20*log10``.
XHAND_CODE_PSNR_FACTOR = 28.0
#: Holes (the real-MANO issue's measure): hand pixels, the MANO mask eroded by
#: HOLE_ERODE_PX so that silhouette edges do not count, where the ground truth is not dark
#: (max channel > HOLE_GT_MIN) but the render is near black (max channel < HOLE_RENDER_MAX).
HOLE_ERODE_PX = 2
HOLE_GT_MIN = 30.0 / 255.0
HOLE_RENDER_MAX = 20.0 / 255.0


def drop_reason(
    protocol: EvalProtocol, mask: np.ndarray, image: np.ndarray | None = None
) -> str | None:
    """Why ``protocol``'s frame filters drop a view, or None to keep it.

    ``mask`` is the (H, W) hand mask and ``image`` the (H, W, 3) uint8 camera image, both
    at the camera's native size; without ``image`` the dark and grayscale filters are
    skipped.
    """
    config = protocol.frame_filter_config()
    if config is None:
        return None
    height, width = mask.shape[:2]
    bbox = bbox_from_mask(mask)
    reasons = [
        check_mask_area(mask, config),
        check_bbox_size(bbox, config),
        check_border(bbox, width, height, config),
    ]
    if image is not None:
        reasons += [check_dark(image, config), check_grayscale(image, config)]
    return next((reason for reason in reasons if reason is not None), None)


def projected_box_mask(camera: PinholeCamera, vertices: np.ndarray, padding: float) -> np.ndarray:
    """(H, W) bool: pixels whose ray meets the 3D box around ``vertices``.

    The box is the axis-aligned bounding box of the (N, 3) world ``vertices`` grown by
    ``padding`` on every side; a pixel's ray (through its centre) meeting it is exactly the
    pixel lying in the box's projection, which is how HandNeRF's code selects the pixels it
    keeps (``mask_at_box``).
    """
    points = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise ParameterError("vertices: no point to bound")
    low, high = points.min(axis=0) - padding, points.max(axis=0) + padding
    origins, dirs = camera.world_rays()
    # Slab test; a direction component of 0 gets a tiny stand-in so that the slab it
    # cannot leave gives (-inf, inf) or an empty interval, never NaN.
    safe = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
    t_low, t_high = (low - origins) / safe, (high - origins) / safe
    near = np.minimum(t_low, t_high).max(axis=1)
    far = np.maximum(t_low, t_high).min(axis=1)
    hit = far >= np.maximum(near, 0.0)
    return hit.reshape(camera.height, camera.width)


def predicted_mask(pred: np.ndarray, threshold: float = PRED_MASK_THRESHOLD) -> np.ndarray:
    """(H, W) bool: render pixels that are not black (the render's hand)."""
    return np.asarray(pred).max(axis=-1) > threshold


def xhand_code_psnr(pred: np.ndarray, gt: np.ndarray, pred_mask: np.ndarray) -> float | None:
    """PSNR as XHand's released code computes it, or None when the render is all black.

    Both images are set to 0 outside the PREDICTED mask and the MSE is taken over that
    mask's pixels (all three channels), then ``28*log10(1/sqrt(MSE))``: i.e. 28/20 of the
    correct PSNR over the predicted mask. Hand pixels the render misses count for nothing.
    """
    keep = np.asarray(pred_mask, dtype=bool)
    if not keep.any():
        return None
    pred_z, gt_z = blank_padding(pred, gt, keep)
    return XHAND_CODE_PSNR_FACTOR / 20.0 * psnr(pred_z, gt_z, keep)


def blank_padding(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (H, W, 3) ``pred`` and ``gt`` with both set to zero where ``valid`` is False."""
    keep = np.asarray(valid, dtype=bool)
    if keep.shape != pred.shape[:2] or pred.shape != gt.shape:
        raise ParameterError(
            f"valid: expected shape {pred.shape[:2]} to match pred {pred.shape} and "
            f"gt {gt.shape}, got {keep.shape}"
        )
    weight = keep[..., None].astype(pred.dtype)
    return pred * weight, gt * weight.astype(gt.dtype)


def scored_pixels(protocol: EvalProtocol, mask: np.ndarray, valid: np.ndarray) -> np.ndarray | None:
    """(H, W) bool pixels PSNR and SSIM average over, or None for every pixel.

    ``mask`` is the hand mask and ``valid`` the crop's non-padding pixels.
    """
    keep = np.asarray(valid, dtype=bool)
    if protocol.uses_mask:
        return np.asarray(mask, dtype=bool) & keep
    # A crop with no padding keeps the plain whole-image mean (SSIM then also keeps its
    # usual 5-pixel border rule), so scores of such crops are unchanged.
    return None if keep.all() else keep


def _inside_mask(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, perceptual: PerceptualMetric | None
) -> dict[str, float | None]:
    """PSNR/SSIM over ``mask``'s pixels and LPIPS of both images set to 0 outside it.

    A view whose mask is empty (or has no pixel 5 px from the border, for SSIM) has no
    inside-mask score: None.
    """
    keep = np.asarray(mask, dtype=bool)
    pred_m, gt_m = blank_padding(pred, gt, keep)
    scores: dict[str, float | None] = {"mask_psnr": None, "mask_ssim": None}
    if keep.any():
        scores["mask_psnr"] = psnr(pred_m, gt_m, keep)
        try:
            scores["mask_ssim"] = ssim(pred_m, gt_m, keep)
        except ParameterError:  # the mask lies wholly in SSIM's 5-pixel border
            pass
    scores["mask_lpips"] = None if perceptual is None else perceptual.score(pred_m, gt_m)
    return scores


def hand_scores(
    pred: np.ndarray, gt: np.ndarray, hand_masks: dict[str, np.ndarray]
) -> dict[str, float | int | None]:
    """Each hand of a two-hand view scored inside its own visible mask, as the inside-mask
    numbers are (PSNR/SSIM over the mask's pixels, both images 0 outside it).

    Args:
        pred, gt: (H, W, 3) float in [0, 1].
        hand_masks: ``{side: (H, W) bool}`` each hand's visible pixels (disjoint).

    Returns:
        ``{side}_psnr``, ``{side}_ssim`` (None for a hand with no visible pixel) and
        ``{side}_px`` (its visible pixels) per side.
    """
    out: dict[str, float | int | None] = {}
    for side, mask in hand_masks.items():
        scores = _inside_mask(pred, gt, mask, None)
        out[f"{side}_psnr"] = scores["mask_psnr"]
        out[f"{side}_ssim"] = scores["mask_ssim"]
        out[f"{side}_px"] = int(np.count_nonzero(mask))
    return out


def hole_pixels(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """(holes, hand pixels): near-black render pixels inside the eroded (H, W) ``mask``
    where the (H, W, 3) ground truth in [0, 1] is not dark, and how many pixels were tested."""
    import cv2

    size = 2 * HOLE_ERODE_PX + 1
    kernel = np.ones((size, size), np.uint8)
    inside = cv2.erode(np.asarray(mask, dtype=np.uint8), kernel) > 0
    inside &= np.asarray(gt).max(axis=-1) > HOLE_GT_MIN
    holes = inside & (np.asarray(pred).max(axis=-1) < HOLE_RENDER_MAX)
    return int(np.count_nonzero(holes)), int(np.count_nonzero(inside))


def score_view(
    pred: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray,
    valid: np.ndarray,
    protocol: EvalProtocol,
    perceptual: PerceptualMetric | None,
    box: np.ndarray | None = None,
) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS of one view, with the crop's padding left out.

    Args:
        pred: (H, W, 3) float render in [0, 1].
        gt: (H, W, 3) float ground truth in [0, 1] (already on the protocol's background).
        mask: (H, W) bool hand mask.
        valid: (H, W) bool, False on padding (crop pixels outside the camera image).
        protocol: where PSNR and SSIM are measured.
        perceptual: the LPIPS network, or None to leave LPIPS out.
        box: (H, W) bool projected 3D box of the posed hand
            (:func:`projected_box_mask`); required by protocols with ``zero_outside_box``.

    Returns:
        ``{"psnr", "ssim", "lpips" (None without a network), "mask_psnr", "mask_ssim",
        "mask_lpips", "padding_px", "hole_px", "hole_region_px", "hole_fraction"}`` (see
        :func:`hole_pixels`; the fraction None without hand pixels), plus ``"box_px"`` (``zero_outside_box``),
        ``"lpips_scaled"`` (``lpips_scale``), ``"psnr_xhand_code"`` and ``"pred_mask_px"``
        (``xhand_code_psnr``).
    """
    keep = np.asarray(valid, dtype=bool)
    extras: dict[str, Any] = {}
    if protocol.zero_outside_box:
        if box is None:
            raise ParameterError(
                f"box: protocol {protocol.name} sets pixels outside the projected 3D box to "
                "0, pass the box (projected_box_mask)"
            )
        # HandNeRF's code zeroes both images outside the box and scores the whole frame.
        keep = keep & np.asarray(box, dtype=bool)
        extras["box_px"] = int(np.count_nonzero(box))
    pred_eval, gt_eval = blank_padding(pred, gt, keep)
    region = scored_pixels(protocol, mask, valid)
    lpips = None if perceptual is None else perceptual.score(pred_eval, gt_eval)
    if protocol.lpips_scale is not None:
        extras["lpips_scaled"] = None if lpips is None else lpips * protocol.lpips_scale
    if protocol.xhand_code_psnr:
        pred_mask = predicted_mask(pred) & np.asarray(valid, dtype=bool)
        extras["psnr_xhand_code"] = xhand_code_psnr(pred, gt, pred_mask)
        extras["pred_mask_px"] = int(np.count_nonzero(pred_mask))
    hand = np.asarray(mask, dtype=bool) & np.asarray(valid, dtype=bool)
    holes, hole_region = hole_pixels(pred, gt, hand)
    return {
        "psnr": psnr(pred_eval, gt_eval, region),
        "ssim": ssim(pred_eval, gt_eval, region),
        "lpips": lpips,
        **_inside_mask(pred, gt, hand, perceptual),
        **extras,
        "padding_px": int(np.count_nonzero(~np.asarray(valid, dtype=bool))),
        "hole_px": holes,
        "hole_region_px": hole_region,
        "hole_fraction": holes / hole_region if hole_region else None,
    }
