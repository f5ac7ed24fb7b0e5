"""Fit a per-subject hand avatar to a multi-view capture.

Reads an InterHand2.6M root (real, or written by 'handnerf synth'), fits the avatar to the
training cameras of the training sequence (and of data.extra_train_seqs, if any), and
writes RUN/: config.yaml, run.json, metrics.jsonl, checkpoints/latest.pt and validation
renders. Ctrl-C or SIGTERM finishes the current step and saves a checkpoint; '--resume'
continues from it with the same config.

Under torchrun the fit is data-parallel: each of N processes renders 1/N of every
batch (train.batch_rays stays the global batch), gradients are averaged, and rank 0
alone writes the run folder (gloo on CPUs, nccl on GPUs; see docs/scale.md).

Examples:
  handnerf fit --data demo_out/capture --config configs/demo.yaml --out runs/demo
  handnerf fit --data ROOT --config configs/interhand.yaml --out runs/s0 train.steps=20000
  handnerf fit --data ROOT --out runs/s0 --resume
  handnerf fit --data HANDS --config configs/demo_hands.yaml --out runs/dh \\
      'data.extra_train_seqs=[0266_dh_palms_touch,0268_dh_occlusion,0269_dh_clap]'
  torchrun --nproc_per_node=4 -m handnerf fit --data ROOT --out runs/s0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handnerf.commands.mano_option import add_mano_dir
from handnerf.commands.options import add_no_progress

HELP = "fit a per-subject avatar to a capture (resumable)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="InterHand2.6M root folder")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue RUN/checkpoints/latest.pt")
    add_mano_dir(parser)
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log to Weights & Biases (set WANDB_MODE=offline to log locally)",
    )
    add_no_progress(parser)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. train.steps=3000 data.crop_size=192",
    )


def run(args: argparse.Namespace) -> int:
    from handnerf.train.distributed import is_main_process
    from handnerf.train.fit_job import run_fit

    overrides = list(args.overrides)
    if args.mano_dir is not None:
        overrides.append(f"data.mano_dir={args.mano_dir}")
    result = run_fit(
        data_root=args.data,
        out_dir=args.out,
        config_path=args.config,
        overrides=overrides,
        resume=args.resume,
        use_wandb=args.wandb,
        progress=not args.no_progress,
    )
    if is_main_process():  # under torchrun, one report
        print(f"fit {result.stopped_by} at step {result.step}")
        print(f"checkpoint: {result.checkpoint}")
        print(f"metrics:    {result.metrics}")
    return 0 if result.stopped_by != "signal" else 130
