"""Benchmark data-parallel fits on the CPU: 1 vs N gloo ranks, the global batch fixed.

For each rank count W in ``--ranks`` it runs ``torchrun --nproc_per_node=W -m handnerf
fit`` on the same capture and config (``train.batch_rays`` is the global batch, so every
run draws the same rays), each rank with ``--cores / W`` threads (``OMP_NUM_THREADS``) so
every run uses the same cores, and reads the fit's own ``metrics.jsonl``: steps/s between
the first logged step after ``--warmup`` and the last (start-up, data loading and the
final validation excluded). Reports steps/s, rays/s, the speed-up over the first rank
count and the bytes one step's gradient all-reduce carries. Prints JSON and a Markdown
table; ``--out PATH`` writes both (``PATH`` and ``PATH`` with ``.md``).

    python tools/bench_ddp.py --ranks 1 2 --cores 2 --steps 60 --batch-rays 2048

Without ``--data`` the ``--preset`` capture is synthesised once into
``$HANDNERF_CACHE/bench/<preset>-seed<seed>`` (shared with tools/bench.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def capture_root(data: Path | None, preset: str, seed: int) -> Path:
    """``data``, or the preset's synthetic capture cached where tools/bench.py keeps it."""
    from handnerf.errors import DataError
    from handnerf.files import cache_root

    if data is not None:
        if not data.is_dir():
            raise DataError(f"--data {data}: no such folder (an InterHand2.6M-layout root)")
        return data
    from handnerf.synth.presets import get_preset
    from handnerf.synth.writer import synthesize_capture

    root = cache_root() / "bench" / f"{preset}-seed{seed}"
    if not (root / "synth.json").is_file():  # written last: a complete capture
        print(f"synthesising the {preset} capture into {root} (once)", file=sys.stderr)
        synthesize_capture(root, get_preset(preset), seed=seed)
    return root


def fit_command(world: int, data: Path, out: Path, config: Path, overrides: list[str]) -> list[str]:
    """torchrun on one node, its rendezvous on 127.0.0.1."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={world}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        f"--rdzv-id={uuid.uuid4().hex}",
        "-m",
        "handnerf",
        "fit",
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        str(config),
        "--no-progress",
        *overrides,
    ]


def steps_per_second(metrics: Path, warmup: int) -> tuple[float, int]:
    """(steps/s, steps timed) from the fit's logged records after ``warmup`` steps."""
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    timed = [r for r in records if "time" in r and r["step"] >= warmup]
    if len(timed) < 2:
        raise SystemExit(f"{metrics}: fewer than 2 logged steps after --warmup {warmup}")
    first, last = timed[0], timed[-1]
    steps = int(last["step"] - first["step"])
    return steps / (last["time"] - first["time"]), steps


def gradient_bytes(checkpoint: Path) -> int:
    """Bytes of the learnt field (what each step's all-reduce averages)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return sum(
        int(t.numel() * t.element_size())
        for name, t in state["model"].items()
        if name.startswith("field.") and name != "field.aabb"
    )


def run_one(world: int, args: argparse.Namespace, data: Path, scratch: Path) -> dict[str, Any]:
    out = scratch / f"ranks{world}"
    overrides = [
        f"train.steps={args.steps}",
        f"train.batch_rays={args.batch_rays}",
        f"train.log_every={args.log_every}",
        "train.val_every=0",
        "train.val_views=1",
        "train.checkpoint_every=0",
        "train.device=cpu",
        *args.set,
    ]
    threads = max(1, args.cores // world)
    env = os.environ | {
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": str(REPO),
        "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo"),
    }
    cmd = fit_command(world, data, out, args.config, overrides)
    print(f"ranks={world}: {' '.join(cmd)}", file=sys.stderr)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"ranks={world} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    rate, steps = steps_per_second(out / "metrics.jsonl", args.warmup)
    return {
        "ranks": world,
        "threads_per_rank": threads,
        "steps_per_s": rate,
        "rays_per_s": rate * args.batch_rays,
        "steps_timed": steps,
        "allreduce_bytes_per_step": gradient_bytes(out / "checkpoints" / "latest.pt"),
    }


def run_bench(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    from handnerf.files import machine_info

    data = capture_root(args.data, args.preset, args.seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as scratch:
        rows = [run_one(world, args, data, Path(scratch)) for world in args.ranks]
    for row in rows:
        row["speedup"] = row["steps_per_s"] / rows[0]["steps_per_s"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python tools/bench_ddp.py " + " ".join(argv),
        "commit": commit,
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "data": str(data),
        "config": str(args.config),
        "global_batch_rays": args.batch_rays,
        "rows": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['date']}, commit {report['commit']}, `{report['command']}`, "
        f"global batch {report['global_batch_rays']} rays, load average before/after "
        f"{report['load_average_before'][0]:.1f} / {report['load_average_after'][0]:.1f}",
        "",
        "| ranks | threads/rank | steps/s | rays/s | speed-up | all-reduce per step |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['ranks']} | {row['threads_per_rank']} | {row['steps_per_s']:.2f} | "
            f"{row['rays_per_s']:.0f} | {row['speedup']:.2f}x | "
            f"{row['allreduce_bytes_per_step'] / 1e6:.2f} MB |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", type=Path, default=None, help="capture root (default: preset)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--batch-rays", type=int, default=2048, help="global batch")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    report = run_bench(args, argv)
    text = markdown(report)
    print(json.dumps(report, indent=2))
    print(text)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
