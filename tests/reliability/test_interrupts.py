"""Real ``handnerf fit`` subprocesses killed with SIGTERM, SIGINT and SIGKILL, then resumed.

Runs ``tools/reliability.py --quick``: one fit killed twice in a row (a graceful SIGTERM,
then an uncatchable SIGKILL in the resumed run), each kill aimed at the training loop,
then resumed to the end and compared with an uninterrupted fit of the same config. The
full harness (SIGINT too, many more kills, ``eval`` and ``prepare``) writes
docs/reliability.md.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from handnerf.train.fit_job import trim_metrics

TOOL = Path(__file__).resolve().parents[2] / "tools" / "reliability.py"


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("handnerf_reliability_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_killed_fits_resume_to_the_uninterrupted_result(tiny_capture: Path, tmp_path: Path) -> None:
    tool = _load_tool()
    report, raw = tmp_path / "reliability.md", tmp_path / "trials.json"
    status = tool.main(
        [
            "--quick",
            "--capture",
            str(tiny_capture),
            "--workdir",
            str(tmp_path / "work"),
            "--report",
            str(report),
            "--json",
            str(raw),
        ]
    )
    trials = json.loads(raw.read_text())["trials"]
    log = (tmp_path / "work" / "jobs.log").read_text()
    assert status == 0, f"{trials}\n{log[-3000:]}"
    (trial,) = trials
    kills = trial["kills"]
    assert [k["signal"] for k in kills] == ["SIGTERM", "SIGKILL"], f"a kill came too late: {trial}"
    for kill in kills:
        assert kill["ok"], kill
        if kill["signal"] != "SIGKILL" and kill["phase"] == "training":
            assert kill["exit_code"] == 130 and kill["on_disk"].startswith("checkpoint step")
    assert trial["equivalent"] and trial["max_weight_diff"] <= tool.WEIGHT_TOLERANCE
    text = report.read_text()
    assert f"{len(kills)} kills delivered, {len(kills)} survived" in text


def test_resume_trims_log_records_past_the_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 1.0 / s} for s in (2, 4, 6)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 8, "lo')
    assert trim_metrics(log, 4) == 2  # step 6 and the line a SIGKILL cut short
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4]
    assert trim_metrics(log, 4) == 0
