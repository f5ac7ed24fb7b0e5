"""Padding of a crop that reaches past the image border changes no metric."""

from __future__ import annotations

import numpy as np
import pytest

from handnerf.data.camera import PinholeCamera
from handnerf.data.crops import Crop, crop_hand
from handnerf.evaluation.protocols import PROTOCOLS, get_protocol
from handnerf.evaluation.scoring import blank_padding, drop_reason, hole_pixels, score_view
from handnerf.metrics.image import psnr
from handnerf.metrics.perceptual import PerceptualMetric

CROP_PROTOCOLS = ("handnerf-default", "handavatar")


def _camera() -> PinholeCamera:
    rotation = [[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    return PinholeCamera.from_interhand(
        [-1000.0, 0.0, 0.0], rotation, [1200.0, 1200.0], [167.0, 256.0], 334, 512, "400002", "test"
    )


def _border_crop() -> Crop:
    """A 128x128 crop of a textured frame around a hand touching the top-left corner."""
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, (512, 334, 3), dtype=np.uint8)
    mask = np.zeros((512, 334), bool)
    mask[0:90, 0:70] = True  # side ceil(90 * 1.3) = 117, centred on (35, 45): box (-24, -14)
    return crop_hand(image, _camera(), mask=mask, out_size=128)


@pytest.fixture(scope="module")
def crop() -> Crop:
    return _border_crop()


@pytest.fixture(scope="module")
def networks() -> dict[str, PerceptualMetric]:
    return {name: PerceptualMetric(name) for name in ("alex", "vgg")}


def _images(crop: Crop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth on black, a render that differs from it a little, and the hand mask."""
    assert crop.mask is not None
    mask = crop.mask & crop.valid_pixels
    gt = crop.image.astype(np.float64) / 255.0 * mask[..., None]
    noise = np.random.default_rng(1).normal(0.0, 0.05, gt.shape)
    pred = np.clip(gt + noise, 0.0, 1.0)
    return pred, gt, mask


def test_crop_marks_its_padding(crop: Crop) -> None:
    assert crop.box == (-24, -14, 117, 117)
    valid = crop.valid_pixels
    # Padding lies along the top and left edges only: 24 and 14 source px -> ~26 and ~15 px.
    assert not valid[:, :26].any() and not valid[:15, :].any()
    assert valid[20:, 30:].all()
    # about 128 x 27 columns + 101 x 16 rows (bilinear neighbours of the edge included)
    assert crop.padding_pixels == int((~valid).sum())
    assert 128 * 26 + 102 * 15 < crop.padding_pixels < 128 * 28 + 100 * 17
    # A crop inside the image has no padding.
    inside = crop_hand(
        np.zeros((512, 334, 3), np.uint8),
        _camera(),
        mask=np.pad(np.ones((90, 70), bool), ((200, 222), (100, 164))),
    )
    assert inside.valid is None and inside.padding_pixels == 0 and inside.valid_pixels.all()


@pytest.mark.parametrize("name", CROP_PROTOCOLS)
def test_padding_changes_no_metric_and_valid_pixels_do(
    crop: Crop, networks: dict[str, PerceptualMetric], name: str
) -> None:
    protocol = get_protocol(name)
    perceptual = networks[protocol.lpips_net]
    pred, gt, mask = _images(crop)
    valid = crop.valid_pixels
    base = score_view(pred, gt, mask, valid, protocol, perceptual)
    assert base["padding_px"] == crop.padding_pixels

    # The render paints something bright in the padding (the scene the camera never saw).
    painted = pred.copy()
    painted[~valid] = np.random.default_rng(2).uniform(0.5, 1.0, (int((~valid).sum()), 3))
    again = score_view(painted, gt, mask, valid, protocol, perceptual)
    for metric in ("psnr", "ssim", "lpips"):
        assert again[metric] == base[metric], metric
    # Scored naively against the black padding, the same change would cost PSNR.
    assert psnr(painted, gt) < psnr(pred, gt) - 3.0

    # A change inside the valid region (on the hand) moves every metric.
    worse = pred.copy()
    rows, cols = np.nonzero(mask)
    centre = rows.mean().round().astype(int), cols.mean().round().astype(int)
    worse[centre[0] - 12 : centre[0] + 12, centre[1] - 12 : centre[1] + 12] = 1.0
    assert mask[centre] and valid[centre]
    changed = score_view(worse, gt, mask, valid, protocol, perceptual)
    assert changed["psnr"] < base["psnr"] - 0.1
    assert changed["ssim"] < base["ssim"] - 1e-3
    assert changed["lpips"] > base["lpips"] + 1e-4


def test_padding_blanked_in_both_images(crop: Crop) -> None:
    pred, gt, _ = _images(crop)
    pred_b, gt_b = blank_padding(np.ones_like(pred), np.ones_like(gt), crop.valid_pixels)
    assert (pred_b[~crop.valid_pixels] == 0).all() and (gt_b[~crop.valid_pixels] == 0).all()
    assert (pred_b[crop.valid_pixels] == 1).all() and (gt_b[crop.valid_pixels] == 1).all()


def test_each_protocol_says_whether_it_drops_or_masks() -> None:
    near_border = np.zeros((512, 334), bool)
    near_border[5:120, 100:200] = True
    centred = np.zeros((512, 334), bool)
    centred[200:320, 100:200] = True
    handavatar = get_protocol("handavatar")
    assert handavatar.border_filter_px == 10
    assert "within 10 px" in (drop_reason(handavatar, near_border) or "")
    assert drop_reason(handavatar, centred) is None
    assert "dropped" in handavatar.padding_text and "excluded" in handavatar.padding_text
    assert "10 px of the image border" in handavatar.description
    for name, protocol in PROTOCOLS.items():
        if name == "handavatar":
            continue
        assert drop_reason(protocol, near_border) is None, name
        expected = "no padding" if protocol.image_mode == "full" else "excluded from every"
        assert expected in protocol.padding_text, name
        assert expected in protocol.description, name
        assert protocol.to_dict()["padding_text"] == protocol.padding_text


def test_holes_are_near_black_render_pixels_inside_the_eroded_hand() -> None:
    gt = np.full((40, 40, 3), 0.6, np.float32)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True  # eroded by 2 px: rows/cols 12..27, 16 x 16 = 256 px
    pred = gt.copy()
    pred[18:21, 18:21] = 0.02  # a 3x3 hole in the middle of the hand
    pred[10, 10:30] = 0.0  # black silhouette edge: inside the erosion band, not a hole
    pred[20, 5] = 0.0  # outside the hand
    gt[25, 25] = 0.05  # a dark ground-truth pixel (a shadow) the render may keep dark
    pred[25, 25] = 0.0
    holes, region = hole_pixels(pred, gt, mask)
    assert (holes, region) == (9, 255)
    pred[18:21, 18:21] = 20.0 / 255.0  # at the threshold: dim, not a hole
    assert hole_pixels(pred, gt, mask) == (0, 255)
    scores = score_view(pred, gt, mask, np.ones((40, 40), bool), get_protocol("handavatar"), None)
    assert scores["hole_px"] == 0 and scores["hole_region_px"] == 255
    assert scores["hole_fraction"] == 0.0
