"""Prepare one selection of an InterHand2.6M split into a compact cache for fit.

Streams the split's annotation JSONs (memory stays bounded however big the split is),
keeps the chosen capture, sequence(s), hand and cameras, renders the MANO masks
(optionally refined with GrabCut), applies HandAvatar's frame filters, crops, and writes
CACHE/ (PNG images and masks, cameras, MANO parameters, index.json with provenance).
Re-running skips finished views, so an interrupted run resumes. Pass CACHE as fit's
--data.

Protocols (configs/protocols/*.yaml) hold ready-made selections; flags override them.

Examples:
  handnerf prepare --interhand ROOT --split test --capture 0 \\
      --seq ROM04_RT_Occlusion --seq ROM03_RT_No_Occlusion --hand right \\
      --crop 1.3:256 --mano-dir MANO --out caches/handavatar
  handnerf prepare --interhand ROOT --protocol configs/protocols/handavatar.yaml --out CACHE
  handnerf prepare --interhand demo_out/two_hands --hand both --crop 1.3:128 --out CACHE2
  handnerf fit --data CACHE --config configs/interhand.yaml --out runs/s0
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from handnerf.commands.mano_option import add_mano_dir
from handnerf.commands.options import add_hand, add_no_progress

HELP = "stream a selection of an InterHand2.6M split into a compact, resumable cache"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interhand", type=Path, required=True, help="InterHand2.6M root (images/, annotations/)"
    )
    parser.add_argument("--out", type=Path, required=True, help="cache folder to write")
    parser.add_argument(
        "--protocol", type=Path, default=None, help="a protocol YAML (configs/protocols/)"
    )
    parser.add_argument("--split", default=None, help="train | val | test (default: test)")
    parser.add_argument("--capture", type=int, default=None, help="capture number (default: 0)")
    parser.add_argument(
        "--seq",
        dest="seqs",
        action="append",
        default=None,
        metavar="NAME",
        help="sequence to keep (repeatable; default: every sequence of the capture)",
    )
    add_hand(
        parser,
        "default: right; 'both': two interacting hands (frames lacking either hand's "
        "MANO are skipped and counted), masks are the union of both hands",
    )
    parser.add_argument("--cameras", nargs="+", default=None, metavar="ID", help="cameras to keep")
    parser.add_argument(
        "--exclude-cameras", nargs="+", default=None, metavar="ID", help="cameras to drop"
    )
    parser.add_argument(
        "--drop-grayscale-cameras",
        action="store_true",
        default=None,
        help="drop the 4100xx cameras (grayscale in some captures)",
    )
    parser.add_argument("--stride", type=int, default=None, help="keep every K-th frame")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--crop",
        default=None,
        metavar="SCALE:SIZE",
        help="square hand crop: side SCALE x bbox, resized to SIZE px (default: 1.3:256)",
    )
    size.add_argument(
        "--scale", type=float, default=None, help="keep the full frame, resized by this factor"
    )
    parser.add_argument(
        "--no-filters",
        dest="filters",
        action="store_false",
        default=None,
        help="keep every view (no HandAvatar frame filters)",
    )
    parser.add_argument(
        "--refine-masks",
        action="store_true",
        default=None,
        help="refine MANO silhouettes against the photo with GrabCut (real photos)",
    )
    add_mano_dir(parser)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    add_no_progress(parser)


def build_spec(args: argparse.Namespace) -> Any:
    """The :class:`~handnerf.data.prepare.PrepareSpec` of the flags over the protocol."""
    from handnerf.data.prepare_settings import PROTOCOL_KEYS, load_protocol, spec_from_settings

    settings: dict[str, Any] = load_protocol(args.protocol) if args.protocol else {}
    for key in PROTOCOL_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if args.crop is not None or args.scale is not None:
        settings.pop("crop" if args.scale is not None else "scale", None)
    return spec_from_settings(settings, str(args.mano_dir) if args.mano_dir is not None else None)


def run(args: argparse.Namespace) -> int:
    from handnerf.data.prepare import prepare_cache
    from handnerf.errors import ConfigError

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    spec = build_spec(args)
    summary = prepare_cache(
        args.interhand, args.out, spec, workers=args.workers, progress=not args.no_progress
    )
    if summary.already_complete:
        print(f"{summary.root} is already prepared ({summary.n_kept} views); nothing to do")
        return 0
    dropped = sum(summary.filter_counts.values())
    print(
        f"prepared {summary.n_kept} of {summary.n_views} views into {summary.root} in "
        f"{summary.seconds:.1f} s (selection streamed from the annotations in "
        f"{summary.select_seconds:.1f} s; {summary.computed} views computed, {summary.reused} "
        f"reused, {dropped} dropped by filters)"
    )
    for reason, count in summary.filter_counts.items():
        print(f"  filter: {reason}: {count}")
    return 0
