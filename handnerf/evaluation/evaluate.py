"""``handnerf eval``: render held-out views and novel poses, score them, write the report.

Evaluation sets:

- ``novel_view``: the run's held-out cameras, in the training frames.
- ``novel_pose``: every camera of the held-out (novel-pose) sequence.

Images are prepared as the protocol says (hand crop or full frame), the ground truth is put
on a black background with the MANO mask (InterHand2.6M has no masks; every published
protocol does this), and PSNR/SSIM are measured on the protocol's region. Crop pixels
outside the camera image (padding) are left out of every metric
(:mod:`handnerf.evaluation.scoring`); a protocol with a border filter (HandAvatar's) drops
views whose hand comes within its margin of the border, and the report lists them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from handnerf import interrupts
from handnerf.config import config_to_dict
from handnerf.data.cache import interhand_root
from handnerf.data.crops import crop_hand, downscale
from handnerf.data.interhand import FrameView, load_image, refuse_seen_novel_pose
from handnerf.data.masks import ManoMasker, MaskCache
from handnerf.errors import ConfigError, DataError
from handnerf.evaluation.perceptual import PerceptualMetric
from handnerf.evaluation.protocols import EvalProtocol
from handnerf.evaluation.report import image_key, write_report
from handnerf.evaluation.scoring import drop_reason, projected_box_mask, score_view
from handnerf.hand.hand_model import ManoParams
from handnerf.train.fit_data import open_sequence
from handnerf.train.run_loader import TrainedRun
from handnerf.train.trainer import machine_info, render_image

SPLITS = ("novel_view", "novel_pose")


@dataclass
class EvalView:
    split: str
    view: FrameView


def select_views(run: TrainedRun, splits: tuple[str, ...], max_views: int | None) -> list[EvalView]:
    """The views of each requested split, evenly subsampled to ``max_views`` per split."""
    cfg = run.cfg.data
    # A run fitted from a prepared cache is evaluated on the cache's source images.
    root = interhand_root(run.data_root)
    chosen: list[EvalView] = []
    for split in splits:
        if split == "novel_view":
            holdout = list(run.info.get("holdout_cameras") or [])
            if not holdout:
                raise DataError(f"{run.run_dir}: the run held out no cameras; novel_view is empty")
            cap = open_sequence(root, cfg, cfg.train_seq, cfg.stride, cameras=holdout)
        elif split == "novel_pose":
            if not cfg.novel_pose_seq:
                raise DataError(f"{run.run_dir}: the run has no novel-pose sequence")
            refuse_seen_novel_pose(cfg.train_seq, cfg.novel_pose_seq)
            cap = open_sequence(root, cfg, cfg.novel_pose_seq, cfg.novel_pose_stride)
        else:
            raise ConfigError(
                f"unknown evaluation split {split!r}; choose from {', '.join(SPLITS)}"
            )
        views = sorted(cap.views, key=lambda v: (v.frame_idx, v.camera_id))
        if max_views is not None and len(views) > max_views:
            idx = np.linspace(0, len(views) - 1, max_views).round().astype(int)
            views = [views[i] for i in sorted(set(idx.tolist()))]
        chosen += [EvalView(split, v) for v in views]
    return chosen


def border_drop_reason(protocol: EvalProtocol, mask: np.ndarray) -> str | None:
    """Why ``protocol``'s mask-based filters drop a view with hand ``mask`` (H, W), or None."""
    return drop_reason(protocol, mask)


def evaluate_run(
    run: TrainedRun,
    protocol: EvalProtocol,
    out_dir: Path,
    splits: tuple[str, ...] = SPLITS,
    max_views: int | None = None,
    chunk: int = 16384,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``run`` under ``protocol`` and write the report into ``out_dir``."""
    t0 = time.monotonic()
    views = select_views(run, splits, max_views)
    hand_model = run.avatar.hand_model
    masker = ManoMasker(hand_model, cache=MaskCache(run.run_dir / "mask_cache"))
    perceptual = PerceptualMetric(net=protocol.lpips_net, device=run.device)
    rows: list[dict[str, Any]] = []
    images: dict[str, dict[str, np.ndarray]] = {}
    dropped: list[dict[str, Any]] = []
    render_seconds = 0.0
    for item in tqdm(views, desc=f"eval {protocol.name}", disable=not progress):
        view = item.view
        mask = masker.mask(view)
        image = load_image(view)
        reason = drop_reason(protocol, mask, image)
        if reason is not None:
            dropped.append(
                {
                    "split": item.split,
                    "camera": view.camera_id,
                    "frame": view.frame_idx,
                    "reason": reason,
                }
            )
            continue
        mano = ManoParams.from_interhand(view.mano, view.mano_where)
        frames = run.avatar.pose_frames(mano.to(run.device))
        if protocol.image_mode == "crop":
            assert protocol.crop_scale is not None and protocol.crop_size is not None
            crop = crop_hand(
                image,
                view.camera,
                mask=mask,
                points=frames.vertices[0].cpu().numpy(),
                scale=protocol.crop_scale,
                out_size=protocol.crop_size,
            )
        else:
            crop = downscale(image, view.camera, protocol.image_scale, mask)
        assert crop.mask is not None
        cam = crop.camera
        t_render = time.monotonic()
        camera_id = run.camera_index(view.camera_id)
        pred = render_image(
            run.avatar,
            frames,
            torch.from_numpy(cam.K).float(),
            torch.from_numpy(cam.R).float(),
            torch.from_numpy(cam.t).float(),
            cam.height,
            cam.width,
            0,
            camera_id,
            run.device,
            chunk=chunk,
        ).numpy()
        render_seconds += time.monotonic() - t_render
        valid = crop.valid_pixels
        # The hand mask of a pixel that straddles the image border is half padding.
        m = crop.mask.astype(bool) & valid
        gt = crop.image.astype(np.float32) / 255.0 * m[..., None]
        box = None
        if protocol.zero_outside_box:
            box = projected_box_mask(cam, frames.vertices[0].cpu().numpy(), protocol.box_padding_m)
        scores = score_view(pred, gt, m, valid, protocol, perceptual, box)
        row = {
            "split": item.split,
            "camera": view.camera_id,
            "frame": view.frame_idx,
            "seq": view.seq_name,
            **scores,
            "render_seconds": time.monotonic() - t_render,
        }
        rows.append(row)
        interrupts.reached("eval.image", len(rows))
        # The saved render shows what was scored: nothing in the padding.
        shown = valid if box is None else valid & box
        images[image_key(item.split, view.camera_id, view.frame_idx)] = {
            "render": pred * shown[..., None],
            "gt": gt,
            "mask": m,
        }
    if not rows and dropped:
        raise DataError(
            f"protocol {protocol.name}: its frame filters dropped all {len(dropped)} views "
            f"(first: {dropped[0]['reason']}); evaluate more views (--max-views) or use a "
            "protocol without filters"
        )
    metrics_jsonl = run.run_dir / "metrics.jsonl"
    run_info = {
        "config": config_to_dict(run.cfg),
        "backends": run.avatar.backends(),
        "timings": {
            "total_seconds": time.monotonic() - t0,
            "render_seconds": render_seconds,
            "mean_render_seconds": render_seconds / max(1, len(rows)),
        },
        "machine": machine_info(),
        "run_dir": str(run.run_dir),
        "checkpoint_step": run.step,
        "data_root": str(run.data_root),
        "padding": protocol.padding_text,
        "dropped_views": dropped,
    }
    return write_report(
        out_dir,
        protocol=protocol,
        rows=rows,
        images=images,
        run_info=run_info,
        metrics_jsonl=metrics_jsonl if metrics_jsonl.is_file() else None,
        lpips_net=perceptual.net_name,
    )
