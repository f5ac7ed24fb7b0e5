"""Real ``handnerf fit`` subprocesses killed with SIGTERM, SIGINT and SIGKILL, then resumed.

Runs ``tools/reliability.py --quick``: one fit killed three times in a row (SIGTERM in
mid-training, SIGKILL while the resumed run writes its checkpoint, SIGINT in the final
validation), each job held at its progress point until the signal came, then resumed to
the end and compared with an uninterrupted fit of the same config. The full harness (100+
kills in every phase of fit, eval, prepare and render) writes docs/reliability.md.
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
    log = (tmp_path / "work" / "fit_0" / "jobs.log").read_text()
    assert status == 0, f"{trials}\n{log[-3000:]}"
    (trial,) = trials
    assert trial["missed"] == 0, trial
    kills = trial["kills"]
    # Each kill landed in its phase (the job waited there for it), whatever the clock did.
    assert [(k["signal"], k["phase"]) for k in kills] == [
        ("SIGTERM", "mid-training"),
        ("SIGKILL", "checkpoint write"),
        ("SIGINT", "final validation"),
    ]
    assert [k["exit_code"] for k in kills] == [130, -9, 130]
    assert all(k["ok"] for k in kills), kills
    assert kills[1]["point"] == "write=latest.pt"
    assert trial["equivalent"] and trial["max_weight_diff"] <= tool.WEIGHT_TOLERANCE
    assert "3 kills delivered of 3 planned, 3 survived; 0 late or missed" in report.read_text()


def test_a_job_that_never_reaches_its_kill_point_fails_the_trial(
    tiny_capture: Path, tmp_path: Path
) -> None:
    """A kill that cannot land is a harness failure, never a silent "missed"."""
    tool = _load_tool()
    job = tool.RenderJob(tmp_path / "job", tiny_capture, tmp_path / "no_such_run")
    job.workdir.mkdir()
    trial = tool.Trial(job="render", name="render_0", plan=[("SIGTERM", "mid-frames")])
    tool.run_trial(job, trial, reference=None)
    assert trial.missed == 1 and not trial.kills and not trial.survived
    assert "without reaching render.frame=2" in trial.problem


def test_resume_trims_log_records_past_the_checkpoint(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 1.0 / s} for s in (2, 4, 6)]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 8, "lo')
    assert trim_metrics(log, 4) == 2  # step 6 and the line a SIGKILL cut short
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4]
    assert trim_metrics(log, 4) == 0
