"""PSNR and SSIM of rendered images against ground truth, optionally inside a mask.

Images are float (H, W, 3) arrays or tensors with values in [0, 1] (numpy or torch, any
device). Masks are (H, W) booleans (or 0/1 numbers). Both metrics are computed in float64
so that a score does not depend on the device or on the order of reductions.

SSIM follows Wang et al. 2004 with the settings every avatar paper uses: an 11x11
Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1. The per-pixel SSIM
map comes from :func:`kornia.metrics.ssim` with ``padding="valid"``, i.e. only pixels
whose whole window lies inside the image (the border of 5 pixels is left out, exactly
as scikit-image's ``structural_similarity`` does).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from handnerf.errors import ParameterError

SSIM_WINDOW = 11
"""Side of the Gaussian SSIM window (sigma 1.5 is fixed inside kornia)."""

_SSIM_BORDER = SSIM_WINDOW // 2
# Images leave [0, 1] by a hair after resampling or float32 compositing; only values
# clearly outside mean the caller passed 0-255 images or garbage.
_RANGE_TOLERANCE = 1e-3

ImageLike = Any  # np.ndarray | torch.Tensor, (H, W, 3)


def _cpu_tensor(value: ImageLike, name: str) -> torch.Tensor:
    """``value`` (a numpy array or torch tensor) as a CPU tensor, without copying a CPU one."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ParameterError(
        f"{name}: expected a numpy array or torch tensor, got {type(value).__name__}"
    )


def to_image_tensor(value: ImageLike, name: str) -> torch.Tensor:
    """Validate one (H, W, 3) float image in [0, 1] and return it as a float64 CPU tensor.

    ``name`` is used in error messages (e.g. ``"pred"``).
    """
    tensor = _cpu_tensor(value, name)
    if tensor.ndim != 3 or tensor.shape[-1] != 3:
        raise ParameterError(f"{name}: expected shape (H, W, 3), got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ParameterError(
            f"{name}: expected a float image with values in [0, 1], got dtype {tensor.dtype} "
            "(divide uint8 images by 255)"
        )
    tensor = tensor.to(torch.float64)
    if not torch.isfinite(tensor).all():
        raise ParameterError(f"{name}: image contains NaN or inf values")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise ParameterError(f"{name}: values must lie in [0, 1], found [{low:.4g}, {high:.4g}]")
    return tensor.clamp(0.0, 1.0)


def _as_mask(value: ImageLike, shape: tuple[int, int]) -> torch.Tensor:
    """Validate a mask and return it as a bool CPU tensor (H, W)."""
    mask = _cpu_tensor(value, "mask")
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if tuple(mask.shape) != shape:
        raise ParameterError(
            f"mask: expected shape {shape} to match the images, got {tuple(mask.shape)}"
        )
    return mask > 0.5 if mask.is_floating_point() else mask.to(torch.bool)


def _pair(pred: ImageLike, gt: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
    pred_t, gt_t = to_image_tensor(pred, "pred"), to_image_tensor(gt, "gt")
    if pred_t.shape != gt_t.shape:
        raise ParameterError(
            f"pred and gt differ in shape: {tuple(pred_t.shape)} vs {tuple(gt_t.shape)}"
        )
    return pred_t, gt_t


def _to_batch(image: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) -> (1, 3, H, W)."""
    return image.permute(2, 0, 1).unsqueeze(0)


def psnr(pred: ImageLike, gt: ImageLike, mask: ImageLike | None = None) -> float:
    """Peak signal-to-noise ratio in dB for data range 1.

    Args:
        pred, gt: (H, W, 3) float images in [0, 1].
        mask: optional (H, W); the mean squared error is then taken over the masked
            pixels only (all three channels of each).

    Returns:
        ``10 log10(1 / MSE)``; ``inf`` when the images are identical (in the mask).
    """
    pred_t, gt_t = _pair(pred, gt)
    squared_error = (pred_t - gt_t) ** 2
    if mask is not None:
        mask_t = _as_mask(mask, tuple(pred_t.shape[:2]))
        if not mask_t.any():
            raise ParameterError("mask: selects no pixel, PSNR inside it is undefined")
        squared_error = squared_error[mask_t]
    mse = float(squared_error.mean())
    if mse == 0.0:
        return math.inf
    return -10.0 * math.log10(mse)


def ssim_map(pred: ImageLike, gt: ImageLike) -> torch.Tensor:
    """Per-pixel SSIM, averaged over the colour channels.

    Args:
        pred, gt: (H, W, 3) float images in [0, 1], H and W at least 11.

    Returns:
        (H - 10, W - 10) float64 tensor: the SSIM of the window centred on each pixel
        whose window lies wholly inside the image (pixel (i, j) of the map is image
        pixel (i + 5, j + 5)).
    """
    import kornia

    pred_t, gt_t = _pair(pred, gt)
    height, width = pred_t.shape[:2]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ParameterError(
            f"pred: SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, "
            f"got {height}x{width}"
        )
    per_channel = kornia.metrics.ssim(
        _to_batch(pred_t), _to_batch(gt_t), SSIM_WINDOW, max_val=1.0, padding="valid"
    )
    return per_channel[0].mean(dim=0)


def ssim(pred: ImageLike, gt: ImageLike, mask: ImageLike | None = None) -> float:
    """Structural similarity (Gaussian window 11, sigma 1.5, data range 1).

    Args:
        pred, gt: (H, W, 3) float images in [0, 1].
        mask: optional (H, W); the SSIM map is then averaged over the masked pixels
            (each pixel's window still sees its unmasked neighbours, as in the papers
            that report masked SSIM).

    Returns:
        Mean SSIM over the pixels at least 5 pixels from the border (and in the mask).
    """
    values = ssim_map(pred, gt)
    if mask is None:
        return float(values.mean())
    height, width = values.shape[0] + 2 * _SSIM_BORDER, values.shape[1] + 2 * _SSIM_BORDER
    mask_t = _as_mask(mask, (height, width))
    inner = mask_t[_SSIM_BORDER : height - _SSIM_BORDER, _SSIM_BORDER : width - _SSIM_BORDER]
    if not inner.any():
        raise ParameterError(
            "mask: selects no pixel at least 5 pixels from the border, SSIM inside it is undefined"
        )
    return float(values[inner].mean())
