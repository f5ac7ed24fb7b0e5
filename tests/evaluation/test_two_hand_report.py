"""Reports of two-hand runs: both hands scored together and each hand inside its own
visible mask (report.json, report.md, report.html, per-hand mask PNGs), under every
protocol preset, for runs fitted from a capture or from a ``prepare --hand both`` cache;
a one-hand report carries none of it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import pytest

from handnerf.data.crops import CropConfig
from handnerf.data.prepare import PrepareSpec, prepare_cache
from handnerf.evaluation.evaluate import evaluate_run
from handnerf.evaluation.protocols import PROTOCOLS, get_protocol
from handnerf.metrics.image import psnr
from handnerf.runs.loader import load_run
from handnerf.synth.two_hands import NOVEL_SEQ, TRAIN_SEQS
from handnerf.train.fit_job import run_fit

SIDES = ("right", "left")
TWO_HANDS = [
    "data.hand=both",
    f"data.train_seq={TRAIN_SEQS['interlock']}",
    f"data.novel_pose_seq={NOVEL_SEQ}",
    "train.steps=4",
]
#: Full-frame protocols render every pixel of a camera: one novel-pose view each.
FULL_FRAME = {name for name, protocol in PROTOCOLS.items() if protocol.image_mode == "full"}


@pytest.fixture(scope="module")
def two_hand_run(
    tiny_two_hand_capture: Path, small_fit: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    run = tmp_path_factory.mktemp("runs") / "two_hands"
    run_fit(tiny_two_hand_capture, run, overrides=[*small_fit, *TWO_HANDS], progress=False)
    return run


def _png(path: Path) -> np.ndarray:
    return np.asarray(iio.imread(path))


def check_hands(report: dict[str, Any], out: Path) -> None:
    """Every row scores each hand inside its own mask, and the saved PNGs reproduce it."""
    for name in ("overall", *report["sets"]):
        aggregate = report["overall"] if name == "overall" else report["sets"][name]
        for side in SIDES:
            assert 0.0 < aggregate[f"{side}_psnr"] < 60.0
            assert 0.0 < aggregate[f"{side}_ssim"] <= 1.0
    for row in report["images"]:
        mask = _png(out / row["mask_png"]) > 127
        masks = {side: _png(out / row[f"{side}_mask_png"]) > 127 for side in SIDES}
        # disjoint, inside the scored hand mask, together (nearly) all of it
        assert not (masks["right"] & masks["left"]).any()
        union = masks["right"] | masks["left"]
        assert not (union & ~mask).any()
        assert union.sum() >= 0.95 * mask.sum()
        render = _png(out / row["render_png"]).astype(np.float64) / 255.0
        gt = _png(out / row["gt_png"]).astype(np.float64) / 255.0
        for side in SIDES:
            assert row[f"{side}_px"] == masks[side].sum() > 0
            inside = masks[side][..., None]
            recomputed = psnr(render * inside, gt * inside, masks[side])
            assert abs(recomputed - row[f"{side}_psnr"]) < 0.05
    markdown = (out / "report.md").read_text()
    assert "## Each hand" in markdown and "PSNR (dB), left hand's visible mask" in markdown
    assert f"([mask]({report['images'][0]['right_mask_png']}))" in markdown
    page = (out / "report.html").read_text()
    assert "<h2>Each hand</h2>" in page and "inside the right hand's mask" in page
    assert page.count(' hands"><figcaption>') == min(3, len(report["images"]))


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_scores_each_hand_in_its_own_mask(
    two_hand_run: Path, tmp_path: Path, name: str
) -> None:
    run = load_run(two_hand_run)
    splits = ("novel_pose",) if name in FULL_FRAME else ("novel_view", "novel_pose")
    report = evaluate_run(
        run, get_protocol(name), tmp_path, splits=splits, max_views=1, progress=False
    )
    assert report["n_images"] + len(report["run"]["dropped_views"]) == len(splits)
    if report["n_images"]:
        check_hands(report, tmp_path)


def test_a_run_fitted_from_a_two_hand_cache_reports_each_hand(
    tiny_two_hand_capture: Path, small_fit: list[str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    spec = PrepareSpec(
        seqs=(TRAIN_SEQS["interlock"], NOVEL_SEQ),
        hand="both",
        crop=CropConfig(mode="crop", scale=1.3, out_size=48),
        filters=None,
    )
    prepare_cache(tiny_two_hand_capture, cache, spec, workers=1, progress=False)
    run_dir = tmp_path / "run"
    run_fit(cache, run_dir, overrides=[*small_fit, *TWO_HANDS], progress=False)
    run = load_run(run_dir)
    assert run.fit_hands.both
    # the cache's own geometry: its stored crops and union masks are scored
    protocol = dataclasses.replace(get_protocol("handnerf-default"), crop_size=48)
    report = evaluate_run(run, protocol, tmp_path / "report", max_views=1, progress=False)
    assert report["run"]["views_from"] == f"prepared cache {cache}"
    assert "stored images" in report["run"]["images_from"]
    check_hands(report, tmp_path / "report")


def test_a_one_hand_report_has_no_per_hand_part(tiny_run: Path, tmp_path: Path) -> None:
    report = evaluate_run(
        load_run(tiny_run), get_protocol("handavatar"), tmp_path, max_views=1, progress=False
    )
    fields = {field for row in report["images"] for field in row}
    assert not fields & {f"{side}_{what}" for side in SIDES for what in ("psnr", "ssim", "px")}
    assert not list((tmp_path / "images").glob("*_right_mask.png"))
    assert "Each hand" not in (tmp_path / "report.md").read_text()
    assert "Each hand" not in (tmp_path / "report.html").read_text()
