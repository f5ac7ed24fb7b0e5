"""tools/bench_silhouette_fit.py on the tiny capture with known MANO errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tools" / "bench_silhouette_fit.py"

#: Many small steps: one thread avoids oversubscribing 2 cores (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("handnerf_tools_bench_silhouette", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_it_measures_both_starts(noisy_capture: Path, capsys: pytest.CaptureFixture) -> None:
    bench = load_bench()
    tiny = str(ROOT / "configs" / "tiny.yaml")
    assert bench.main([str(noisy_capture), "--config", tiny, "--steps", "40"]) == 0
    result = json.loads(capsys.readouterr().out)
    given, exact = result["from_given"], result["from_exact"]
    # The capture's 4 deg / 4 mm errors: 12.86 mm (tests/train/test_silhouette_fit.py).
    assert given["vertex_error_mm_before"] > 10.0
    assert given["vertex_error_mm_after"] < given["vertex_error_mm_before"]
    assert given["moved_mm"] > 0
    assert exact["vertex_error_mm_before"] == 0.0
    assert exact["moved_mm"] == pytest.approx(exact["vertex_error_mm_after"])
    assert given["seconds"] > 0 and "outline_after" in given


def test_a_capture_without_exact_fits_is_refused(
    tiny_capture: Path, capsys: pytest.CaptureFixture
) -> None:
    bench = load_bench()
    tiny = str(ROOT / "configs" / "tiny.yaml")
    assert bench.main([str(tiny_capture), "--config", tiny, "--steps", "1"]) == 2
    assert "exact_mano.json: missing" in capsys.readouterr().err
