"""tools/count_launches.py: the operations a render issues on the CUDA code path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.tools.test_bench_render import load


def test_counts_with_and_without_the_fused_kernels(tiny_run: Path, tmp_path: Path) -> None:
    tool = load("count_launches")
    switches_before = {name: os.environ.get(name) for name in tool.CPU_KERNEL_SWITCHES}
    reports = {}
    for kernels in (False, True):
        out = tmp_path / f"{kernels}.json"
        argv = ["--run", str(tiny_run), "--size", "64", "--out", str(out)]
        assert tool.main([*argv, "--kernels"] if kernels else argv) == 0
        reports[kernels] = json.loads(out.read_text())
    plain, fused = reports[False], reports[True]
    assert plain["kernel_launches"] == {} and plain["total"] == plain["operations"] > 0
    assert sum(plain["by_caller"].values()) == plain["operations"]
    assert any("grid_tables.py" in caller for caller in plain["by_caller"])
    # The grid's lookups become one launch each: fewer launches in all, none in its corners.
    assert fused["kernel_launches"]["grid_triton"] > 0
    assert fused["total"] < plain["total"]
    assert not any("grid_tables.py:corners" in caller for caller in fused["by_caller"])
    # The CPU kernels' switches are as they were.
    assert {name: os.environ.get(name) for name in tool.CPU_KERNEL_SWITCHES} == switches_before


def test_a_folder_that_is_no_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert load("count_launches").main(["--run", str(tmp_path)]) == 2
    assert "not a handnerf run folder" in capsys.readouterr().err
