"""Benchmark rendering a fitted run: the reference path against the fast path, and the preview.

For held-out views of ``--run`` (the ``handavatar`` protocol's 256x256 hand crops of the
novel-view split, and the same crops at 128x128), renders each view with
``render_camera(..., marching=False)`` (the reference path: every shell sample) and with
the default fast path (:mod:`handnerf.model.marching`), interleaved (reference, fast,
reference, fast, ...) so that both meet the same machine load, and reports per size:
median seconds of each, the speed-up, PSNR of each against the ground truth (black
background, the hand mask) and their difference, and the largest pixel difference. The
same for the view's whole camera frame (``frame``, height x width: 512x334 on the synthetic rig).
Then the interactive preview: :class:`PreviewRenderer` at 128x128 on an orbit around the
first view's pose (pose cached, as while the user drags the camera), frames per second,
with the avatar's samples per ray and with half as many.

    OMP_NUM_THREADS=2 python tools/bench_render.py --run demo_out/run --views 4 --repeats 3
    python tools/bench_render.py --run demo_out/run --device cuda --sampler torch
    python tools/bench.py --render-run demo_out/run   # the same, through bench.py

Posing a frame (``pose_frames``) is not part of a render's time: evaluation poses each
view once, the preview once per pose. ``--device cuda`` renders on the GPU (the field under
fp16 autocast, as ``render_camera`` does there); ``--sampler`` picks the sampler (default:
the run's, where ``auto`` means nerfacc's marching on CUDA, the torch sampler's fast path
on the CPU). A render's time includes its one copy back to the host.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handnerf.errors import ConfigError, HandnerfError
from handnerf.evaluation.evaluate import ViewSource, select_views
from handnerf.evaluation.protocols import get_protocol
from handnerf.files import machine_info
from handnerf.hand.hand_model import ManoParams
from handnerf.model.marching import can_march
from handnerf.model.preview import PreviewRenderer
from handnerf.model.renderer import CameraTensors, render_camera, resized_camera
from handnerf.render.jobs import hand_sphere, orbit_cameras
from handnerf.runs.loader import load_run

SIZES = (256, 128)
PREVIEW_SIZE = 128


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    mse = float(((pred - target) ** 2).mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def _timed(fn: Any) -> tuple[float, torch.Tensor]:
    if torch.cuda.is_available():
        # Work queued before the call is not the call's; its result is a host tensor, so
        # the end needs no synchronisation.
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_views(
    run_dir: Path,
    n_views: int,
    repeats: int,
    chunk: int | None,
    device: str = "cpu",
    sampler: str | None = None,
) -> dict[str, Any]:
    run = load_run(run_dir, device=device)
    if sampler is not None:
        run.avatar.use_sampler(sampler)
    protocol = get_protocol("handavatar")
    views = select_views(run, ("novel_view",), n_views)
    if not views:
        raise ConfigError(f"{run_dir}: no novel-view (held-out camera) views to render")
    source = ViewSource(run, protocol)
    sizes: dict[str, dict[str, list[float]]] = {
        name: {"reference_s": [], "fast_s": [], "psnr_reference": [], "psnr_fast": [], "maxabs": []}
        for name in [*(f"{s}x{s}" for s in SIZES), "frame"]
    }
    first_pose: ManoParams | None = None
    for item in views:
        view = item.view
        mask = source.source_mask(item)
        image = source.source_image(item)
        mano = run.frame_mano(
            view.seq_name, view.frame_idx, ManoParams.from_interhand(view.mano, view.mano_where)
        )
        first_pose = first_pose or mano
        posed = run.avatar.pose_frames(mano.to(run.device))
        crop = source.crop(item, mask, posed.vertices[0].cpu().numpy(), image)
        assert crop.mask is not None
        cam_id = run.camera_index(view.camera_id)
        gt_full = torch.from_numpy(
            crop.image.astype(np.float32) / 255.0 * crop.mask.astype(bool)[..., None]
        )
        gt_frame = torch.from_numpy(image.astype(np.float32) / 255.0 * mask.astype(bool)[..., None])
        jobs = []
        for size in SIZES:
            factor = gt_full.shape[0] // size
            # The ground truth at this size: the mean of each factor x factor block.
            gt = gt_full.reshape(size, factor, size, factor, 3).mean(dim=(1, 3))
            jobs.append(
                (f"{size}x{size}", resized_camera(CameraTensors.of(crop.camera), size, size), gt)
            )
        jobs.append(("frame", CameraTensors.of(view.camera), gt_frame))
        for name, cam, gt in jobs:
            render = functools.partial(
                render_camera, run.avatar, posed, cam, 0, cam_id, run.device, chunk=chunk
            )
            render(marching=None)  # warm-up
            for _ in range(repeats):
                t_ref, ref = _timed(functools.partial(render, marching=False))
                t_fast, fast = _timed(render)
                sizes[name]["reference_s"].append(t_ref)
                sizes[name]["fast_s"].append(t_fast)
            sizes[name]["psnr_reference"].append(psnr(ref, gt))
            sizes[name]["psnr_fast"].append(psnr(fast, gt))
            sizes[name]["maxabs"].append(float((fast - ref).abs().max()))
    results = {}
    for name, r in sizes.items():
        ref_s, fast_s = statistics.median(r["reference_s"]), statistics.median(r["fast_s"])
        p_ref, p_fast = statistics.mean(r["psnr_reference"]), statistics.mean(r["psnr_fast"])
        if name == "frame":
            name = f"frame {gt_frame.shape[0]}x{gt_frame.shape[1]}"
        results[name] = {
            "reference_median_s": ref_s,
            "fast_median_s": fast_s,
            "speedup": ref_s / fast_s,
            "fast_fps": 1.0 / fast_s,
            "psnr_reference_db": p_ref,
            "psnr_fast_db": p_fast,
            "psnr_difference_db": p_fast - p_ref,
            "max_abs_pixel_difference": max(r["maxabs"]),
            "renders_each": len(r["fast_s"]),
        }
    assert first_pose is not None
    return {
        "views": len(views),
        "device": str(run.device),
        "backends": run.avatar.backends(),
        "sizes": results,
        "preview": bench_preview(run, first_pose),
    }


def bench_preview(run: Any, mano: ManoParams, n_frames: int = 12) -> dict[str, Any]:
    """FPS of the preview orbiting one pose (posed once, then only the camera moves), with
    the avatar's samples per ray and with half as many (the viewer's "moving" quality; only
    where the avatar marches with the torch sampler, as in the viewer: nerfacc's marching
    steps by distance, not by a sample count)."""
    preview = PreviewRenderer(run.avatar)
    pose_s, frames = _timed(lambda: preview.posed(mano))
    center, radius = hand_sphere(frames.vertices[0])
    cams = orbit_cameras(center, radius, n_frames, PREVIEW_SIZE)
    half = max(1, run.avatar.sampler.n_samples // 2) if can_march(run.avatar) else None
    preview.render(mano, cams[0])  # warm-up
    times, times_half, psnrs = [], [], []
    for cam in cams:
        t_full, full = _timed(functools.partial(preview.render, mano, cam))
        times.append(t_full)
        if half is not None:
            t_half, coarse = _timed(functools.partial(preview.render, mano, cam, n_samples=half))
            times_half.append(t_half)
            psnrs.append(psnr(coarse, full))
    median = statistics.median(times)
    report: dict[str, Any] = {
        "size": f"{PREVIEW_SIZE}x{PREVIEW_SIZE}",
        "frames": n_frames,
        "median_s": median,
        "fps": 1.0 / median,
        "half_samples": half,
        "pose_s": pose_s,
    }
    if half is not None:
        median_half = statistics.median(times_half)
        report["half_samples_median_s"] = median_half
        report["half_samples_fps"] = 1.0 / median_half
        report["half_samples_psnr_vs_full_db"] = statistics.mean(psnrs)
    return report


def run_render_bench(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    if args.repeats < 1 or args.views < 1:
        raise ConfigError(f"--repeats and --views must be >= 1, got {args.repeats}, {args.views}")
    if not (args.run / "run.json").is_file():
        raise ConfigError(f"--run {args.run}: not a handnerf run folder (no run.json)")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_avg = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device here")
    report = bench_views(args.run, args.views, args.repeats, args.chunk, args.device, args.sampler)
    return {
        "command": shlex.join(["python", "tools/bench_render.py", *argv]),
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            **machine_info(),
            "torch_threads": torch.get_num_threads(),
            "load_average_start": list(load_avg),
            "load_average_end": list(os.getloadavg()),
        },
        "run": str(args.run),
        **report,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"handnerf render bench, {report['date']}: {m['processor']}, {m['cpu_count']} cores, "
        f"{m['torch_threads']} torch threads, torch {m['torch']}, run {report['run']}, "
        f"{report['views']} held-out views, on {report['device']} "
        f"(sampler {report['backends']['sampler']}), "
        f"load average {m['load_average_start'][0]:.1f} "
        f"at start, {m['load_average_end'][0]:.1f} at end",
        "",
        "| size | reference (s) | fast (s) | speed-up | fast FPS | PSNR reference (dB) | "
        "PSNR fast (dB) | difference (dB) | max pixel difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, r in report["sizes"].items():
        lines.append(
            f"| {size} | {r['reference_median_s']:.3f} | {r['fast_median_s']:.3f} | "
            f"{r['speedup']:.2f}x | {r['fast_fps']:.1f} | {r['psnr_reference_db']:.3f} | "
            f"{r['psnr_fast_db']:.3f} | {r['psnr_difference_db']:+.4f} | "
            f"{r['max_abs_pixel_difference']:.1e} |"
        )
    p = report["preview"]
    moving = (
        f"with {p['half_samples']} samples per ray (the moving quality): "
        f"{p['half_samples_median_s']:.3f} s, **{p['half_samples_fps']:.1f} FPS** "
        f"({p['half_samples_psnr_vs_full_db']:.1f} dB against the full-quality frame); "
        if p["half_samples"] is not None
        else "no moving quality (nerfacc's marching has no sample count); "
    )
    lines += [
        "",
        f"Preview (PreviewRenderer, {p['size']}, orbit of {p['frames']} cameras around one "
        f"cached pose): {p['median_s']:.3f} s a frame, **{p['fps']:.1f} FPS**; {moving}"
        f"posing the frame once: {p['pose_s']:.2f} s.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a fitted run folder")
    parser.add_argument("--views", type=int, default=4, help="held-out views rendered")
    parser.add_argument("--repeats", type=int, default=3, help="timed renders per view/path")
    parser.add_argument("--chunk", type=int, default=None, help="rays per render call")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--sampler",
        choices=("auto", "torch", "nerfacc"),
        default=None,
        help="sampler to render with (default: the run's)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (.md beside it)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        report = run_render_bench(args, argv)
    except HandnerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = markdown(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
