"""Benchmark ``handnerf batch``: a 3-entry plan on a local Ray against the same work in sequence.

Three subjects (a tiny synthetic capture laid out as Capture0..2) are each prepared,
fitted, evaluated and rendered twice on the same cores:

* **batch**: ``run_plan`` on a local Ray of ``--cpus`` CPUs (one CPU per task, so that
  many stages run at once), Ray's start and shutdown included;
* **sequence**: the same stage calls (``handnerf.batch.stages.run_stage``) one after the
  other in this process, torch using ``--cpus`` threads, as a bash loop over the
  commands would (minus each command's interpreter start).

It also times a bare ``ray.init`` + ``ray.shutdown`` and sums the seconds spent inside
the tasks, so Ray's overhead can be told apart from the gain of running entries side by
side.

Usage::

    python tools/bench_batch.py --steps 60 --cpus 2 --out bench_out/batch
    # writes bench_out/batch/bench_batch.json and prints a Markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

STAGES = ("prepare", "fit", "eval", "render")


def plan_dict(root: Path, steps: int) -> dict[str, Any]:
    """A plan of every subject of ``root`` at configs/tiny.yaml's sizes."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    return {
        "interhand": str(root),
        "protocol": {"name": "handnerf-default", "crop_size": 64},
        "prepare": {"crop": "1.3:64", "filters": False},
        "config": str(configs / "tiny.yaml"),
        "overrides": [f"train.steps={steps}", "train.val_every=0", "train.checkpoint_every=50"],
        "eval": {"max_views": 2},
        "render": {"modes": ["orbit", "pose"], "frames": 4, "size": 64, "fps": 4},
        "resources": {stage: {"num_cpus": 1} for stage in STAGES},
        "entries": [{"every": {"split": "test", "sequences": "ROM04_*", "novel_pose": "ROM03_*"}}],
    }


def make_root(work: Path, seed: int) -> Path:
    from handnerf.synth.presets import get_preset
    from handnerf.synth.subjects import replicate_captures
    from handnerf.synth.writer import synthesize_capture

    root = work / "three_subjects"
    if not (root / "synth.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        synthesize_capture(root, get_preset("tiny"), seed=seed, workers=1)
        replicate_captures(root, 3)
    return root


def task_seconds(out: Path) -> float:
    return sum(json.loads(p.read_text())["seconds"] for p in out.glob("entries/*/done/*.json"))


def stage_seconds(out: Path) -> dict[str, float]:
    """Seconds inside each stage, summed over the entries."""
    totals = dict.fromkeys(STAGES, 0.0)
    for path in out.glob("entries/*/done/*.json"):
        marker = json.loads(path.read_text())
        totals[marker["stage"]] += marker["seconds"]
    return totals


def bench(
    work: Path, steps: int, cpus: int, seed: int, sequence_threads: list[int]
) -> dict[str, Any]:
    import ray
    import torch
    import yaml

    from handnerf.batch.plan import load_plan
    from handnerf.batch.runner import run_plan
    from handnerf.batch.stages import run_stage
    from handnerf.files import machine_info

    root = make_root(work, seed)
    plan_path = work / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan_dict(root, steps), sort_keys=False))
    shutil.rmtree(work / "batch", ignore_errors=True)

    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.shutdown()
    ray_start_stop = time.perf_counter() - t0

    t0 = time.perf_counter()
    outcome = run_plan(load_plan(plan_path, out=work / "batch"), num_cpus=cpus, progress=False)
    batch_wall = time.perf_counter() - t0
    if outcome.failed:
        raise SystemExit(f"batch failed: {[o.error for o in outcome.failed]}")

    sequence: dict[str, Any] = {}
    for threads in sequence_threads:
        out = work / f"sequence_{threads}"
        shutil.rmtree(out, ignore_errors=True)
        plan = load_plan(plan_path, out=out)
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        for entry in plan.entries:
            for stage in STAGES:
                result = run_stage(plan, entry, stage, "cpu", threads)
                if result["status"] != "done":
                    raise SystemExit(f"{entry.name}/{stage}: {result['error']}")
        sequence[str(threads)] = {
            "wall_s": time.perf_counter() - t0,
            "task_s": task_seconds(out),
            "stages": stage_seconds(out),
        }

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit,
        "entries": len(plan.entries),
        "steps": steps,
        "cpus": cpus,
        "batch_wall_s": batch_wall,
        "batch_task_s": task_seconds(work / "batch"),
        "batch_stages": stage_seconds(work / "batch"),
        "sequence_by_threads": sequence,
        "ray_start_stop_s": ray_start_stop,
        "load_average": os.getloadavg(),
        "machine": machine_info(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/batch"))
    parser.add_argument("--steps", type=int, default=60, help="fit steps per entry")
    parser.add_argument("--cpus", type=int, default=2, help="cores for both runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sequence-threads",
        default="1,2",
        help="torch threads of the sequential runs (comma-separated; default 1,2)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HANDNERF_CACHE", str((args.out / "cache").resolve()))
    threads = [int(t) for t in args.sequence_threads.split(",")]
    result = bench(args.out.resolve(), args.steps, args.cpus, args.seed, threads)
    (args.out / "bench_batch.json").write_text(json.dumps(result, indent=2))
    print("| run | wall s | seconds inside stages (prepare/fit/eval/render) |\n|---|---|---|")
    rows = [
        (f"batch (local Ray, {args.cpus} CPUs)", result["batch_wall_s"], result["batch_stages"])
    ]
    for n, seq in result["sequence_by_threads"].items():
        rows.append((f"sequence (one process, {n} thread(s))", seq["wall_s"], seq["stages"]))
    for label, wall, stages in rows:
        split = " / ".join(f"{stages[s]:.1f}" for s in STAGES)
        print(f"| {label} | {wall:.1f} | {sum(stages.values()):.1f} ({split}) |")
    print(f"bare ray.init + shutdown: {result['ray_start_stop_s']:.1f} s")
    print(f"load average after the runs: {result['load_average']}")


if __name__ == "__main__":
    main()
