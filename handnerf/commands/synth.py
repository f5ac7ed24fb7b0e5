"""Render a license-free synthetic capture in InterHand2.6M's exact on-disk format.

A procedural (or your own MANO) hand with a skin texture is posed through a training
sequence (ROM04_RT_Occlusion) and a novel-pose sequence (ROM03_RT_No_Occlusion), and ray
cast from a dome of calibrated cameras with a light fixed in the world. The output folder
reads like an InterHand2.6M root (images/, annotations/ with data, camera, joint_3d and
MANO_NeuralAnnot JSONs), plus ground-truth masks under gt_masks/ and synth.json.

Presets: tiny (unit tests, seconds), demo (a CPU fit of a few minutes), fullscale
(~100 cameras, hundreds of frames; for GPU benchmarks, render with --workers). demo and
fullscale also imitate a real rig's flaws: a few cameras see the hand cut by the image
border, and each camera has its own white balance (recorded in synth.json).

--hand both writes two interacting hands instead, in InterHand's _dh_ sequences (palms
touching, interlocked fingers, one hand occluding the other, a clap, and a novel-pose
sequence; see handnerf.synth.two_hands).

Example:
  handnerf synth --out demo_out/capture --preset demo --seed 0
  handnerf synth --out demo_out/two_hands --preset demo --hand both
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handnerf.commands.options import add_hand, add_procedural_resolution

HELP = "render a synthetic capture in InterHand2.6M format (images, annotations, masks)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="capture root to write")
    parser.add_argument(
        "--preset",
        default="demo",
        choices=("tiny", "demo", "fullscale"),
        help="capture size (default: demo)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_hand(
        parser,
        "the captured hand; 'both': two interacting hands in _dh_ sequences "
        "(default: the preset's, right)",
    )
    parser.add_argument(
        "--mano-dir",
        type=Path,
        default=None,
        help="folder with MANO_RIGHT.pkl / MANO_LEFT.pkl (default: the procedural hand)",
    )
    add_procedural_resolution(
        parser,
        "--procedural-hand",
        "without --mano-dir: the procedural hand at MANO's resolution ('mano', the "
        "default: 778 vertices, pose correctives) or the 'dense' one (3.6k vertices); fit "
        "with the same data.procedural_hand",
    )
    parser.add_argument(
        "--mano-noise",
        default=None,
        metavar="DEG,MM",
        help="write MANO fits with Gaussian errors (DEG degrees per axis-angle component, MM "
        "mm per translation component; seeded) while rendering from the exact ones, which "
        "go to exact_mano.json (default: the preset's: 2,2 for demo, 0,0 for the others; "
        "--hand both always writes exact fits)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="render processes (default: the preset's; 1 renders in this process)",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from handnerf.errors import ConfigError
    from handnerf.synth.presets import get_preset
    from handnerf.synth.two_hands import plan_two_hand_frames
    from handnerf.synth.writer import plan_frames, synthesize_capture

    preset = get_preset(args.preset)
    both = args.hand == "both"
    if args.hand in ("right", "left"):
        preset = preset.with_overrides(side=args.hand)
    if args.mano_noise is not None:
        try:
            deg, mm = (float(x) for x in args.mano_noise.split(","))
        except ValueError:
            raise ConfigError(
                f"--mano-noise must be DEG,MM (two numbers), got {args.mano_noise!r}"
            ) from None
        preset = preset.with_overrides(mano_noise_deg=deg, mano_noise_mm=mm)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if both and args.mano_noise is not None:
        raise ConfigError("--mano-noise is not supported with --hand both")
    if both and (preset.mano_noise_deg > 0 or preset.mano_noise_mm > 0):
        # Pose refinement is one-hand only: a two-hand capture gets the exact fits.
        print(f"synth: --hand both writes exact MANO fits (preset {preset.name!r} has errors)")
        preset = preset.with_overrides(mano_noise_deg=0.0, mano_noise_mm=0.0)
    n_frames = len(plan_two_hand_frames(preset) if both else plan_frames(preset))
    with tqdm(total=preset.n_cameras * n_frames, unit="img", desc=f"synth {preset.name}") as bar:
        summary = synthesize_capture(
            args.out,
            preset,
            seed=args.seed,
            mano_dir=args.mano_dir,
            procedural=args.procedural_hand,
            workers=args.workers,
            progress=bar.update,
            both_hands=both,
        )
    sequences = ", ".join(f"{name}: {count} frames" for name, count in summary.sequences.items())
    print(
        f"wrote {summary.n_images} images ({summary.n_cameras} cameras x {summary.n_frames} "
        f"frames; {sequences}) of the {summary.hand_source} {'hands' if both else 'hand'} to {summary.root} "
        f"in {summary.seconds:.1f} s"
    )
    return 0
