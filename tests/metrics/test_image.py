"""PSNR / SSIM against scikit-image and hand computations, with and without masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from handnerf.errors import ParameterError
from handnerf.metrics.image import psnr, ssim, ssim_map

SKIMAGE_SSIM = dict(
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
)


def _image_pair(seed: int = 0, height: int = 48, width: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A smooth structured ground truth and a noisy, slightly shifted-in-colour render."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
    gt = np.stack(
        [0.5 + 0.4 * np.sin(6 * xs + 2 * ys), 0.5 + 0.3 * np.cos(5 * ys), 0.3 + 0.5 * xs * ys],
        axis=-1,
    )
    pred = np.clip(gt + rng.normal(0.0, 0.05, gt.shape) + 0.02, 0.0, 1.0)
    return pred, gt


def _disk_mask(height: int = 48, width: int = 40) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return (ys - 26) ** 2 + (xs - 18) ** 2 < 12**2


def test_psnr_of_a_known_error_is_hand_computable() -> None:
    gt = np.zeros((8, 9, 3))
    pred = np.full((8, 9, 3), 0.1)  # MSE 0.01 -> exactly 20 dB
    assert psnr(pred, gt) == pytest.approx(20.0, abs=1e-9)
    pred[0, 0, 0] = 1.0  # one channel of one pixel fully wrong
    mse = (0.01 * (8 * 9 * 3 - 1) + 1.0) / (8 * 9 * 3)
    assert psnr(pred, gt) == pytest.approx(-10 * math.log10(mse), abs=1e-9)


def test_psnr_matches_skimage() -> None:
    pred, gt = _image_pair()
    assert psnr(pred, gt) == pytest.approx(
        peak_signal_noise_ratio(gt, pred, data_range=1.0), abs=1e-9
    )


def test_psnr_of_identical_images_is_infinite() -> None:
    _, gt = _image_pair()
    assert psnr(gt, gt) == math.inf


def test_masked_psnr_uses_only_the_masked_pixels() -> None:
    pred, gt = _image_pair()
    mask = _disk_mask()
    expected = peak_signal_noise_ratio(gt[mask], pred[mask], data_range=1.0)
    assert psnr(pred, gt, mask) == pytest.approx(expected, abs=1e-9)
    # Errors outside the mask do not count.
    corrupted = pred.copy()
    corrupted[~mask] = 1.0 - gt[~mask]
    assert psnr(corrupted, gt, mask) == pytest.approx(expected, abs=1e-9)
    assert psnr(corrupted, gt) < psnr(pred, gt) - 3.0


def test_ssim_matches_skimage_gaussian_window() -> None:
    pred, gt = _image_pair(seed=1)
    expected = structural_similarity(gt, pred, **SKIMAGE_SSIM)
    assert ssim(pred, gt) == pytest.approx(expected, abs=1e-7)
    assert 0.2 < expected < 0.99  # the pair is neither identical nor unrelated


def test_ssim_map_matches_skimage_full_map_inside_the_border() -> None:
    pred, gt = _image_pair(seed=2)
    _, full = structural_similarity(gt, pred, full=True, **SKIMAGE_SSIM)
    expected = full.mean(axis=2)[5:-5, 5:-5]
    assert np.allclose(ssim_map(pred, gt).numpy(), expected, atol=1e-7)


def test_masked_ssim_averages_the_map_over_the_masked_pixels() -> None:
    pred, gt = _image_pair(seed=3)
    mask = _disk_mask()
    _, full = structural_similarity(gt, pred, full=True, **SKIMAGE_SSIM)
    inner = np.zeros_like(mask)
    inner[5:-5, 5:-5] = True
    expected = full.mean(axis=2)[mask & inner].mean()
    assert ssim(pred, gt, mask) == pytest.approx(expected, abs=1e-7)
    assert ssim(pred, gt, mask) != pytest.approx(ssim(pred, gt), abs=1e-4)


def test_identical_images_have_ssim_one() -> None:
    _, gt = _image_pair()
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-7)


def test_torch_and_numpy_inputs_agree() -> None:
    pred, gt = _image_pair(seed=4)
    mask = _disk_mask()
    pred_t = torch.from_numpy(pred).float()
    gt_t = torch.from_numpy(gt).float()
    mask_t = torch.from_numpy(mask)
    pred32, gt32 = pred_t.double().numpy(), gt_t.double().numpy()
    assert psnr(pred_t, gt_t) == pytest.approx(psnr(pred32, gt32), abs=1e-9)
    assert ssim(pred_t, gt_t, mask_t) == pytest.approx(ssim(pred32, gt32, mask), abs=1e-9)
    assert psnr(pred_t, gt_t, mask_t.float()) == pytest.approx(psnr(pred32, gt32, mask), abs=1e-9)


@pytest.mark.parametrize(
    ("pred", "gt", "mask", "fragment"),
    [
        (np.zeros((8, 8, 3)), np.zeros((8, 9, 3)), None, "differ in shape"),
        (np.zeros((8, 8)), np.zeros((8, 8)), None, "(H, W, 3)"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3)), None, "uint8"),
        (np.full((8, 8, 3), 255.0), np.zeros((8, 8, 3)), None, "[0, 1]"),
        (np.full((8, 8, 3), np.nan), np.zeros((8, 8, 3)), None, "NaN"),
        (np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), np.zeros((8, 8), bool), "no pixel"),
        (np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), np.ones((4, 4), bool), "mask"),
        ([[0.0]], np.zeros((8, 8, 3)), None, "numpy array or torch tensor"),
    ],
)
def test_psnr_rejects_bad_input(pred, gt, mask, fragment: str) -> None:
    with pytest.raises(ParameterError, match=None) as caught:
        psnr(pred, gt, mask)
    assert fragment in str(caught.value)


def test_ssim_rejects_images_smaller_than_its_window() -> None:
    with pytest.raises(ParameterError, match="at least 11x11"):
        ssim(np.zeros((10, 30, 3)), np.zeros((10, 30, 3)))


def test_ssim_rejects_a_mask_only_on_the_border() -> None:
    pred, gt = _image_pair()
    mask = np.zeros(gt.shape[:2], bool)
    mask[:3] = True
    with pytest.raises(ParameterError, match="border"):
        ssim(pred, gt, mask)
