"""Each published protocol's region and formula, on hand-made images with known answers."""

from __future__ import annotations

import html as html_lib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from handnerf.data.camera import PinholeCamera
from handnerf.errors import ParameterError
from handnerf.evaluation.protocols import PROTOCOLS, get_protocol
from handnerf.evaluation.report import image_key, write_report
from handnerf.evaluation.scoring import (
    drop_reason,
    predicted_mask,
    projected_box_mask,
    score_view,
    xhand_code_psnr,
)
from handnerf.metrics.image import psnr

SIZE = 100


class MeanAbsNet:
    """Stand-in for the LPIPS network: the mean absolute difference (known, cheap)."""

    net_name = "mean-abs (test stand-in)"

    def score(self, pred: np.ndarray, gt: np.ndarray) -> float:
        return float(np.mean(np.abs(np.asarray(pred) - np.asarray(gt))))


def _camera() -> PinholeCamera:
    """Looks down +z from the origin: a world point (x, y, z) lands on u = 50 + 100 x / z."""
    K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 50.0], [0.0, 0.0, 1.0]])
    return PinholeCamera(K=K, R=np.eye(3), t=np.zeros(3), width=SIZE, height=SIZE)


def _box_vertices() -> np.ndarray:
    """Corners of x, y in [-0.1, 0.1], z in [1, 1.2]: the near face projects to [40, 60]^2."""
    return np.array([[x, y, z] for x in (-0.1, 0.1) for y in (-0.1, 0.1) for z in (1.0, 1.2)])


def _hand() -> tuple[np.ndarray, np.ndarray]:
    """Ground truth: a 16x16 "hand" inside the box, black elsewhere; and its mask."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[42:58, 42:58] = True
    gt = np.zeros((SIZE, SIZE, 3))
    gt[mask] = (0.8, 0.5, 0.3)
    return gt, mask


VALID = np.ones((SIZE, SIZE), bool)


# ---------------------------------------------------------------- handnerf


def test_projected_box_is_the_box_projection() -> None:
    box = projected_box_mask(_camera(), _box_vertices(), padding=0.0)
    expected = np.zeros((SIZE, SIZE), bool)
    expected[40:60, 40:60] = True  # pixel centres 40.5 .. 59.5 lie in [40, 60]
    assert (box == expected).all()
    # Padding grows the box in 3D: 0.05 m more at z = 0.95 reaches u = 50 - 100*0.15/0.95.
    padded = projected_box_mask(_camera(), _box_vertices(), padding=0.05)
    low = math.ceil(50 - 100 * 0.15 / 0.95 - 0.5)
    assert padded[50, low] and not padded[50, low - 1]
    # A box behind the camera projects nowhere.
    assert not projected_box_mask(_camera(), _box_vertices() * [1, 1, -1], 0.0).any()


def test_handnerf_zeroes_both_images_outside_the_box() -> None:
    protocol = get_protocol("handnerf")
    assert protocol.zero_outside_box and protocol.metric_region == "image"
    box = projected_box_mask(_camera(), _box_vertices(), padding=0.0)
    gt, mask = _hand()
    # A render that differs from the ground truth only outside the box scores perfectly ...
    pred = gt.copy()
    pred[~box] = 0.7
    scores = score_view(pred, gt, mask, VALID, protocol, MeanAbsNet(), box)
    assert scores["psnr"] == math.inf and scores["lpips"] == 0.0
    assert scores["box_px"] == 400
    # ... while the full-frame protocol without the box sees the difference.
    plain = score_view(pred, gt, mask, VALID, get_protocol("livehand"), MeanAbsNet())
    assert plain["psnr"] < 10.0
    # Inside the box the error counts, averaged over the WHOLE frame (HandNeRF's code):
    # 400 box pixels off by 0.1 in every channel -> MSE = 0.01 * 400 / 10000.
    pred = gt.copy()
    pred[box] = np.clip(gt[box] + 0.1, 0.0, 1.0)
    scores = score_view(pred, gt, mask, VALID, protocol, None, box)
    assert scores["psnr"] == pytest.approx(-10 * math.log10(0.01 * 400 / SIZE**2))
    with pytest.raises(ParameterError, match="projected 3D box"):
        score_view(pred, gt, mask, VALID, protocol, None)


# ---------------------------------------------------------------- livehand


def test_livehand_reports_lpips_times_1000() -> None:
    protocol = get_protocol("livehand")
    gt, mask = _hand()
    pred = np.clip(gt + 0.02, 0.0, 1.0)
    scores = score_view(pred, gt, mask, VALID, protocol, MeanAbsNet())
    assert scores["lpips"] == pytest.approx(0.02)
    assert scores["lpips_scaled"] == pytest.approx(20.0)
    # Only LiveHand reports the x1000 value.
    other = score_view(pred, gt, mask, VALID, get_protocol("handnerf-default"), MeanAbsNet())
    assert "lpips_scaled" not in other


# ---------------------------------------------------------------- xhand


def test_xhand_code_psnr_is_28_over_20_on_the_predicted_mask() -> None:
    gt, mask = _hand()  # 16x16 hand at 0.8/0.5/0.3
    pred = np.zeros_like(gt)
    pred[42:58, 42:50] = gt[42:58, 42:50] - 0.1  # the render only draws the left half
    pred_mask = predicted_mask(pred)
    assert pred_mask.sum() == 16 * 8
    # Over the predicted mask every value is off by 0.1: MSE 0.01, 20 dB; XHand's code: 28.
    assert xhand_code_psnr(pred, gt, pred_mask) == pytest.approx(28.0)
    zeroed = (pred * pred_mask[..., None], gt * pred_mask[..., None])
    assert xhand_code_psnr(pred, gt, pred_mask) == pytest.approx(28 / 20 * psnr(*zeroed, pred_mask))
    scores = score_view(pred, gt, mask, VALID, get_protocol("xhand"), None)
    assert scores["psnr_xhand_code"] == pytest.approx(28.0)
    assert scores["pred_mask_px"] == 128
    # The correct PSNR inside the GT mask counts the missed half (error 0.8/0.5/0.3 there).
    missed = (0.01 + (0.64 + 0.25 + 0.09) / 3) / 2
    assert scores["psnr"] == pytest.approx(-10 * math.log10(missed))
    assert scores["psnr"] < 8.0 < 28.0
    # A black render has no predicted mask: no code value.
    assert xhand_code_psnr(np.zeros_like(gt), gt, predicted_mask(np.zeros_like(gt))) is None


# ---------------------------------------------------------------- handavatar


def _view_image(value: int = 120, colour: bool = True) -> np.ndarray:
    image = np.full((512, 334, 3), value, np.uint8)
    if colour:
        image[..., 0] = value // 2  # a channel spread of value / 2: a colour image
    return image


def test_handavatar_applies_its_frame_filters() -> None:
    protocol = get_protocol("handavatar")
    hand = np.zeros((512, 334), bool)
    hand[200:300, 100:200] = True  # 100x100 px, away from the border
    assert drop_reason(protocol, hand, _view_image()) is None
    small = np.zeros_like(hand)
    small[200:250, 100:150] = True  # 2500 px < 3000
    assert "mask under 3000" in (drop_reason(protocol, small, _view_image()) or "")
    thin = np.zeros_like(hand)
    thin[100:400, 150:210] = True  # 18000 px but 60 px wide < 80
    assert "under 80 px" in (drop_reason(protocol, thin, _view_image()) or "")
    border = np.zeros_like(hand)
    border[3:120, 100:200] = True
    assert "within 10 px" in (drop_reason(protocol, border, _view_image()) or "")
    assert "too dark" in (drop_reason(protocol, hand, _view_image(value=10)) or "")
    assert "grayscale" in (drop_reason(protocol, hand, _view_image(colour=False)) or "")
    # No other protocol drops any of them.
    for name, other in PROTOCOLS.items():
        if name != "handavatar":
            assert drop_reason(other, small, _view_image(value=10, colour=False)) is None, name


# ---------------------------------------------------------------- inside-mask numbers


def test_every_protocol_gives_inside_mask_numbers() -> None:
    gt, mask = _hand()
    rng = np.random.default_rng(0)
    pred = np.clip(gt + rng.normal(0.0, 0.05, gt.shape), 0.0, 1.0)
    box = projected_box_mask(_camera(), _box_vertices(), padding=0.0)
    expected_psnr = psnr(pred, gt, mask)
    for name, protocol in PROTOCOLS.items():
        scores = score_view(pred, gt, mask, VALID, protocol, MeanAbsNet(), box)
        assert scores["mask_psnr"] == pytest.approx(expected_psnr), name
        # LPIPS inside the mask sees both images set to 0 outside it.
        assert scores["mask_lpips"] == pytest.approx(np.abs(pred - gt)[mask].sum() / pred.size), (
            name
        )
        assert 0.0 < scores["mask_ssim"] < 1.0, name
    # Whole-image PSNR (noise everywhere) differs from the inside-mask number.
    whole = score_view(pred, gt, mask, VALID, get_protocol("livehand"), None)
    assert abs(whole["psnr"] - whole["mask_psnr"]) > 0.1


# ---------------------------------------------------------------- report


def _report(tmp_path: Path, name: str) -> tuple[dict, str, str]:
    gt, mask = _hand()
    box = projected_box_mask(_camera(), _box_vertices(), padding=0.0)
    rows, images = [], {}
    for index, split in enumerate(("novel_view", "novel_pose")):
        pred = np.clip(gt + 0.02 * (index + 1), 0.0, 1.0)
        scores = score_view(pred, gt, mask, VALID, get_protocol(name), MeanAbsNet(), box)
        rows.append({"split": split, "camera": f"40000{index}", "frame": index, **scores})
        images[image_key(split, f"40000{index}", index)] = {"render": pred, "gt": gt}
    report = write_report(
        tmp_path / name,
        protocol=name,
        rows=rows,
        images=images,
        run_info={"config": {}, "backends": {}, "timings": {}},
        lpips_net=MeanAbsNet.net_name,
    )
    markdown = (tmp_path / name / "report.md").read_text()
    raw_html = (tmp_path / name / "report.html").read_text()
    assert f"<b>{name}</b>" in raw_html and "\x00" not in raw_html  # bold, no stray marker
    html = html_lib.unescape(raw_html)  # the text a reader sees
    assert json.loads((tmp_path / name / "report.json").read_text())["formula"] == report["formula"]
    return report, markdown, html


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_report_states_region_formula_network_and_input_range(tmp_path: Path, name: str) -> None:
    report, markdown, html = _report(tmp_path, name)
    protocol = get_protocol(name)
    assert report["region"] == protocol.region_text
    assert "20*log10(1/sqrt(MSE))" in report["formula"]
    assert report["lpips_input"].startswith("[0, 1] with normalize=True")
    assert "ground-truth hand mask" in report["inside_mask_region"]
    for page in (markdown, html):
        assert "metric region (protocol numbers)" in page
        assert "formula:" in page and "20*log10(1/sqrt(MSE))" in page
        assert "LPIPS network:" in page and MeanAbsNet.net_name in page
        assert "LPIPS input range: [0, 1] with normalize=True" in page
        assert "PSNR (dB), protocol" in page and "PSNR (dB), inside mask" in page
    # Both the protocol's and the inside-mask numbers, per set and overall.
    for aggregate in (*report["sets"].values(), report["overall"]):
        for field in ("psnr", "ssim", "lpips", "mask_ssim", "mask_lpips"):
            assert aggregate[field] is not None, (name, field)
    mask_psnr = report["sets"]["novel_view"]["mask_psnr"]
    assert mask_psnr == pytest.approx(-10 * math.log10(0.02**2))
    assert f"{mask_psnr:.2f}" in markdown and f"{mask_psnr:.2f}" in html
    assert report["cameras"] == {"novel_view": ["400000"], "novel_pose": ["400001"]}


def test_report_labels_the_protocol_extras(tmp_path: Path) -> None:
    livehand, markdown, html = _report(tmp_path, "livehand")
    assert livehand["overall"]["lpips_scaled"] == pytest.approx(1000 * livehand["lpips"])
    for page in (markdown, html):
        assert "LPIPS x1000 (LiveHand's scale)" in page
        assert "XHand-code-compatible" not in page
        assert "without normalize=True" in page  # what LiveHand's code feeds LPIPS
    xhand, markdown, html = _report(tmp_path, "xhand")
    assert xhand["overall"]["psnr_xhand_code"] == pytest.approx(28 / 20 * xhand["psnr"], rel=0.05)
    for page in (markdown, html):
        assert "PSNR XHand-code-compatible (28*log10, predicted mask)" in page
        assert "28*log10(1/sqrt(MSE))" in page
        assert "x1000" not in page
    _, markdown, _ = _report(tmp_path, "handnerf")
    assert "outside the projected 3D box" in markdown
    assert "not public" in markdown  # which cameras HandNeRF's unpublished split leaves open
