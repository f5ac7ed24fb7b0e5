"""Fault-injection harness (issue 8): kill real jobs, resume them, compare with clean runs.

What it does:

1. Writes a ``tiny`` synthetic capture (or uses ``--capture``) and fits it once without
   interruption: the reference run, then evaluates that run once: the reference report.
2. ``fit`` trials: starts ``handnerf fit`` as a subprocess, sends SIGTERM, SIGINT or SIGKILL
   at a random moment (uniform over the reference's wall time), checks what is on disk
   (the checkpoint loads; a graceful stop saved the last completed step), re-runs with
   ``--resume`` (or plainly when no checkpoint exists yet) and kills again for chained
   trials, until one run finishes. The result must equal the reference: same final step,
   same weights (up to float noise), same logged losses, each step logged once, no temp
   files left.
3. ``eval`` trials: the same with ``handnerf eval`` (re-run plainly): a ``report.json``
   on disk is always complete, and the re-run's numbers equal the reference report's.
4. ``prepare`` trials, when ``handnerf prepare`` exists: killed and re-run plainly, the
   cache it leaves must equal an uninterrupted run's.
5. Runs the fast fault tests (``tests/reliability``: fuzzing, numerical faults, full disk,
   untrusted files) and collects their outcomes and hypothesis example counts.
6. Writes ``docs/reliability.md`` (``--report``) listing each fault, how often it was
   tried, and the outcome; ``--json`` also writes the raw trial records.

Usage::

    .venv/bin/python tools/reliability.py                    # full run (10-15 min, 2 cores)
    .venv/bin/python tools/reliability.py --quick --report /tmp/r.md   # 2 kills, ~1 min

Exit status 0 when every trial survived and every test passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from handnerf.train.config import TINY_FIT_OVERRIDES

REPO = Path(__file__).resolve().parents[1]

#: A fit small enough to run many times on a laptop CPU.
FIT_OVERRIDES: list[str] = [
    *TINY_FIT_OVERRIDES,
    "train.val_every=0",
    "train.val_views=1",
    "train.log_every=2",
    "train.checkpoint_every=3",
    "train.device=cpu",
]
EVAL_ARGS: list[str] = ["--max-views", "2", "--device", "cpu", "--chunk", "4096"]
SIGNALS: dict[str, int] = {
    "SIGTERM": signal.SIGTERM,
    "SIGINT": signal.SIGINT,
    "SIGKILL": signal.SIGKILL,
}
#: Largest weight difference between a resumed and an uninterrupted fit that counts as
#: equal (CPU float reductions are not bit-reproducible across thread schedules).
WEIGHT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-4
JOB_TIMEOUT_S = 300.0
#: Kills aimed at the training loop land within this many seconds of its first log line.
TRAINING_KILL_SPAN_S = 1.0


@dataclass
class Kill:
    """One signal sent to a running job."""

    signal: str
    delay_s: float
    phase: str  # "startup" (nothing logged by this run yet) | "training" | "writing"
    exit_code: int
    on_disk: str  # what the kill left: "checkpoint step N", "no checkpoint", "report complete"...
    ok: bool
    problem: str = ""


@dataclass
class Trial:
    """A job killed one or more times, then run to completion and compared."""

    job: str  # fit | eval | prepare
    signals: list[str]
    kills: list[Kill] = field(default_factory=list)
    missed: int = 0  # signals not sent because the job had already finished
    reruns: int = 0
    equivalent: bool = False
    max_weight_diff: float | None = None
    problem: str = ""
    seconds: float = 0.0

    @property
    def survived(self) -> bool:
        """At least one kill delivered, every kill left usable files, result equivalent."""
        return bool(self.kills) and self.equivalent and all(k.ok for k in self.kills)


# --------------------------------------------------------------------------- subprocesses


def handnerf(*args: str) -> list[str]:
    return [sys.executable, "-m", "handnerf.cli", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # one thread: the same float results in the reference and every resumed run
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_to_end(cmd: list[str], log: Path) -> tuple[int, float]:
    """Run ``cmd`` to completion (output appended to ``log``); returns (status, seconds)."""
    start = time.monotonic()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), timeout=JOB_TIMEOUT_S
        )
    return proc.returncode, time.monotonic() - start


def run_and_kill(
    cmd: list[str],
    sig: int,
    delay: float,
    log: Path,
    progressed: Callable[[], bool] | None,
    after_progress: bool = False,
) -> tuple[int, str] | None:
    """Start ``cmd``, send ``sig`` after ``delay`` s; (status, phase), None if it ended first.

    ``progressed()`` tells whether the job has reached its main loop (for the phase);
    ``after_progress``: count ``delay`` from that moment, so that the kill lands
    mid-training rather than during start-up.
    """
    with open(log, "a") as out:
        when = "after progress + " if after_progress else ""
        out.write(f"$ {' '.join(cmd)}  # {signal.Signals(sig).name} {when}{delay:.2f}s\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env())
        if after_progress and progressed is not None:
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while not progressed() and time.monotonic() < deadline:
                if proc.poll() is not None:
                    return None
                time.sleep(0.02)
        try:
            proc.wait(timeout=delay)
            return None  # finished before the signal was due
        except subprocess.TimeoutExpired:
            pass
        if progressed is None:
            phase = "running"
        else:
            phase = "training" if progressed() else "startup"
        proc.send_signal(sig)
        try:
            status = proc.wait(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
            phase += " (hung after the signal; killed)"
        return status, phase


def kill_with_retries(
    trial: Trial,
    launch: Callable[[float], tuple[int, str] | None],
    delay: float,
    reset: Callable[[], None] | None,
    tries: int = 3,
) -> tuple[int, str] | None:
    """``launch(delay)``; when the job ends before the signal, ``reset()`` and try again
    sooner (half the delay), so that every planned kill is really delivered."""
    for _ in range(tries):
        outcome = launch(delay)
        if outcome is not None:
            return outcome
        trial.missed += 1
        if reset is None:
            return None
        reset()
        delay *= 0.5
    return None


def max_logged_step(run: Path) -> int:
    """The highest step in ``run``'s metrics.jsonl (0 when none); tolerates a cut line."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    best = 0
    for line in path.read_text().splitlines():
        try:
            best = max(best, int(json.loads(line).get("step", 0)))
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            continue
    return best


# --------------------------------------------------------------------------- fit


def fit_cmd(capture: Path, run: Path, steps: int, resume: bool) -> list[str]:
    args = ["fit", "--data", str(capture), "--out", str(run), "--no-progress"]
    return handnerf(
        *args, *(["--resume"] if resume else []), *FIT_OVERRIDES, f"train.steps={steps}"
    )


def checkpoint_state(run: Path) -> tuple[dict[str, Any] | None, str]:
    """The run's checkpoint if it loads, with a description; (None, why) otherwise."""
    from handnerf.errors import CheckpointError
    from handnerf.train.checkpoint import LATEST, load_checkpoint

    path = run / "checkpoints" / LATEST
    if not path.exists():
        return None, "no checkpoint"
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        return None, f"UNUSABLE checkpoint: {exc}"
    return state, f"checkpoint step {state['step']}"


def logged_steps(run: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training record in metrics.jsonl, in order."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(int(r["step"]), float(r["loss"])) for r in records if "loss" in r]


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp")) if folder.is_dir() else []


class FitReference:
    """The uninterrupted fit, started at once in the background; :meth:`get` waits for it.

    Running it beside the first trial halves the wall time of ``--quick`` on 2 cores.
    """

    def __init__(self, cmd: list[str], run: Path, log: Path) -> None:
        self.run = run
        self.seconds = 0.0
        self._start = time.monotonic()
        self._log = open(log.with_name("reference.log"), "w")  # closed in get()
        self._proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=child_env()
        )
        self._state: dict[str, Any] | None = None

    def get(self) -> dict[str, Any]:
        """``{"model": weights, "logged": [(step, loss)]}`` of the finished reference."""
        if self._state is None:
            status = self._proc.wait(timeout=JOB_TIMEOUT_S)
            self.seconds = time.monotonic() - self._start
            self._log.close()
            state, on_disk = checkpoint_state(self.run)
            if status != 0 or state is None:
                raise SystemExit(f"the reference fit failed ({on_disk}; see {self._log.name})")
            self._state = {"model": state["model"], "logged": logged_steps(self.run)}
        return self._state


def fit_trial(
    capture: Path,
    run: Path,
    steps: int,
    signals: list[str],
    delays: list[float],
    reference: Callable[[], dict[str, Any]],
    log: Path,
    in_training: bool = False,
) -> Trial:
    """Kill a fit once per signal (chained through resumes), finish it, compare.

    ``in_training``: aim each kill at the training loop (``delays`` count from the first
    new log line) instead of anywhere in the job.
    """
    trial = Trial(job="fit", signals=signals)
    start = time.monotonic()
    for name, delay in zip(signals, delays, strict=True):
        state, _ = checkpoint_state(run)
        cmd = fit_cmd(capture, run, steps, resume=state is not None)
        start_step = 0 if state is None else int(state["step"])
        first = not trial.kills
        outcome = kill_with_retries(
            trial,
            lambda d, cmd=cmd, name=name, start_step=start_step: run_and_kill(
                cmd,
                SIGNALS[name],
                d,
                log,
                lambda: max_logged_step(run) > start_step,
                after_progress=in_training,
            ),
            delay,
            # only a fresh fit can be started over; a finished resume ends the chain
            reset=(lambda: shutil.rmtree(run, ignore_errors=True)) if first else None,
        )
        if outcome is None:
            break  # the fit finished: nothing left to interrupt
        status, phase = outcome
        state, on_disk = checkpoint_state(run)
        kill = Kill(name, delay, phase, status, on_disk, ok=not on_disk.startswith("UNUSABLE"))
        if not kill.ok:
            kill.problem = on_disk
        elif name != "SIGKILL" and phase == "training":
            # a graceful stop finishes the step in flight and saves it; a signal during
            # the final save/validation lets the finished fit exit normally
            last_logged = max((s for s, _ in logged_steps(run)), default=0)
            finished = status == 0 and state is not None and int(state["step"]) == steps
            if status != 130 and not finished:
                kill.ok, kill.problem = False, f"exit status {status}, expected 130"
            elif state is None or int(state["step"]) < last_logged:
                kill.ok = False
                kill.problem = f"checkpoint behind the last logged step {last_logged}"
        trial.kills.append(kill)
    # finish: resume until done (plain start when the kill came before any checkpoint)
    for _ in range(3):
        state, _ = checkpoint_state(run)
        if state is not None and int(state["step"]) >= steps and _finished(run):
            break
        status, _ = run_to_end(fit_cmd(capture, run, steps, resume=state is not None), log)
        trial.reruns += 1
        if status != 0:
            trial.problem = f"re-run exited with {status} (see {log})"
    trial.seconds = time.monotonic() - start
    _compare_fit(trial, run, steps, reference())
    return trial


def _finished(run: Path) -> bool:
    path = run / "metrics.jsonl"
    return path.is_file() and '"final": true' in path.read_text()


def _compare_fit(trial: Trial, run: Path, steps: int, reference: dict[str, Any]) -> None:
    import torch

    state, on_disk = checkpoint_state(run)
    problems = [trial.problem] if trial.problem else []
    if state is None:
        problems.append(on_disk)
    else:
        if int(state["step"]) != steps:
            problems.append(f"final step {state['step']} != {steps}")
        diffs = [
            float((value.float() - reference["model"][key].float()).abs().max())
            for key, value in state["model"].items()
            if torch.is_tensor(value) and value.is_floating_point() and value.numel()
        ]
        trial.max_weight_diff = max(diffs, default=0.0)
        if trial.max_weight_diff > WEIGHT_TOLERANCE:
            problems.append(f"weights differ from the reference by {trial.max_weight_diff:.2e}")
    logged, wanted = logged_steps(run), reference["logged"]
    if [s for s, _ in logged] != [s for s, _ in wanted]:
        problems.append(f"logged steps {[s for s, _ in logged]} != {[s for s, _ in wanted]}")
    elif any(
        abs(a - b) > LOSS_TOLERANCE * max(1.0, abs(b))
        for (_, a), (_, b) in zip(logged, wanted, strict=True)
    ):
        problems.append("logged losses differ from the reference")
    leftovers = temp_files(run / "checkpoints")
    if leftovers:
        problems.append(f"temp files left: {[p.name for p in leftovers]}")
    trial.equivalent = not problems
    trial.problem = "; ".join(problems)


# --------------------------------------------------------------------------- eval


def eval_cmd(run: Path, out: Path) -> list[str]:
    return handnerf("eval", "--run", str(run), "--out", str(out), "--no-progress", *EVAL_ARGS)


def report_numbers(out: Path) -> tuple[list[tuple[Any, ...]] | None, str]:
    path = out / "report.json"
    if not path.exists():
        return None, "no report.json"
    try:
        report = json.loads(path.read_text())
        rows = [
            (r["split"], r["camera"], r["frame"], r["psnr"], r["ssim"], r["lpips"])
            for r in report["images"]
        ]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return None, f"UNUSABLE report.json: {exc}"
    return rows, "report.json complete"


def eval_trial(
    run: Path, out: Path, signals: list[str], delays: list[float], reference: list[Any], log: Path
) -> Trial:
    trial = Trial(job="eval", signals=signals)
    start = time.monotonic()
    for name, delay in zip(signals, delays, strict=True):
        outcome = kill_with_retries(
            trial,
            lambda d, name=name: run_and_kill(eval_cmd(run, out), SIGNALS[name], d, log, None),
            delay,
            reset=lambda: None,  # a finished eval is simply run again
        )
        if outcome is None:
            continue
        status, phase = outcome
        _, on_disk = report_numbers(out)
        ok = not on_disk.startswith("UNUSABLE")
        trial.kills.append(Kill(name, delay, phase, status, on_disk, ok, "" if ok else on_disk))
    status, _ = run_to_end(eval_cmd(run, out), log)
    trial.reruns += 1
    trial.seconds = time.monotonic() - start
    rows, on_disk = report_numbers(out)
    if status != 0 or rows is None:
        trial.problem = f"re-run exited with {status}: {on_disk}"
    elif not _rows_equal(rows, reference):
        trial.problem = "re-run's metrics differ from the reference report"
    else:
        trial.equivalent = True
    return trial


def _rows_equal(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for row_a, row_b in zip(a, b, strict=True):
        if row_a[:3] != row_b[:3]:
            return False
        for x, y in zip(row_a[3:], row_b[3:], strict=True):
            if (x is None) != (y is None) or (x is not None and abs(x - y) > 1e-6):
                return False
    return True


# --------------------------------------------------------------------------- prepare


def prepare_available() -> bool:
    return (REPO / "handnerf" / "commands" / "prepare.py").is_file()


def prepare_cmd(capture: Path, out: Path) -> list[str]:
    return handnerf("prepare", "--interhand", str(capture), "--out", str(out), *PREPARE_ARGS)


#: ``handnerf prepare`` arguments: the training sequence, crops as in FIT_OVERRIDES.
PREPARE_ARGS: list[str] = [
    "--seq",
    "ROM04_RT_Occlusion",
    "--crop",
    "1.3:48",
    "--workers",
    "1",
    "--no-progress",
]


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path (temp files excluded)."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp") and not p.name.startswith(".")
    }


def prepare_trial(
    capture: Path,
    out: Path,
    signals: list[str],
    delays: list[float],
    reference: dict[str, str],
    log: Path,
) -> Trial:
    trial = Trial(job="prepare", signals=signals)
    start = time.monotonic()
    for name, delay in zip(signals, delays, strict=True):
        outcome = kill_with_retries(
            trial,
            lambda d, name=name: run_and_kill(
                prepare_cmd(capture, out), SIGNALS[name], d, log, None
            ),
            delay,
            reset=lambda: shutil.rmtree(out, ignore_errors=True),
        )
        if outcome is None:
            continue
        status, phase = outcome
        trial.kills.append(Kill(name, delay, phase, status, "cache (checked after re-run)", True))
    status, _ = run_to_end(prepare_cmd(capture, out), log)
    trial.reruns += 1
    trial.seconds = time.monotonic() - start
    digest = tree_digest(out)
    if status != 0:
        trial.problem = f"re-run exited with {status} (see {log})"
    elif not _json_loads(out / "index.json"):
        trial.problem = "index.json missing or not valid JSON after the re-run"
    elif _volatile_free(digest) != _volatile_free(reference):
        changed = sorted(set(digest.items()) ^ set(reference.items()))[:3]
        trial.problem = f"cache differs from an uninterrupted prepare: {changed}"
    else:
        trial.equivalent = True
    return trial


def _json_loads(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def _volatile_free(digest: dict[str, str]) -> dict[str, str]:
    # the index records timings and dates; logs differ between runs too
    return {
        k: v
        for k, v in digest.items()
        if not k.endswith((".log", ".jsonl")) and Path(k).name != "index.json"
    }


# --------------------------------------------------------------------------- fast tests


def run_fast_tests(workdir: Path) -> tuple[list[dict[str, Any]], str]:
    """Run tests/reliability (except the kill tests, which this script is) and collect results."""
    junit = workdir / "junit.xml"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/reliability",
        "-q",
        "-p",
        "no:cacheprovider",
        "--hypothesis-show-statistics",
        f"--junitxml={junit}",
        "--deselect",
        "tests/reliability/test_interrupts.py",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env=child_env(), timeout=1800
    )
    examples = _hypothesis_examples(proc.stdout)
    docs = _test_docs()
    results = []
    if junit.is_file():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            name = case.get("name", "")
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                if case.find(tag) is not None:
                    outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
            base = name.split("[")[0]
            module = (case.get("classname") or "").split(".")[-1]
            results.append(
                {
                    "file": module,
                    "test": name,
                    "what": docs.get(base, base.removeprefix("test_").replace("_", " ")),
                    "examples": examples.get(name),
                    "outcome": outcome,
                    "seconds": float(case.get("time", 0.0)),
                }
            )
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    return results, tail


def _hypothesis_examples(output: str) -> dict[str, int]:
    """Examples run per property, from pytest's ``--hypothesis-show-statistics`` output."""
    counts: dict[str, int] = {}
    current = None
    for line in output.splitlines():
        header = re.match(r"^\S+::(\S+):\s*$", line)
        if header:
            current = header.group(1)
            continue
        # "60 passing, 0 failing, and 3 invalid test cases" (older: "60 passing examples, ...")
        found = re.search(r"(\d+) passing(?: examples?)?, (\d+) failing", line)
        if found and current is not None:
            counts[current] = counts.get(current, 0) + int(found.group(1)) + int(found.group(2))
    return counts


def _test_docs() -> dict[str, str]:
    docs = {}
    for path in (REPO / "tests" / "reliability").glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = ast.get_docstring(node)
                if doc:
                    docs[node.name] = doc.splitlines()[0].rstrip(".")
    return docs


# --------------------------------------------------------------------------- report

_FAULTS_TEXT = """\
## What is injected, and what must hold

| fault | how it is injected | what must hold |
|---|---|---|
| SIGTERM / SIGINT during `fit` | signal to a real `handnerf fit` process at a random time | the step in flight finishes, a checkpoint of it is written, exit status 130; `--resume` ends equal to an uninterrupted fit |
| SIGKILL during `fit` | same, uncatchable | the checkpoint on disk is the previous complete one (atomic temp file + fsync + rename), never half a file; `--resume` repeats the lost steps and ends equal to an uninterrupted fit; `metrics.jsonl` is trimmed to the checkpoint so no step is logged twice; stale temp files are removed |
| any signal during `eval` | signal to a real `handnerf eval` process | `report.json` on disk is absent or complete (written atomically, last, after the images); a plain re-run reproduces the reference numbers |
| any signal during `prepare` | signal to a real `handnerf prepare` process (when the command exists) | a plain re-run leaves a cache identical to an uninterrupted run's |
| corrupt annotations | hypothesis: one JSON value replaced by garbage (wrong type, huge or NaN/inf number, unicode, path tricks), a key deleted, or the file truncated | a `HandnerfError` naming file and field, or a counted skip, or views that pass a sanity check; never a library traceback |
| corrupt MANO parameters | hypothesis over `ManoParams.from_interhand` entries | `ParameterError`, or parameters equal to the input; garbage (bools, strings, NaN, \\|x\\| > 1e3) never accepted |
| singular / reflecting / non-numeric camera rotations | hypothesis over `PinholeCamera.from_interhand` | `DataError` unless the matrix is a proper rotation |
| corrupt JPEG / PNG, wrong image size | hypothesis: truncation, flipped bytes, other sizes | `DataError` naming the file; never a truncated or mis-sized image accepted |
| unicode roots and sequence names | hypothesis over folder names | read back exactly |
| NaN / inf loss or gradient | monkeypatched loss / gradient hook in a real fit | step skipped (weights and Adam moments untouched) and counted, learning rate halved per bad step; after `train.max_bad_steps` the fit stops with `TrainingDivergedError` naming the intact last checkpoint |
| out of memory | monkeypatched allocator failure | rendering retries in smaller ray chunks (same image); training stops with a `ResourceError` naming the knobs |
| full disk (ENOSPC) | monkeypatched `os.fsync` / half-writing file handle during checkpoint, log and mask-cache writes | the previous checkpoint / cache entry still loads, no temp file left, a clear error (exit 2); `--resume` continues once space is back |
| code in untrusted files | crafted checkpoint (zip and raw pickle), MANO pickle (object array, `os.system`, `eval`), poisoned `.npz` cache | refused before anything runs (a sentinel file is never created) |

## Memory and disk knobs

- Training memory per step grows with `train.batch_rays` x `model.sampler.n_samples`
  (plus `train.lpips_patches` x `train.lpips_patch_size`^2 rays when LPIPS is on); an
  allocation failure stops the fit with a `ResourceError` that names these knobs, with the
  last checkpoint intact.
- Rendering (`handnerf render --chunk`, `handnerf eval --chunk`, validation) works in ray
  chunks; a chunk that does not fit is retried in halves down to 256 rays.
- `train.checkpoint_every` bounds the work a SIGKILL can lose; SIGTERM/SIGINT lose none.
- A checkpoint write needs free space for one extra checkpoint (temp file + rename).
"""


def write_report(
    path: Path,
    trials: list[Trial],
    tests: list[dict[str, Any]] | None,
    tests_tail: str,
    meta: dict[str, Any],
) -> None:
    lines = [
        "# Reliability: faults tried and their outcomes",
        "",
        "Generated by `tools/reliability.py`; rerun it with",
        "`.venv/bin/python tools/reliability.py` (10-15 minutes on 2 CPU cores) to",
        "refresh this page. The fast part (`tests/reliability`, including a 2-kill version of",
        "the interrupt trials via `--quick`) runs in `make test`.",
        "",
        f"Run: {meta['date']} on {meta['machine']}, seed {meta['seed']}, mode "
        f"{'quick' if meta['quick'] else 'full'} ({meta.get('per_signal')} fit trials per "
        f"signal); fit of {meta['steps']} steps "
        f"(reference {meta['fit_seconds']:.1f} s wall), eval reference "
        f"{meta.get('eval_seconds', 0.0):.1f} s.",
        "",
        "## Interrupted jobs",
        "",
    ]
    delivered = [k for t in trials for k in t.kills]
    survived_kills = sum(len(t.kills) for t in trials if t.survived)
    lines += [
        f"**{len(delivered)} kills delivered, {survived_kills} survived** "
        f"({sum(t.survived for t in trials)} of {sum(bool(t.kills) for t in trials)} trials "
        "with kills ended equal to an "
        "uninterrupted run; a trial can chain several kills before the run that finishes).",
        "",
        "| job | signal | kills | in startup | in training | exit codes | left on disk | trials equal to reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for job in ("fit", "eval", "prepare"):
        for name in SIGNALS:
            kills = [k for t in trials if t.job == job for k in t.kills if k.signal == name]
            if not kills:
                continue
            phases = Counter(k.phase.split(" ")[0] for k in kills)
            codes = Counter(k.exit_code for k in kills)
            disk = Counter(re.sub(r"step \d+", "step N", k.on_disk) for k in kills)
            with_sig = [t for t in trials if t.job == job and name in [k.signal for k in t.kills]]
            lines.append(
                f"| {job} | {name} | {len(kills)} | {phases.get('startup', 0)} | "
                f"{phases.get('training', 0)} | "
                + ", ".join(f"{c} x{n}" for c, n in sorted(codes.items()))
                + " | "
                + ", ".join(f"{d} x{n}" for d, n in sorted(disk.items()))
                + f" | {sum(t.survived for t in with_sig)} / {len(with_sig)} |"
            )
    diffs = [t.max_weight_diff for t in trials if t.max_weight_diff is not None]
    if diffs:
        lines += [
            "",
            f"Largest weight difference between a resumed fit and the uninterrupted one: "
            f"{max(diffs):.2e} (tolerance {WEIGHT_TOLERANCE:g}); logged losses equal within "
            f"{LOSS_TOLERANCE:g} relative, every step logged once.",
        ]
    missed = sum(t.missed for t in trials)
    if missed:
        lines.append(
            f"{missed} scheduled signal(s) came after the job had finished; each was retried "
            "sooner on a fresh job (not counted as kills)."
        )
    empty = sum(not t.kills for t in trials)
    if empty:
        lines.append(f"{empty} trial(s) delivered no kill at all and are left out of the counts.")
    if not prepare_available():
        lines.append("`handnerf prepare` does not exist in this checkout: no prepare trials.")
    lines += [f"Note: {note}." for note in meta.get("notes", [])]
    failed = [t for t in trials if t.kills and not t.survived]
    lines += ["", "Failures:" if failed else "No failures.", ""]
    for t in failed:
        problems = "; ".join([t.problem] + [k.problem for k in t.kills if k.problem])
        lines.append(f"- {t.job} {'+'.join(t.signals)}: {problems}")
    lines += ["", "## Fast fault tests (`tests/reliability`)", ""]
    if tests is None:
        lines.append("Not run in this mode (`--no-tests`).")
    else:
        lines += [
            f"`pytest tests/reliability`: {tests_tail}",
            "",
            "| file | fault tried | hypothesis examples | outcome |",
            "|---|---|---|---|",
        ]
        for row in tests:
            examples = "" if row["examples"] is None else str(row["examples"])
            what = row["what"] + (
                "" if "[" not in row["test"] else f" ({row['test'].split('[', 1)[1][:-1]})"
            )
            lines.append(f"| {row['file']} | {what} | {examples} | {row['outcome']} |")
    lines += ["", _FAULTS_TEXT]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------- main


def make_capture(workdir: Path, log: Path) -> Path:
    capture = workdir / "capture"
    if not (capture / "annotations").is_dir():
        cmd = handnerf("synth", "--preset", "tiny", "--seed", "7", "--workers", "1")
        status, _ = run_to_end([*cmd, "--out", str(capture)], log)
        if status != 0:
            raise SystemExit(f"handnerf synth failed (see {log})")
    return capture


def plan(quick: bool, rng: random.Random, per_signal: int = 3) -> dict[str, list[list[str]]]:
    """Signals per trial: quick = one fit trial chaining a SIGTERM and a SIGKILL."""
    if quick:
        return {"fit": [["SIGTERM", "SIGKILL"]], "eval": [], "prepare": []}
    names = list(SIGNALS)
    fit = [[name] for name in names for _ in range(per_signal)]
    fit += [[rng.choice(names) for _ in range(3)] for _ in range(per_signal)]
    eval_trials = [[name] for name in names for _ in range(max(1, per_signal - 1))]
    prepare = [[name] for name in names]
    return {"fit": fit, "eval": eval_trials, "prepare": prepare}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one fit trial with 2 kills")
    parser.add_argument("--capture", type=Path, default=None, help="existing capture root")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "reliability.md")
    parser.add_argument("--json", type=Path, default=None, help="also write raw trial records")
    parser.add_argument("--steps", type=int, default=30, help="fit steps (default 30)")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument(
        "--per-signal", type=int, default=3, help="fit trials per signal (default 3)"
    )
    parser.add_argument("--no-tests", action="store_true", help="skip the fast fault tests")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    # Started in the background, this script may inherit an ignored SIGINT, which its
    # children would keep; a Python-level handler is reset to the default on exec, so the
    # jobs meet SIGINT as they would from a terminal's Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(args.seed)
    workdir = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / "handnerf-reliability"
    marker = workdir / ".handnerf-reliability"
    if workdir.exists() and any(workdir.iterdir()):
        if not marker.is_file():
            print(f"--workdir {workdir} is not empty and not ours; refusing", file=sys.stderr)
            return 1
        shutil.rmtree(workdir)  # a previous run of this script
    workdir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    log = workdir / "jobs.log"
    steps = args.steps
    capture = args.capture or make_capture(workdir, log)

    ref_run = workdir / "reference_run"
    reference = FitReference(fit_cmd(capture, ref_run, steps, resume=False), ref_run, log)
    if not args.quick:
        reference.get()  # its duration spreads the kill times of the untargeted trials
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "seed": args.seed,
        "quick": args.quick,
        "steps": steps,
        "per_signal": args.per_signal,
    }
    trials: list[Trial] = []
    todo = plan(args.quick, rng, args.per_signal)

    def delays(n: int, span: float) -> list[float]:
        return [rng.uniform(0.0, span) for _ in range(n)]

    for i, signals in enumerate(todo["fit"]):
        # every other trial aims at the training loop; the rest anywhere in the job
        in_training = args.quick or i % 2 == 0
        span = TRAINING_KILL_SPAN_S if in_training else reference.seconds
        trial = fit_trial(
            capture,
            workdir / f"fit_{i}",
            steps,
            signals,
            delays(len(signals), span),
            reference.get,
            log,
            in_training=in_training,
        )
        trials.append(trial)
        print(_summary(trial), flush=True)

    if todo["eval"]:
        ref_report = workdir / "reference_report"
        status, eval_seconds = run_to_end(eval_cmd(ref_run, ref_report), log)
        ref_rows, _ = report_numbers(ref_report)
        meta["eval_seconds"] = eval_seconds
        if status != 0 or ref_rows is None:
            print(f"the reference eval failed (see {log})", file=sys.stderr)
            meta.setdefault("notes", []).append("the reference eval failed: no eval trials")
            todo["eval"] = []
        for i, signals in enumerate(todo["eval"]):
            trial = eval_trial(
                ref_run,
                workdir / f"eval_{i}",
                signals,
                delays(len(signals), eval_seconds),
                ref_rows,
                log,
            )
            trials.append(trial)
            print(_summary(trial), flush=True)

    if todo["prepare"] and prepare_available():
        ref_cache = workdir / "reference_prepare"
        status, prep_seconds = run_to_end(prepare_cmd(capture, ref_cache), log)
        if status == 0:
            ref_digest = tree_digest(ref_cache)
            for i, signals in enumerate(todo["prepare"]):
                trial = prepare_trial(
                    capture,
                    workdir / f"prepare_{i}",
                    signals,
                    delays(len(signals), prep_seconds),
                    ref_digest,
                    log,
                )
                trials.append(trial)
                print(_summary(trial), flush=True)
        else:
            print(f"handnerf prepare failed; no prepare trials (see {log})", file=sys.stderr)
            meta.setdefault("notes", []).append("the reference prepare failed: no prepare trials")

    reference.get()
    meta["fit_seconds"] = reference.seconds
    tests, tail = (None, "") if args.no_tests or args.quick else run_fast_tests(workdir)
    write_report(args.report, trials, tests, tail, meta)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "meta": meta,
                    "trials": [asdict(t) | {"survived": t.survived} for t in trials],
                    "tests": tests,
                },
                indent=2,
            )
        )
    ok = all(t.survived for t in trials) and all(
        r["outcome"] in ("passed", "skipped") for r in tests or []
    )
    print(f"report: {args.report}")
    return 0 if ok else 1


def _summary(trial: Trial) -> str:
    kills = ", ".join(f"{k.signal}@{k.delay_s:.1f}s/{k.phase}->{k.exit_code}" for k in trial.kills)
    verdict = "survived" if trial.survived else f"FAILED: {trial.problem}"
    return f"{trial.job} [{kills}] reruns={trial.reruns} {verdict} ({trial.seconds:.0f}s)"


if __name__ == "__main__":
    raise SystemExit(main())
