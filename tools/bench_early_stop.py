"""Does early ray termination pay? Render and training-step costs with and without it.

Early termination (``model.early_stop_eps``): the densities of all samples first, then the
colour only for samples whose transmittance is still >= eps. It saves the colour (and in
training its backward) of the hidden samples and costs one more density pass over all of
them. Measured on a briefly fitted avatar of a synthetic capture (the hand must be opaque
for anything to be hidden):

- render: ``render_camera`` of held-out views with eps = 0 and eps = 1e-4 (median of N);
- training: on a training batch's evaluated samples, the field's forward + backward over
  all of them (no early stop) against a no-grad density pass over all of them plus the
  forward + backward over the visible ones (what early stop would do in a step).

    OMP_NUM_THREADS=2 python tools/bench_early_stop.py --steps 300 --out bench/early_stop.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from handnerf.config import load_config, overrides_from_yaml
from handnerf.files import cache_root, machine_info
from handnerf.model.renderer import render_camera
from handnerf.model.volume import visible_samples
from handnerf.synth.presets import get_preset
from handnerf.synth.writer import synthesize_capture
from handnerf.train.config import FitConfig
from handnerf.train.fit_data import load_fit_data
from handnerf.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time (s) of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "demo"))
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.yaml")
    parser.add_argument("--steps", type=int, default=300, help="fit steps before measuring")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=float, default=1e-4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    root = cache_root() / "bench" / f"{args.preset}-seed0"
    if not (root / "done").exists():
        synthesize_capture(root, get_preset(args.preset), seed=0, workers=1)
        (root / "done").write_text("")
    overrides = [
        *overrides_from_yaml(args.config),
        "data.novel_pose_seq=null",
        f"train.device={args.device}",
        "train.val_every=0",
        "model.sampler.kind=torch",
    ]
    cfg = load_config(FitConfig, None, overrides)
    data = load_fit_data(root, cfg.data, mask_cache=root / "masks", progress=False)
    trainer = Trainer(cfg, data, Path(tempfile.mkdtemp(prefix="bench_early_stop_")))
    for _ in range(args.steps):
        trainer.training_step()
        trainer.step += 1
    avatar, views = trainer.avatar.eval(), data.val_views
    assert views is not None
    frames = trainer.train_frames

    def render(i: int) -> torch.Tensor:
        cam = views.camera(i)
        return render_camera(
            avatar, frames, cam, int(views.frame_ids[i]), int(views.camera_ids[i]), args.device
        )

    view_ids = list(range(min(4, len(views))))
    results: dict[str, object] = {}
    images = {}
    for eps in (0.0, args.eps):
        avatar.cfg = dataclasses.replace(avatar.cfg, early_stop_eps=eps)
        images[eps] = [render(i) for i in view_ids]
        results[f"render_s_eps{eps:g}"] = sum(
            timed(lambda i=i: render(i), args.repeats) for i in view_ids
        ) / len(view_ids)
    results["render_max_abs_diff"] = max(
        float((a - b).abs().max()) for a, b in zip(images[0.0], images[args.eps], strict=True)
    )

    # Training: one batch's evaluated samples, field cost with and without early stop.
    avatar.train()
    # The ray sampler hands out host batches; the trainer moves each one to its device.
    batch = trainer.rays.sample(cfg.train.batch_rays).to(trainer.device)
    rays = batch.rays
    samples = avatar.sampler.sample(
        rays.origins,
        rays.directions,
        rays.frame_ids,
        frames.aabbs,
        occupied_fn=None,
        stratified=True,
    )
    points, ray_ids = samples.eval_points(rays.origins, rays.directions)
    result = frames.deformation.deform(points, rays.frame_ids[ray_ids])
    inside = result.valid & avatar.occupancy.query(result.canonical)
    samples = samples.select(inside)
    points, ray_ids = samples.eval_points(rays.origins, rays.directions)
    result = frames.deformation.deform(points, rays.frame_ids[ray_ids])
    attrs = frames.deformation.blend_attributes(result)
    dirs = rays.directions[ray_ids]

    def field_step(rows: torch.Tensor | slice) -> None:
        sigma, rgb = avatar.field(
            result.canonical[rows],
            result.rotation[rows],
            dirs[rows],
            None if result.normal is None else result.normal[rows],
            None if attrs is None else attrs[rows],
        )
        (sigma.sum() + rgb.sum()).backward()

    with torch.no_grad():
        sigma_all = avatar.field.density(result.canonical)
        keep = visible_samples(samples, sigma_all, args.eps)

    def early_stop_step() -> None:
        with torch.no_grad():
            sigma = avatar.field.density(result.canonical)
            visible_samples(samples, sigma, args.eps)
        field_step(keep)

    results["train_samples"] = len(points)
    results["train_visible_fraction"] = float(keep.float().mean())
    results["train_field_s_all"] = timed(lambda: field_step(slice(None)), args.repeats)
    results["train_field_s_early_stop"] = timed(early_stop_step, args.repeats)
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "steps": args.steps,
        "eps": args.eps,
        **results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
