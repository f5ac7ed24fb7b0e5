"""``handnerf eval`` end to end on a tiny fit: sets, report files, metrics on the right pixels."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from handnerf.cli import main
from handnerf.metrics.image import psnr, ssim


@pytest.fixture(scope="module")
def report_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "report"
    status = main(
        ["eval", "--run", str(tiny_run), "--out", str(out), "--max-views", "2", "--no-progress"]
    )
    assert status == 0
    return out


def test_eval_writes_report_with_both_sets(report_dir: Path) -> None:
    out = report_dir
    report = json.loads((out / "report.json").read_text())
    assert set(report["sets"]) == {"novel_view", "novel_pose"}
    assert report["n_images"] == 4
    assert report["protocol"]["name"] == "handnerf-default"
    assert report["lpips_net"] == "lpips-alex"  # standard LPIPS, the protocol's network
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
    # A run fitted straight from a root is evaluated on the root, with MANO masks.
    assert report["run"]["views_from"] == f"InterHand2.6M root {report['run']['data_root']}"
    assert report["run"]["masks_from"] == "MANO silhouettes rendered at evaluation"
    assert "prepared_cache" not in report["run"]
    # The report says how padding is handled; the default protocol drops no view.
    assert "excluded from every metric" in report["protocol"]["padding_text"]
    assert report["run"]["dropped_views"] == []
    assert f"- padding: {report['protocol']['padding_text']}" in (out / "report.md").read_text()
    assert all(row["padding_px"] >= 0 for row in report["images"])

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


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    # Not a skip: the report's browser rendering is part of what must be shown. `make
    # install` installs Debian's chromium when it is missing.
    assert path, "chromium is not installed (make install installs Debian's chromium package)"
    return path


def test_report_html_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    """A screenshot of report.html is a real picture, and the rendered page shows the numbers."""
    report = json.loads((report_dir / "report.json").read_text())
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = (report_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    subprocess.run(
        [_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,1600", url],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = iio.imread(shot)
    assert image.shape[0] >= 1000 and image.shape[1] >= 1000
    assert image[..., :3].std() > 10, "the screenshot is blank"
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for split, agg in report["sets"].items():
        assert split.replace("_", " ") in dom.replace("_", " ")
        assert f"{agg['psnr']:.2f}" in dom
    assert report["lpips_net"] in dom


def test_eval_handnerf_protocol_scores_inside_the_projected_box(
    tiny_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "handnerf_report"
    status = main(
        [
            "eval",
            "--run",
            str(tiny_run),
            "--out",
            str(out),
            "--protocol",
            "handnerf",
            "--split",
            "novel_view",
            "--max-views",
            "1",
            "--no-progress",
        ]
    )
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    row = report["images"][0]
    render = iio.imread(out / row["render_png"])
    # The box covers the hand but not the whole half-size frame, and the saved render is
    # black outside it (what was scored).
    assert 0 < row["box_px"] < render.shape[0] * render.shape[1]
    assert int((render.max(axis=-1) > 0).sum()) <= row["box_px"]
    assert row["mask_psnr"] is not None and row["mask_lpips"] is not None
    assert report["overall"]["mask_psnr"] is not None
    markdown = (out / "report.md").read_text()
    assert "outside the projected 3D box" in markdown and "inside mask" in markdown
