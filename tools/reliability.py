"""Fault-injection harness: kill real jobs in named phases, finish them, compare with clean runs.

Kills follow progress, not the clock. Each job runs with ``HANDNERF_PROGRESS_FILE`` and
``HANDNERF_HOLD_AT`` (see ``handnerf/interrupts.py``): it waits at the chosen progress point
(``start``, ``fit.step=12``, ``write=latest.pt``, ``exit``...) until the harness signals it,
so every planned kill lands in its phase however fast or slow the machine is. A job that
ends without reaching its point is a harness failure ("missed"), never silently skipped.

1. Writes a ``tiny`` synthetic capture (or uses ``--capture``) and runs every job once
   without interruption: the references (fit, eval, prepare, render).
2. Trials: one job's life with a chain of kills, one per phase, SIGTERM / SIGINT / SIGKILL
   in rotation. After each kill it checks the exit status (130 for a graceful signal,
   -9 for SIGKILL) and that every file left is complete or absent (checkpoints load, JSON
   parses, images decode, no temp file after a graceful stop; a fit stopped in training
   saved the step it was on). Then the job is run to the end (``--resume`` for a fit) and
   must equal its reference: same weights and logged losses, same report numbers, same
   cache files, same video frames, no temp file left.
3. Runs the fast fault tests (``tests/reliability``) and writes ``docs/reliability.md``.

Usage::

    .venv/bin/python tools/reliability.py                    # full: 100+ kills, ~10 min
    .venv/bin/python tools/reliability.py --quick --report /tmp/r.md   # 3 kills, < 1 min

Exit status 0 when every planned kill was delivered and survived and every test passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from reliability_report import run_fast_tests, write_report  # noqa: E402

from handnerf.config import overrides_from_yaml  # noqa: E402
from handnerf.interrupts import HOLD_ENV, PROGRESS_ENV  # noqa: E402

FIT_STEPS = 30
#: A fit small enough to run many times on a laptop CPU.
FIT_OVERRIDES: list[str] = [
    *overrides_from_yaml(REPO / "configs" / "tiny.yaml"),
    "train.val_every=0",
    "train.val_views=1",
    "train.log_every=2",
    "train.checkpoint_every=3",
    "train.device=cpu",
    f"train.steps={FIT_STEPS}",
]
EVAL_ARGS = ["--max-views", "2", "--device", "cpu", "--chunk", "4096", "--no-progress"]
PREPARE_ARGS = ["--seq", "ROM04_RT_Occlusion", "--crop", "1.3:48", "--workers", "1"]
RENDER_ARGS = ["--mode", "orbit", "--frames", "4", "--size", "48", "--device", "cpu"]
SIGNALS: dict[str, int] = {
    "SIGTERM": signal.SIGTERM,
    "SIGINT": signal.SIGINT,
    "SIGKILL": signal.SIGKILL,
}
#: Largest weight difference between a resumed and an uninterrupted fit that counts as
#: equal (every job runs single-threaded, so in practice the difference is 0).
WEIGHT_TOLERANCE = 1e-4
LOSS_TOLERANCE = 1e-4
JOB_TIMEOUT_S = 300.0


@dataclass
class Kill:
    """One signal sent to a job held at a progress point."""

    signal: str
    phase: str
    point: str  # the HANDNERF_HOLD_AT spec
    exit_code: int
    on_disk: str
    ok: bool
    problem: str = ""


@dataclass
class Trial:
    """One job's life: a chain of kills, then a run to the end compared with the reference."""

    job: str  # fit | eval | prepare | render
    name: str
    plan: list[tuple[str, str]]  # (signal, phase) in order
    kills: list[Kill] = field(default_factory=list)
    missed: int = 0  # planned kills whose point the job never reached
    equivalent: bool = False
    max_weight_diff: float | None = None
    problem: str = ""
    seconds: float = 0.0

    @property
    def survived(self) -> bool:
        return (
            len(self.kills) == len(self.plan)
            and not self.missed
            and self.equivalent
            and all(k.ok for k in self.kills)
        )


def child_env(progress: Path | None = None, hold: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (PROGRESS_ENV, HOLD_ENV)}
    # one thread: the same float results in the reference and every resumed run
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if progress is not None and hold is not None:
        env.update({PROGRESS_ENV: str(progress), HOLD_ENV: hold})
    return env


def handnerf(*args: str) -> list[str]:
    return [sys.executable, "-m", "handnerf.cli", *args]


def run_to_end(cmd: list[str], log: Path) -> int:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), timeout=JOB_TIMEOUT_S
        ).returncode


def run_and_kill(cmd: list[str], sig: int, hold: str, log: Path) -> int | None:
    """Start ``cmd`` held at ``hold``; signal it there. Exit status, or None if it never got there."""
    progress = log.with_name(f"{log.stem}.progress")
    progress.unlink(missing_ok=True)
    with open(log, "a") as out:
        out.write(f"$ {HOLD_ENV}={hold} {' '.join(cmd)}  # {signal.Signals(sig).name}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(progress, hold)
        )
        try:
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while not _holding(progress):
                if proc.poll() is not None or time.monotonic() > deadline:
                    return None
                time.sleep(0.01)
            proc.send_signal(sig)
            return proc.wait(timeout=JOB_TIMEOUT_S)
        finally:
            if proc.poll() is None:  # hung, or the harness itself was interrupted
                proc.kill()
                proc.wait()


def _holding(progress: Path) -> bool:
    try:
        return any(line.startswith("hold ") for line in progress.read_text().splitlines())
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- file checks


def check_files(folder: Path, sig: str) -> tuple[str, list[str]]:
    """Every file under ``folder`` complete (loads, parses, decodes); temp files only after
    SIGKILL. Returns a summary of what is there and the problems found."""
    import imageio.v3 as iio
    import yaml

    from handnerf.errors import CheckpointError
    from handnerf.train.checkpoint import load_checkpoint

    problems, counts = [], {"files": 0, "temp": 0}
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if not path.is_file():
            continue
        rel = path.relative_to(folder)
        if path.name.startswith(".") and ".tmp" in path.suffixes:
            counts["temp"] += 1
            if sig != "SIGKILL":
                problems.append(f"temp file left after {sig}: {rel}")
            continue
        counts["files"] += 1
        try:
            if path.suffix == ".pt":
                load_checkpoint(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".yaml":
                yaml.safe_load(path.read_text())
            elif path.suffix in (".png", ".gif"):
                iio.imread(path, index=None)
            elif path.suffix == ".jsonl":
                lines = path.read_text().splitlines()
                # a SIGKILL can cut the last record (the resume trims it); nothing else can
                for line in lines if sig != "SIGKILL" else lines[:-1]:
                    json.loads(line)
        except (CheckpointError, OSError, ValueError, yaml.YAMLError) as exc:
            problems.append(f"{rel} is not complete: {type(exc).__name__}: {exc}"[:300])
    return f"{counts['files']} files, {counts['temp']} temp", problems


# --------------------------------------------------------------------------- jobs


class Job:
    """A command whose phases the harness can aim at; subclasses say how."""

    name = ""
    #: phase -> progress point; a callable gets the job to pick one from the disk state.
    phases: ClassVar[dict[str, Any]] = {}

    def __init__(self, workdir: Path, capture: Path, ref_run: Path) -> None:
        self.workdir, self.capture, self.ref_run = workdir, capture, ref_run
        self.out = workdir / "out"

    def command(self) -> list[str]:
        raise NotImplementedError

    def hold(self, phase: str) -> str:
        point = self.phases[phase]
        return point(self) if callable(point) else point

    def after_kill(self, sig: str, phase: str) -> list[str]:
        """Job-specific checks after a kill (beyond :func:`check_files`)."""
        return []

    def finish(self, log: Path) -> int:
        return run_to_end(self.command(), log)

    def result(self) -> Any:
        raise NotImplementedError

    def compare(self, result: Any, reference: Any, trial: Trial) -> list[str]:
        return [] if result == reference else [f"{self.name} result differs from the reference"]


class FitJob(Job):
    name = "fit"
    phases: ClassVar[dict[str, Any]] = {
        "startup": "start",
        "run setup": "write=run.json",
        "first steps": lambda job: f"fit.step={max(job.checkpoint_step(), 0) + 1}",
        "mid-training": lambda job: f"fit.step={job.mid_step()}",
        "checkpoint write": "write=latest.pt",
        "final validation": "fit.final_validation",
        "teardown": "exit",
    }

    def __init__(self, workdir: Path, capture: Path, ref_run: Path, rng: random.Random) -> None:
        super().__init__(workdir, capture, ref_run)
        self.rng = rng

    def command(self) -> list[str]:
        resume = ["--resume"] if self.checkpoint_step() >= 0 else []
        args = ["fit", "--data", str(self.capture), "--out", str(self.out), "--no-progress"]
        return handnerf(*args, *resume, *FIT_OVERRIDES)

    def checkpoint_step(self) -> int:
        """Step of the checkpoint on disk, -1 when there is none (or it does not load)."""
        from handnerf.errors import CheckpointError
        from handnerf.train.checkpoint import LATEST, load_checkpoint

        try:
            return int(load_checkpoint(self.out / "checkpoints" / LATEST)["step"])
        except CheckpointError:
            return -1

    def mid_step(self) -> int:
        start = max(self.checkpoint_step(), 0)
        return min(FIT_STEPS, start + self.rng.randint(2, 12))

    def after_kill(self, sig: str, phase: str) -> list[str]:
        if sig == "SIGKILL" or phase not in ("first steps", "mid-training", "checkpoint write"):
            return []
        # a graceful stop in training finishes the step in flight and saves it
        logged = [s for s, _ in logged_steps(self.out)]
        step = self.checkpoint_step()
        if logged and step < max(logged):
            return [f"checkpoint step {step} behind the last logged step {max(logged)}"]
        return []

    def finish(self, log: Path) -> int:
        status = 0
        while not _finished(self.out):
            status = run_to_end(self.command(), log)
            if status != 0:
                break
        return status

    def result(self) -> dict[str, Any]:
        from handnerf.train.checkpoint import LATEST, load_checkpoint

        state = load_checkpoint(self.out / "checkpoints" / LATEST)
        return {"step": state["step"], "model": state["model"], "logged": logged_steps(self.out)}

    def compare(self, result: Any, reference: Any, trial: Trial) -> list[str]:
        import torch

        problems = []
        if result["step"] != reference["step"]:
            problems.append(f"final step {result['step']} != {reference['step']}")
        diffs = [
            float((value.float() - reference["model"][key].float()).abs().max())
            for key, value in result["model"].items()
            if torch.is_tensor(value) and value.is_floating_point() and value.numel()
        ]
        trial.max_weight_diff = max(diffs, default=0.0)
        if trial.max_weight_diff > WEIGHT_TOLERANCE:
            problems.append(f"weights differ from the reference by {trial.max_weight_diff:.2e}")
        got, want = result["logged"], reference["logged"]
        if [s for s, _ in got] != [s for s, _ in want]:
            problems.append(f"logged steps {[s for s, _ in got]} != {[s for s, _ in want]}")
        elif any(
            abs(a - b) > LOSS_TOLERANCE * max(1.0, abs(b))
            for (_, a), (_, b) in zip(got, want, strict=True)
        ):
            problems.append("logged losses differ from the reference")
        return problems


def logged_steps(run: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training record in metrics.jsonl, in order."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(int(r["step"]), float(r["loss"])) for r in records if "loss" in r]


def _finished(run: Path) -> bool:
    path = run / "metrics.jsonl"
    return path.is_file() and '"final": true' in path.read_text()


class EvalJob(Job):
    name = "eval"
    phases: ClassVar[dict[str, Any]] = {
        "startup": "start",
        "mid-render": "eval.image=2",
        "image write": "write=*_render.png",
        "report write": "write=report.json",
        "teardown": "exit",
    }

    def command(self) -> list[str]:
        return handnerf("eval", "--run", str(self.ref_run), "--out", str(self.out), *EVAL_ARGS)

    def result(self) -> list[tuple[Any, ...]]:
        report = json.loads((self.out / "report.json").read_text())
        return [
            (r["split"], r["camera"], r["frame"], r["psnr"], r["ssim"], r["lpips"])
            for r in report["images"]
        ]

    def compare(self, result: Any, reference: Any, trial: Trial) -> list[str]:
        same = len(result) == len(reference) and all(
            a[:3] == b[:3]
            and all(
                (x is None) == (y is None) and (x is None or abs(x - y) <= 1e-6)
                for x, y in zip(a[3:], b[3:], strict=True)
            )
            for a, b in zip(result, reference, strict=True)
        )
        return [] if same else ["the re-run's metrics differ from the reference report"]


class PrepareJob(Job):
    name = "prepare"
    phases: ClassVar[dict[str, Any]] = {
        "startup": "start",
        "mid-cache": lambda job: f"prepare.view={job.views_done() + 2}",
        "view write": "write=*.png",
        "index write": "write=index.json",
        "teardown": "exit",
    }

    def command(self) -> list[str]:
        args = ["prepare", "--interhand", str(self.capture), "--out", str(self.out)]
        return handnerf(*args, *PREPARE_ARGS, "--no-progress")

    def views_done(self) -> int:
        return len(list((self.out / "views").rglob("*.json")))

    def result(self) -> dict[str, str]:
        import hashlib

        # index.json records timings and dates; compare its views, not its bytes
        digest = {
            str(p.relative_to(self.out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(self.out.rglob("*"))
            if p.is_file() and p.name != "index.json"
        }
        index = json.loads((self.out / "index.json").read_text())
        return digest | {"index.json views": json.dumps(index["views"], sort_keys=True)}


class RenderJob(Job):
    name = "render"
    phases: ClassVar[dict[str, Any]] = {
        "startup": "start",
        "mid-frames": "render.frame=2",
        "video write": "write=orbit.gif",
        "teardown": "exit",
    }

    def command(self) -> list[str]:
        out = str(self.out / "orbit.gif")
        return handnerf("render", "--run", str(self.ref_run), *RENDER_ARGS, "--out", out)

    def result(self) -> Any:
        import imageio.v3 as iio

        return iio.imread(self.out / "orbit.gif", index=None)

    def compare(self, result: Any, reference: Any, trial: Trial) -> list[str]:
        import numpy as np

        if result.shape != reference.shape:
            return [f"video of shape {result.shape} != {reference.shape}"]
        worst = int(np.abs(result.astype(int) - reference.astype(int)).max())
        return [] if worst <= 1 else [f"video frames differ by up to {worst} levels"]


# --------------------------------------------------------------------------- trials


def run_trial(job: Job, trial: Trial, reference: Any) -> Trial:
    """Deliver ``trial.plan``'s kills to ``job`` in order, finish it, compare."""
    start = time.monotonic()
    log = job.workdir / "jobs.log"
    for sig, phase in trial.plan:
        hold = job.hold(phase)
        status = run_and_kill(job.command(), SIGNALS[sig], hold, log)
        if status is None:
            trial.missed += 1
            trial.problem = f"{phase}: the job ended without reaching {hold} (see {log})"
            continue
        on_disk, problems = check_files(job.out, sig)
        expected = -signal.SIGKILL if sig == "SIGKILL" else 130
        if status != expected:
            problems.insert(0, f"exit status {status}, expected {expected}")
        problems += job.after_kill(sig, phase)
        kill = Kill(sig, phase, hold, status, on_disk, not problems, "; ".join(problems))
        trial.kills.append(kill)
    status = job.finish(log)
    if status != 0:
        differences = [f"the run to the end exited with {status} (see {log})"]
    else:
        differences = job.compare(job.result(), reference, trial)
        differences += check_files(job.out, "the run to the end")[1]
    trial.equivalent = not differences
    trial.problem = "; ".join([trial.problem, *differences] if trial.problem else differences)
    trial.seconds = time.monotonic() - start
    return trial


JOBS: dict[str, type[Job]] = {
    "fit": FitJob,
    "eval": EvalJob,
    "prepare": PrepareJob,
    "render": RenderJob,
}


def plan(quick: bool, chains: dict[str, int]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(job, [(signal, phase), ...]) per trial: every phase once per chain, signals rotated
    so that each phase meets each signal across chains."""
    if quick:
        return [
            (
                "fit",
                [
                    ("SIGTERM", "mid-training"),
                    ("SIGKILL", "checkpoint write"),
                    ("SIGINT", "final validation"),
                ],
            )
        ]
    names = list(SIGNALS)
    trials = []
    for job, n in chains.items():
        for c in range(n):
            phases = list(JOBS[job].phases)
            trials.append((job, [(names[(c + i) % 3], p) for i, p in enumerate(phases)]))
    return trials


def make_capture(workdir: Path, log: Path) -> Path:
    capture = workdir / "capture"
    cmd = handnerf("synth", "--preset", "tiny", "--seed", "7", "--workers", "1")
    if run_to_end([*cmd, "--out", str(capture)], log) != 0:
        raise SystemExit(f"handnerf synth failed (see {log})")
    return capture


def make_job(kind: str, folder: Path, capture: Path, ref_run: Path, seed: int) -> Job:
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "fit":
        return FitJob(folder, capture, ref_run, random.Random(seed))
    return JOBS[kind](folder, capture, ref_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one fit trial with 3 kills")
    parser.add_argument("--capture", type=Path, default=None, help="existing capture root")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "reliability.md")
    parser.add_argument("--json", type=Path, default=None, help="also write raw trial records")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="trials run at a time")
    parser.add_argument("--no-tests", action="store_true", help="skip the fast fault tests")
    for kind, n in (("fit", 9), ("eval", 3), ("prepare", 3), ("render", 3)):
        parser.add_argument(f"--{kind}-chains", type=int, default=n, help=f"default {n}")
    args = parser.parse_args(argv)
    # Started in the background, this script may inherit an ignored SIGINT, which its
    # children would keep; a Python-level handler is reset to the default on exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
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
    capture = args.capture or make_capture(workdir, log)
    todo = plan(args.quick, {k: getattr(args, f"{k}_chains") for k in JOBS})

    # References: each job kind in the plan, run once without interruption.
    ref_run = workdir / "reference_fit" / "out"
    references: dict[str, Any] = {}
    for kind in ["fit"] + [k for k in JOBS if k != "fit" and any(j == k for j, _ in todo)]:
        job = make_job(kind, workdir / f"reference_{kind}", capture, ref_run, args.seed)
        if job.finish(job.workdir / "jobs.log") != 0:
            raise SystemExit(f"the reference {kind} failed (see {job.workdir / 'jobs.log'})")
        references[kind] = job.result()

    trials = [
        Trial(job=kind, name=f"{kind}_{i}", plan=chain) for i, (kind, chain) in enumerate(todo)
    ]

    def one(trial: Trial) -> Trial:
        job = make_job(
            trial.job, workdir / trial.name, capture, ref_run, args.seed + len(trial.name)
        )
        done = run_trial(job, trial, references[trial.job])
        print(_summary(done), flush=True)
        return done

    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        trials = list(pool.map(one, trials))

    tests, tail = (
        (None, "") if args.no_tests or args.quick else run_fast_tests(workdir, child_env())
    )
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "seed": args.seed,
        "quick": args.quick,
        "workers": args.workers,
        "steps": FIT_STEPS,
        "weight_tolerance": WEIGHT_TOLERANCE,
        "wall_seconds": time.monotonic() - t0,
    }
    records = [asdict(t) | {"survived": t.survived} for t in trials]
    write_report(args.report, records, tests, tail, meta)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"meta": meta, "trials": records, "tests": tests}, indent=2)
        )
    ok = all(t.survived for t in trials) and all(
        r["outcome"] in ("passed", "skipped") for r in tests or []
    )
    kills = sum(len(t.kills) for t in trials)
    print(f"{kills} kills, {sum(t.missed for t in trials)} missed; report: {args.report}")
    return 0 if ok else 1


def _summary(trial: Trial) -> str:
    kills = ", ".join(f"{k.signal}@{k.phase}->{k.exit_code}" for k in trial.kills)
    verdict = "survived" if trial.survived else f"FAILED: {trial.problem}"
    problems = [f"{k.phase}: {k.problem}" for k in trial.kills if k.problem]
    return f"{trial.name} [{kills}] {verdict} {problems or ''} ({trial.seconds:.0f}s)"


if __name__ == "__main__":
    raise SystemExit(main())
