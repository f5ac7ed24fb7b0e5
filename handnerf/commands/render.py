"""Render a trained avatar to a GIF (or MP4 when imageio-ffmpeg is installed).

Modes:
  orbit  novel views: a camera circles the hand in one training frame (--frame).
  pose   novel poses: the avatar driven by another sequence's MANO parameters
         (default: the run's novel-pose sequence), interpolated to --frames frames, seen
         by a camera that follows the hand (--orbit makes it circle at the same time).

Examples:
  handnerf render --run runs/demo --mode orbit --out orbit.gif --frames 36 --size 192
  handnerf render --run runs/demo --mode pose --seq ROM03_RT_No_Occlusion --out poses.gif
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handnerf.commands.options import add_rendering, add_run_folder

HELP = "render novel views (orbit) or novel poses of a trained avatar to GIF/MP4"


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_folder(parser)
    parser.add_argument("--out", type=Path, required=True, help="output .gif or .mp4")
    parser.add_argument("--mode", choices=("orbit", "pose"), default="orbit")
    parser.add_argument(
        "--frames", type=int, default=36, help="number of video frames (default 36)"
    )
    parser.add_argument(
        "--size", type=int, default=192, help="square image side in px (default 192)"
    )
    parser.add_argument("--fps", type=int, default=12, help="frames per second (default 12)")
    parser.add_argument(
        "--frame",
        type=int,
        default=0,
        help="orbit: index of the training frame to show (default 0)",
    )
    parser.add_argument(
        "--seq",
        default=None,
        help="pose: sequence whose MANO parameters drive the avatar "
        "(default: the run's novel-pose sequence)",
    )
    parser.add_argument("--orbit", action="store_true", help="pose: let the camera circle too")
    add_rendering(parser, chunk=None)


def run(args: argparse.Namespace) -> int:
    from handnerf.errors import ConfigError, SelectionError
    from handnerf.render.jobs import render_orbit, render_pose_sequence
    from handnerf.render.video import write_video
    from handnerf.runs.loader import load_run
    from handnerf.train.fit_data import sequence_mano
    from handnerf.train.fit_hands import mano_length, map_mano

    if args.size < 8:
        raise ConfigError(f"--size must be >= 8, got {args.size}")
    run_ = load_run(args.run, device=args.device)
    data_cfg = run_.cfg.data
    progress = not args.no_progress
    if args.mode == "orbit":
        mano = sequence_mano(run_.data_root, data_cfg, data_cfg.train_seq, data_cfg.stride)
        if not 0 <= args.frame < mano_length(mano):
            raise SelectionError(
                f"--frame {args.frame}: the training sequence has {mano_length(mano)} frames"
            )
        one = map_mano(mano, lambda _, params: params.index(args.frame))
        frames = render_orbit(run_, one, args.frames, args.size, args.chunk, progress)
    else:
        seq = args.seq or data_cfg.novel_pose_seq
        if not seq:
            raise ConfigError("--mode pose needs --seq (the run has no novel-pose sequence)")
        mano = sequence_mano(run_.data_root, data_cfg, seq, 1)
        frames = render_pose_sequence(
            run_, mano, args.frames, args.size, args.orbit, args.chunk, progress
        )
    path = write_video(frames, args.out, fps=args.fps)
    print(f"wrote {len(frames)} frames of {args.size}x{args.size} to {path}")
    return 0
