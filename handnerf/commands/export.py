"""Write a fit's refined MANO parameters in ``MANO_NeuralAnnot.json``'s schema.

A fit with ``train.refine_pose=true`` corrects the given MANO fits (InterHand2.6M's are
NeuralAnnot fits, off by millimetres) per frame, with one subject shape. This writes the
refined parameters of its training frames for other tools, ``{capture: {frame: {hand:
{pose, shape, trans}, other hand: null}}}``.

Example:
  handnerf export --run runs/demo                      # -> runs/demo/refined_MANO_NeuralAnnot.json
  handnerf export --run runs/demo --out refined.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handnerf.commands.options import add_run_folder

HELP = "write a fit's refined MANO parameters (train.refine_pose) as MANO_NeuralAnnot.json"


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_folder(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output JSON (default: RUN/refined_MANO_NeuralAnnot.json)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint to read (default: RUN/checkpoints/latest.pt)",
    )


def run(args: argparse.Namespace) -> int:
    from handnerf.train.mano_export import export_refined_mano

    summary = export_refined_mano(args.run, args.out, args.checkpoint)
    print(
        f"wrote {summary.path}: refined MANO of {summary.n_frames} frames "
        f"({', '.join(summary.sequences)}), capture {summary.capture}, {summary.hand} hand"
    )
    return 0
