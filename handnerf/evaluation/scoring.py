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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from handnerf.errors import ParameterError
from handnerf.evaluation.metrics import psnr, ssim
from handnerf.evaluation.perceptual import PerceptualMetric
from handnerf.evaluation.protocols import EvalProtocol


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


def score_view(
    pred: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray,
    valid: np.ndarray,
    protocol: EvalProtocol,
    perceptual: PerceptualMetric | None,
) -> dict[str, Any]:
    """PSNR, SSIM and LPIPS of one view, with the crop's padding left out.

    Args:
        pred: (H, W, 3) float render in [0, 1].
        gt: (H, W, 3) float ground truth in [0, 1] (already on the protocol's background).
        mask: (H, W) bool hand mask.
        valid: (H, W) bool, False on padding (crop pixels outside the camera image).
        protocol: where PSNR and SSIM are measured.
        perceptual: the LPIPS network, or None to leave LPIPS out.

    Returns:
        ``{"psnr", "ssim", "lpips" (None without a network), "padding_px"}``.
    """
    pred_eval, gt_eval = blank_padding(pred, gt, valid)
    region = scored_pixels(protocol, mask, valid)
    return {
        "psnr": psnr(pred_eval, gt_eval, region),
        "ssim": ssim(pred_eval, gt_eval, region),
        "lpips": None if perceptual is None else perceptual.score(pred_eval, gt_eval),
        "padding_px": int(np.count_nonzero(~np.asarray(valid, dtype=bool))),
    }
