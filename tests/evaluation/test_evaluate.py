"""``handnerf eval`` end to end on a tiny fit: sets, report files, metrics on the right pixels."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from handnerf.cli import main
from handnerf.evaluation.metrics import psnr, ssim


def test_eval_writes_report_with_both_sets(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    status = main(
        ["eval", "--run", str(tiny_run), "--out", str(out), "--max-views", "2", "--no-progress"]
    )
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["sets"]) == {"novel_view", "novel_pose"}
    assert report["n_images"] == 4
    assert report["protocol"]["name"] == "handnerf-default"
    assert "lpips" in report["lpips_net"]
    for key in (
        "psnr",
        "ssim",
        "lpips",
        "lpips_net",
        "region",
        "images",
        "config",
        "backends",
        "machine",
    ):
        assert key in report
    assert (out / "report.html").is_file() and (out / "report.md").is_file()

    # The saved PNGs reproduce the reported metrics (inside the mask for this protocol).
    row = report["images"][0]
    stem = f"{row['split']}_cam{row['camera']}_frame{int(row['frame']):06d}"
    render = iio.imread(out / "images" / f"{stem}_render.png").astype(np.float64) / 255
    gt = iio.imread(out / "images" / f"{stem}_gt.png").astype(np.float64) / 255
    mask = iio.imread(out / "images" / f"{stem}_mask.png") > 127
    if mask.ndim == 3:
        mask = mask[..., 0]
    assert abs(psnr(render, gt, mask) - row["psnr"]) < 0.3  # PNG quantisation only
    assert abs(ssim(render, gt, mask) - row["ssim"]) < 0.02


def test_eval_unknown_protocol_lists_presets(tiny_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["eval", "--run", str(tiny_run), "--out", str(tmp_path), "--protocol", "nope"]) == 2
    err = capsys.readouterr().err
    assert "handavatar" in err and "xhand" in err
