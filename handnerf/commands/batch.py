"""Fit, evaluate and render many avatars from one plan, on a local or remote Ray cluster.

PLAN.yaml names an InterHand2.6M root, the MANO folder, the entries (explicit
split/capture/sequences/hand, or every capture and sequence of a split matching a
pattern), the evaluation protocol and the fit config with overrides (docs/scale.md).
The whole plan is checked first: a missing root or an unknown sequence stops it before
anything runs, naming the entry. Each entry then runs prepare -> fit -> eval -> render as
Ray tasks; finished stages are skipped, a killed fit resumes from its checkpoint, so
running the same plan again does only what is missing. OUT/summary.html and
summary.json hold a row per entry (PSNR/SSIM/LPIPS per set, times, links).

Needs the ray extra: pip install 'handnerf[ray]'.

Examples:
  handnerf batch plans/test_split.yaml --out batch_out
  ray start --head  # then, on this or another machine of the cluster:
  handnerf batch plans/test_split.yaml --address auto
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handnerf.commands.options import add_no_progress

HELP = "run a plan of many avatars (prepare, fit, eval, render) on Ray; resumable"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("plan", type=Path, help="the plan (YAML)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: the plan's out:)"
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto', HOST:PORT, ray://HOST:10001); default: start a "
        "local Ray for this run",
    )
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs of the local Ray (default: every core); ignored with --address",
    )
    parser.add_argument("--check", action="store_true", help="check the plan, run nothing")
    add_no_progress(parser)


def run(args: argparse.Namespace) -> int:
    from handnerf.batch.plan import load_plan
    from handnerf.errors import ConfigError

    if args.num_cpus is not None and args.num_cpus < 1:
        raise ConfigError(f"--num-cpus must be >= 1, got {args.num_cpus}")
    plan = load_plan(args.plan, out=args.out)
    if args.check:
        from handnerf.batch.runner import check_entry_folders

        check_entry_folders(plan)
        for entry in plan.entries:
            novel = entry.novel_pose_seq or "-"
            print(
                f"{entry.name}: {entry.split} Capture{entry.capture} {entry.hand} "
                f"train {entry.train_seq} novel pose {novel}"
            )
        print(f"plan {args.plan}: {len(plan.entries)} entries, output {plan.out}")
        return 0
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise ConfigError("handnerf batch needs Ray: pip install 'handnerf[ray]'") from exc
    from handnerf.batch.runner import run_plan

    outcome = run_plan(
        plan, address=args.address, num_cpus=args.num_cpus, progress=not args.no_progress
    )
    for item in outcome.outcomes:
        ran = sum(state == "ran" for state in item.stages.values())
        line = f"  {item.entry.name}: {item.status} ({ran} stage(s) run)"
        if item.error:
            line += f": {item.failed_stage}: {item.error}"
        print(line)
    print(f"summary: {outcome.summary_html}")
    return 1 if outcome.failed else 0
