"""tools/bench.py: the --quick CPU run on the tiny capture, its JSON and Markdown, bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("handnerf_tools_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules[cls.__module__].
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_bench_reports_every_part(
    tiny_capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    out = tmp_path / "report" / "bench.json"
    argv = ["--device", "cpu", "--data", str(tiny_capture), "--quick", "--out", str(out)]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())

    assert report["command"].endswith(" ".join(argv))
    assert report["device"] == "cpu" and report["quick"] is True
    assert report["machine"]["torch"] == torch.__version__
    assert len(report["machine"]["load_average_start"]) == 3
    assert report["date"][:4].isdigit()
    assert report["data"] == str(tiny_capture)
    assert 0 < report["data_seconds"] < report["wall_seconds"]

    # On CPU the only backends are the torch grid and the torch sampler.
    assert [(r["grid"], r["sampler"]) for r in report["results"]] == [("torch", "torch")]
    r = report["results"][0]
    assert r["backends"]["encoding"] == "torch" and r["backends"]["sampler"] == "torch"

    enc = r["encoding"]
    assert enc["points"] == 4096 and enc["fwd_bwd_points_per_s"] > 0
    assert enc["fwd_bwd_s"] >= enc["fwd_s"] * 0.5  # the backward is not free

    step = r["train_step"]
    assert step["steps"] == 2 and step["batch_rays"] == 256
    assert step["rays_per_s"] == pytest.approx(2 * 256 / step["seconds"])

    psnr = r["time_to_psnr"]
    # --quick: train.steps=6, validation every 2 steps after 1 warm-up + 2 timed steps.
    assert psnr["stopped_by"] in ("steps", "targets")
    assert [h["step"] for h in psnr["history"]][-1] == psnr["steps"]
    assert all(h["step"] % 2 == 0 for h in psnr["history"])
    times = [h["train_seconds"] for h in psnr["history"]]
    assert times == sorted(times) and times[0] >= step["seconds"]
    assert psnr["best_val_psnr"] == max(h["val_psnr"] for h in psnr["history"])
    assert math.isfinite(psnr["best_val_psnr"])
    for target in ("30", "33"):
        t = psnr["targets"][target]
        if t["reached"]:
            hit = next(h for h in psnr["history"] if h["step"] == t["step"])
            assert hit["val_psnr"] >= float(target)
        else:
            assert (
                t["note"]
                == f"not reached in {psnr['steps']} steps (best {psnr['best_val_psnr']:.2f} dB)"
            )

    render = r["render"]
    # --quick renders the full frame at 1/8 scale: 512x334 -> 64x42 (or portrait 42x64).
    assert render["full_frame"]["resolution"] in ("64x42", "42x64")
    assert render["crop"]["resolution"] == "32x32"
    for part in ("full_frame", "crop"):
        assert render[part]["fps"] == pytest.approx(1.0 / render[part]["median_s"])
    assert r["memory"]["peak_rss_mib"] > 50  # torch alone takes more than that

    table = out.with_suffix(".md").read_text()
    header, rule, row = table.strip().splitlines()[-3:]
    assert "train step (rays/s)" in header and "time to 33 dB" in header
    assert f"render {render['full_frame']['resolution']} (FPS)" in header
    assert header.count("|") == rule.count("|") == row.count("|")
    assert row.startswith("| torch | torch |")
    assert table in capsys.readouterr().out

    # A GPU report with a target reached renders its time, step and GPU memory.
    r["time_to_psnr"]["targets"]["30"] = {"reached": True, "step": 4, "train_seconds": 12.3}
    r["memory"] = {"peak_gpu_mib": 1234.0}
    report.update(
        device="cuda", machine={**report["machine"], "cuda": True, "cuda_device": "Some GPU"}
    )
    gpu_table = bench.markdown(report)
    assert "(Some GPU)" in gpu_table and "peak GPU memory (MiB)" in gpu_table
    gpu_row = gpu_table.strip().splitlines()[-1]
    assert "| 12 s (step 4) |" in gpu_row and gpu_row.endswith("| 1,234 |")


def test_bench_bad_input_is_reported_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    missing = tmp_path / "no_capture"
    assert bench.main(["--device", "cpu", "--data", str(missing), "--quick"]) == 2
    assert f"--data {missing}: no such folder" in capsys.readouterr().err
    assert bench.main(["--device", "cpu", "--data", str(tmp_path), "--minutes", "0"]) == 2
    assert "--minutes must be > 0" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert bench.main(["--device", "cuda", "--data", str(tmp_path)]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert bench.main(["--device", "cpu", "--grid", "tcnn", "--data", str(tmp_path)]) == 2
        assert "--grid tcnn: not usable on cpu" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was written on failure


def test_preset_capture_is_synthesised_once_into_the_cache(tmp_path: Path) -> None:
    bench = load_bench()
    root = bench.capture_root(None, "tiny", seed=3, frames=1)
    assert root.name == "tiny-seed3-frames1" and root.parent.name == "bench"
    made = json.loads((root / "synth.json").read_text())
    assert made["seed"] == 3
    assert made["preset"]["train_frames"] == 1 and made["preset"]["novel_frames"] == 1
    stamp = (root / "synth.json").stat().st_mtime_ns
    assert bench.capture_root(None, "tiny", seed=3, frames=1) == root
    assert (root / "synth.json").stat().st_mtime_ns == stamp  # reused, not rendered again
    # Masks are cached per capture: another capture gets another folder.
    assert bench.mask_cache_for(root) != bench.mask_cache_for(tmp_path)
