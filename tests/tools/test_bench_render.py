"""tools/bench_render.py (and bench.py --render-run): reference vs fast path on a fitted run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"handnerf_tools_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_render_bench_reports_both_paths_and_the_preview(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load("bench")
    out = tmp_path / "render.json"
    argv = ["--render-run", str(tiny_run), "--views", "1", "--repeats", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["run"] == str(tiny_run) and report["views"] == 1
    assert report["command"].startswith("python tools/bench_render.py --run ")
    crops = {"256x256", "128x128"}
    frame = [name for name in report["sizes"] if name not in crops]
    assert set(report["sizes"]) >= crops and len(frame) == 1
    # The view's whole camera frame, named height x width (the tiny rig's cameras).
    assert frame[0].startswith("frame ") and frame[0] != "frame 256x256"
    assert report["device"] == "cpu" and report["backends"]["sampler"] == "torch"
    for r in report["sizes"].values():
        assert r["renders_each"] == 1
        assert r["speedup"] == pytest.approx(r["reference_median_s"] / r["fast_median_s"])
        # The fast path's image is the reference's within its bound: the same PSNR.
        assert r["max_abs_pixel_difference"] < 1e-3
        assert abs(r["psnr_difference_db"]) < 0.01
        assert r["psnr_fast_db"] == pytest.approx(r["psnr_reference_db"] + r["psnr_difference_db"])
    preview = report["preview"]
    assert preview["size"] == "128x128" and preview["fps"] == pytest.approx(1 / preview["median_s"])
    assert preview["half_samples"] == 12  # configs/tiny.yaml: 24 samples per ray
    assert preview["half_samples_psnr_vs_full_db"] > 20
    table = out.with_suffix(".md").read_text()
    assert "| 256x256 |" in table and "| 128x128 |" in table and "FPS" in table
    assert table in capsys.readouterr().out


def test_render_bench_refuses_a_folder_that_is_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench_render = load("bench_render")
    assert bench_render.main(["--run", str(tmp_path)]) == 2
    assert f"--run {tmp_path}: not a handnerf run folder (no run.json)" in capsys.readouterr().err
    assert bench_render.main(["--run", str(tmp_path), "--views", "0"]) == 2
    assert "--repeats and --views must be >= 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_render_bench_with_nerfacc_marching_has_no_moving_quality(
    tiny_run: Path, tmp_path: Path, nerfacc_standin: object
) -> None:
    """``--sampler nerfacc`` (its kernels stood in for on the CPU): nerfacc's marching is
    both paths (there is no separate fast path), and it has no sample count to halve."""
    bench_render = load("bench_render")
    out = tmp_path / "render.json"
    argv = ["--run", str(tiny_run), "--views", "1", "--repeats", "1", "--sampler", "nerfacc"]
    assert bench_render.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["backends"]["sampler"] == "nerfacc"
    for r in report["sizes"].values():
        assert r["max_abs_pixel_difference"] == 0.0
    assert report["preview"]["half_samples"] is None
    assert "half_samples_fps" not in report["preview"]
    assert "no moving quality" in out.with_suffix(".md").read_text()


def test_render_bench_refuses_cuda_without_a_gpu(
    tiny_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load("bench_render").main(["--run", str(tiny_run), "--device", "cuda"]) == 2
    assert "--device cuda: torch sees no CUDA device here" in capsys.readouterr().err
