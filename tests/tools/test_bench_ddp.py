"""tools/bench_ddp.py: steps/s from a fit's metrics, the report table, bad input."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench_ddp.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("handnerf_tools_bench_ddp", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_metrics(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_steps_per_second_leaves_out_the_warmup_and_the_final_record(tmp_path: Path) -> None:
    bench = load_bench()
    metrics = write_metrics(
        tmp_path / "metrics.jsonl",
        [
            {"step": 5, "time": 9.0},  # warm-up: slow first steps, left out
            {"step": 10, "time": 10.0},
            {"step": 15, "time": 12.0},
            {"step": 20, "time": 14.0},
            {"step": 20, "final": True, "val_psnr": 20.0},  # no time: not a step record
        ],
    )
    rate, steps = bench.steps_per_second(metrics, warmup=10)
    assert steps == 10 and rate == pytest.approx(10 / 4.0)


def test_too_few_logged_steps_after_the_warmup_is_an_error(tmp_path: Path) -> None:
    bench = load_bench()
    metrics = write_metrics(tmp_path / "metrics.jsonl", [{"step": 5, "time": 1.0}])
    with pytest.raises(SystemExit, match="fewer than 2 logged steps"):
        bench.steps_per_second(metrics, warmup=5)


def test_markdown_has_a_row_per_rank_count() -> None:
    bench = load_bench()
    row = {"threads_per_rank": 1, "rays_per_s": 2048.0, "allreduce_bytes_per_step": 140000}
    report = {
        "date": "2026-12-02 17:00 UTC",
        "commit": "abc1234",
        "command": "python tools/bench_ddp.py",
        "global_batch_rays": 2048,
        "load_average_before": (1.0, 1.0, 1.0),
        "load_average_after": (2.0, 1.0, 1.0),
        "rows": [
            {**row, "ranks": 1, "steps_per_s": 1.0, "speedup": 1.0},
            {**row, "ranks": 2, "steps_per_s": 1.6, "speedup": 1.6},
        ],
    }
    table = bench.markdown(report)
    assert "| 1 | 1 | 1.00 | 2048 | 1.00x | 0.14 MB |" in table
    assert "| 2 | 1 | 1.60 | 2048 | 1.60x | 0.14 MB |" in table


def test_a_missing_data_folder_is_refused(tmp_path: Path) -> None:
    from handnerf.errors import DataError

    bench = load_bench()
    with pytest.raises(DataError, match="no such folder"):
        bench.capture_root(tmp_path / "absent", "tiny", 7)
