"""Write the license-free procedural hand, or check a MANO install.

  handnerf hand --out DIR         write MANO_RIGHT.pkl / MANO_LEFT.pkl of the procedural
                                  hand (MANO's file format, marked "NOT MANO") into DIR
  handnerf hand --out DIR --resolution mano
                                  the same at MANO's resolution (778 vertices, MANO-like
                                  triangle sizes, non-zero pose blend shapes)
  handnerf hand --mano-dir DIR    load a MANO folder (e.g. mano_v1_2/models) the way every
                                  other command will, and print a summary

MANO itself is licensed by the Max Planck Institute: download it yourself from
https://mano.is.tue.mpg.de; handnerf never downloads or ships it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handnerf.commands.options import add_procedural_resolution

HELP = "write the procedural MANO-format hand, or check a MANO folder"


def configure(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--out", type=Path, metavar="DIR", help="write the procedural hand's MANO folder here"
    )
    action.add_argument(
        "--mano-dir",
        type=Path,
        metavar="DIR",
        help="MANO folder to check (holds MANO_RIGHT.pkl and MANO_LEFT.pkl)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="procedural hand: skin appearance seed (default 0)"
    )
    add_procedural_resolution(
        parser,
        "--resolution",
        "procedural hand: 'mano' (default: 778 vertices, MANO-like triangles, pose "
        "correctives) or 'dense' (3.6k vertices, no correctives)",
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np

    if args.out is not None:
        from handnerf.hand.procedural import write_procedural_mano_dir

        out = write_procedural_mano_dir(args.out, seed=args.seed, resolution=args.resolution)
        for name in ("MANO_RIGHT.pkl", "MANO_LEFT.pkl"):
            size_mb = (out / name).stat().st_size / 1e6
            print(
                f"wrote {out / name} ({size_mb:.1f} MB, {args.resolution} procedural hand, "
                "NOT MANO)"
            )
        return 0

    from handnerf.hand.mano_file import load_mano_file, load_mano_folder

    hands = load_mano_folder(args.mano_dir)
    for side in ("right", "left"):
        hand = hands[side]
        kind = "procedural (license-free, NOT MANO)" if hand.is_procedural else "MANO"
        line = (
            f"{side:5s}: {hand.source}  {kind}, {hand.num_vertices} vertices, "
            f"{len(hand.faces)} faces"
        )
        if side == "left":
            raw_left = load_mano_file(hand.source, side="left")
            fixed = not np.array_equal(raw_left.shapedirs, hand.shapedirs)
            line += f", left shapedirs fix {'applied' if fixed else 'not needed'}"
        print(line)
    return 0
