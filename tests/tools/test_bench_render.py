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
    assert set(report["sizes"]) == {"256x256", "128x128"}
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
