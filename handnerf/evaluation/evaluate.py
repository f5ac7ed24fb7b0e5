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

A run fitted from a ``handnerf prepare`` cache is evaluated on what the cache kept: the
scored views are the cache's kept views (its camera selection and frame filters apply;
``novel_view`` = the held-out cameras among the training sequence's kept views,
``novel_pose`` = the kept views of the novel-pose sequence, an error when the cache holds
none), and the masks are the cache's stored ones (GrabCut-refined when it was prepared so).
When the protocol's image geometry is the cache's (same crop scale and size, or the same
full-frame scale), the stored images and masks are scored as they are and the source root
is not needed. Otherwise the protocol's image is cut from the cache's source image, with
the stored mask mapped back onto it through the crop box the cache recorded; when the
source root is gone, that is an error naming the protocol and the cache's geometry.
``report.json`` says under ``run.views_from`` / ``masks_from`` / ``images_from`` which
source was used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from handnerf import interrupts
from handnerf.config import config_to_dict
from handnerf.data.cache import CachedView, PreparedCache, interhand_root, is_prepared_cache
from handnerf.data.crops import Crop, CropConfig, crop_box, crop_hand, downscale
from handnerf.data.interhand import FrameView, load_image, refuse_seen_novel_pose
from handnerf.data.two_hand_masks import TwoHandMasker
from handnerf.errors import ConfigError, DataError
from handnerf.evaluation.pose_refit import refine_novel_poses, refined_mask
from handnerf.evaluation.protocols import EvalProtocol
from handnerf.evaluation.report import image_key, write_report
from handnerf.evaluation.scoring import (
    drop_reason,
    hand_scores,
    projected_box_mask,
    score_view,
)
from handnerf.files import machine_info
from handnerf.hand.hand_model import ManoParams
from handnerf.metrics.perceptual import PerceptualMetric
from handnerf.model.renderer import render_camera
from handnerf.model.two_hands import SIDES
from handnerf.runs.loader import TrainedRun
from handnerf.train.fit_data import cached_entries, open_sequence
from handnerf.train.fit_hands import FitMano, mano_to

SPLITS = ("novel_view", "novel_pose")


@dataclass
class EvalView:
    split: str
    view: FrameView
    #: The prepared cache's record of the view, for a run fitted from a cache.
    cached: CachedView | None = None


def select_views(run: TrainedRun, splits: tuple[str, ...], max_views: int | None) -> list[EvalView]:
    """The views of each requested split, evenly subsampled to ``max_views`` per split.

    From a prepared cache: only the views it kept (see the module docstring).
    """
    data_root = Path(run.data_root)
    if not data_root.exists():
        raise DataError(
            f"{run.run_dir / 'run.json'}: 'data_root' {data_root} (what the run was fitted "
            "from) no longer exists; evaluation reads its views"
        )
    cache = PreparedCache(data_root) if is_prepared_cache(data_root) else None
    chosen: list[EvalView] = []
    for split in splits:
        if split not in SPLITS:
            raise ConfigError(
                f"unknown evaluation split {split!r}; choose from {', '.join(SPLITS)}"
            )
        if cache is None:
            views = root_split(run, data_root, split)
        else:
            views = cached_split(run, cache, split)
        views.sort(key=lambda item: (item.view.frame_idx, item.view.camera_id))
        if max_views is not None and len(views) > max_views:
            idx = np.linspace(0, len(views) - 1, max_views).round().astype(int)
            views = [views[i] for i in sorted(set(idx.tolist()))]
        chosen += views
    return chosen


def holdout_cameras(run: TrainedRun) -> list[str]:
    holdout = [str(c) for c in run.info.get("holdout_cameras") or []]
    if not holdout:
        raise DataError(f"{run.run_dir}: the run held out no cameras; novel_view is empty")
    return holdout


def novel_pose_sequence(run: TrainedRun) -> str:
    cfg = run.cfg.data
    if not cfg.novel_pose_seq:
        raise DataError(f"{run.run_dir}: the run has no novel-pose sequence")
    refuse_seen_novel_pose(cfg.train_seq, cfg.novel_pose_seq, cfg.extra_train_seqs)
    return cfg.novel_pose_seq


def root_split(run: TrainedRun, root: Path, split: str) -> list[EvalView]:
    """``split``'s views read from an InterHand2.6M root (every selected view)."""
    cfg = run.cfg.data
    if split == "novel_view":
        cap = open_sequence(root, cfg, cfg.train_seq, cfg.stride, cameras=holdout_cameras(run))
    else:
        cap = open_sequence(root, cfg, novel_pose_sequence(run), cfg.novel_pose_stride)
    return [EvalView(split, v) for v in cap.views]


def cached_split(run: TrainedRun, cache: PreparedCache, split: str) -> list[EvalView]:
    """``split``'s views among the kept views of ``cache``, thinned as the fit thinned them."""
    cfg = run.cfg.data
    if split == "novel_view":
        holdout = holdout_cameras(run)
        entries = [
            e
            for e in cached_entries(cache, cfg.train_seq, cfg.stride, cfg.exclude_cameras)
            if e.view.camera_id in holdout
        ]
        what = f"of the held-out cameras {', '.join(holdout)} in {cfg.train_seq}"
    else:
        seq = novel_pose_sequence(run)
        if seq not in cache.sequences:
            raise DataError(
                f"novel_pose: {run.run_dir} was fitted from the prepared cache {cache.root}, "
                f"which holds no kept view of the novel-pose sequence {seq!r} (it holds: "
                f"{', '.join(cache.sequences)}); evaluate with --split novel_view, or prepare "
                f"a cache with --seq {cfg.train_seq} --seq {seq} and fit on it"
            )
        entries = cached_entries(cache, seq, cfg.novel_pose_stride, cfg.exclude_cameras)
        what = f"of {seq}"
    if not entries:
        raise DataError(
            f"{split}: the prepared cache {cache.root} keeps no view {what} "
            f"(after data.exclude_cameras); filtered out: {cache.filter_counts or 'none'}"
        )
    return [EvalView(split, e.view, cached=e) for e in entries]


def view_mano(run: TrainedRun, view: FrameView) -> FitMano:
    """The MANO a view is rendered with: its frame's (the fit's refined one for a training
    frame), or for a two-hand run each hand's."""
    if view.two_hands is not None:
        return {
            side: ManoParams.from_interhand(params, view.mano_where_of(side))
            for side, params in view.two_hands.items()
        }
    mano = ManoParams.from_interhand(view.mano, view.mano_where)
    return run.frame_mano(view.seq_name, view.frame_idx, mano)


def same_geometry(protocol: EvalProtocol, crop: CropConfig) -> bool:
    """Whether a cache prepared with ``crop`` stores exactly the images ``protocol`` cuts."""
    if protocol.image_mode == "crop":
        assert protocol.crop_scale is not None
        return (
            crop.mode == "crop"
            and math.isclose(crop.scale, protocol.crop_scale, rel_tol=1e-9)
            and crop.out_size == protocol.crop_size
        )
    return crop.mode == "full" and math.isclose(crop.full_scale, protocol.image_scale, rel_tol=1e-9)


class ViewSource:
    """Images and hand masks of the evaluated views, as the protocol cuts them.

    From an InterHand2.6M root: the source images with MANO masks rendered here. From a
    prepared cache: the stored images and masks when the geometry matches, else the source
    images with the stored masks mapped back onto them (see the module docstring).
    """

    def __init__(self, run: TrainedRun, protocol: EvalProtocol) -> None:
        self.protocol = protocol
        data_root = Path(run.data_root)
        self.cache: PreparedCache | None = None
        self.masker: Any = None  # a ManoMasker, or a TwoHandMasker (data.hand=both)
        # data.hand=both: each hand's visible MANO mask (from the cache's MANO and cameras
        # for a run fitted from a prepared cache, whose stored mask is the union).
        self.hand_masker: TwoHandMasker | None = None
        if run.fit_hands.both:
            self.hand_masker = run.fit_hands.masker(run.run_dir / "mask_cache")
        self.stored = False
        if not is_prepared_cache(data_root):
            # data.hand=both: a TwoHandMasker, the union of both hands' silhouettes.
            self.masker = self.hand_masker or run.fit_hands.masker(run.run_dir / "mask_cache")
            self.info: dict[str, Any] = {
                "views_from": f"InterHand2.6M root {data_root}",
                "masks_from": "MANO silhouettes rendered at evaluation",
                "images_from": f"source images of {data_root}, cut as the protocol says",
            }
            return
        cache = self.cache = PreparedCache(data_root)
        self.stored = same_geometry(protocol, cache.crop)
        if self.stored:
            images_from = f"the cache's stored images ({cache.crop_text}, the protocol's geometry)"
        else:
            try:
                source = interhand_root(data_root)
            except DataError as exc:
                raise DataError(
                    f"protocol {protocol.name} evaluates {protocol.image_text}, but the prepared "
                    f"cache {data_root} stores {cache.crop_text}; another geometry is cut from "
                    f"the cache's source images, and: {exc}. Evaluate with a protocol of the "
                    "cache's geometry, or restore its source root"
                ) from exc
            images_from = (
                f"source images of {source}, cut as the protocol says (the cache stores "
                f"{cache.crop_text}); stored masks mapped through each view's crop box"
            )
        refined = "GrabCut-refined MANO silhouettes" if cache.refined_masks else "MANO silhouettes"
        self.info = {
            "views_from": f"prepared cache {data_root}",
            "masks_from": f"the cache's stored masks ({refined})",
            "images_from": images_from,
            "prepared_cache": {
                "path": str(data_root),
                "fingerprint": cache.fingerprint,
                "geometry": cache.crop_text,
                "refined_masks": cache.refined_masks,
                "filter_counts": cache.filter_counts,
            },
        }

    def source_mask(self, item: EvalView) -> np.ndarray:
        """(H, W) bool hand mask of ``item`` on its source image (for the border filter)."""
        if self.cache is not None:
            if item.cached is None:
                raise DataError(f"{item.split} view {item.view.key} is not from the prepared cache")
            return self.cache.source_mask(item.cached)
        assert self.masker is not None
        return self.masker.mask(item.view)

    def source_image(self, item: EvalView) -> np.ndarray | None:
        """(H, W, 3) uint8 camera image of ``item``, or None when the cache's stored crops
        are scored (prepare applied the image filters to them already)."""
        return None if self.stored else load_image(item.view)

    def crop(
        self, item: EvalView, mask: np.ndarray, vertices: np.ndarray, image: np.ndarray | None
    ) -> Crop:
        """``item`` as the protocol sees it; ``mask`` and ``image`` are :meth:`source_mask`'s
        and :meth:`source_image`'s."""
        if self.stored:
            assert self.cache is not None and item.cached is not None
            return self.cache.read(item.cached)
        assert image is not None
        protocol = self.protocol
        view = item.view
        if protocol.image_mode == "crop":
            assert protocol.crop_scale is not None and protocol.crop_size is not None
            return crop_hand(
                image,
                view.camera,
                mask=mask,
                points=vertices,
                scale=protocol.crop_scale,
                out_size=protocol.crop_size,
            )
        return downscale(image, view.camera, protocol.image_scale, mask)


def hand_masks(
    source: ViewSource, item: EvalView, crop: Crop, scored: np.ndarray
) -> dict[str, np.ndarray] | None:
    """Each hand's visible MANO mask of a two-hand view, cut like ``crop`` and kept inside
    ``scored`` ((H, W) bool, the view's scored hand mask); None for a one-hand run.

    Both masks are resampled together as two channels of one image and each scored pixel
    goes to the hand covering more of it: masks resampled one by one would overlap where
    the hands meet. The results are disjoint, and together every scored pixel either
    hand covers."""
    if source.hand_masker is None:
        return None
    view = item.view
    visible = source.hand_masker.visible(view)
    coverage = np.zeros((view.camera.height, view.camera.width, 3), dtype=np.uint8)
    for channel, side in enumerate(SIDES):
        coverage[..., channel] = visible[side].astype(np.uint8) * 255
    if source.protocol.image_mode == "crop":
        cut = crop_box(coverage, view.camera, crop.box, crop.image.shape[0]).image
    else:
        cut = downscale(coverage, view.camera, source.protocol.image_scale).image
    right, left = cut[..., 0].astype(np.int16), cut[..., 1].astype(np.int16)
    covered = scored & (np.maximum(right, left) > 0)
    return {"right": covered & (right >= left), "left": covered & (left > right)}


def evaluate_run(
    run: TrainedRun,
    protocol: EvalProtocol,
    out_dir: Path,
    splits: tuple[str, ...] = SPLITS,
    max_views: int | None = None,
    chunk: int | None = None,
    progress: bool = True,
    refine_pose: bool = False,
) -> dict[str, Any]:
    """Score ``run`` under ``protocol`` and write the report into ``out_dir``;
    ``refine_pose``: novel poses rendered with their MANO refined first
    (:mod:`handnerf.evaluation.pose_refit`)."""
    t0 = time.monotonic()
    views = select_views(run, splits, max_views)
    source = ViewSource(run, protocol)
    refined: dict[tuple[str, int], Any] = {}
    refinement: dict[str, Any] = {"used": False}
    if refine_pose:
        given = {
            (v.view.seq_name, int(v.view.frame_idx)): view_mano(run, v.view)
            for v in views
            if v.split == "novel_pose"
        }
        refined, refinement = refine_novel_poses(run, views, given, holdout_cameras(run))
    perceptual = PerceptualMetric(net=protocol.lpips_net, device=run.device)
    rows: list[dict[str, Any]] = []
    images: dict[str, dict[str, np.ndarray]] = {}
    dropped: list[dict[str, Any]] = []
    render_seconds = 0.0
    for item in tqdm(views, desc=f"eval {protocol.name}", disable=not progress):
        view = item.view
        mask = source.source_mask(item)
        image = source.source_image(item)
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
        mano = view_mano(run, view)
        key = (view.seq_name, int(view.frame_idx))
        if item.split == "novel_pose" and key in refined:
            mano = refined[key]
        frames = run.avatar.pose_frames(mano_to(mano, run.device))
        crop = source.crop(item, mask, frames.vertices[0].cpu().numpy(), image)
        assert crop.mask is not None
        cam = crop.camera
        t_render = time.monotonic()
        camera_id = run.camera_index(view.camera_id)
        pred = render_camera(run.avatar, frames, cam, 0, camera_id, run.device, chunk=chunk).numpy()
        render_seconds += time.monotonic() - t_render
        valid = crop.valid_pixels
        # The hand mask of a pixel that straddles the image border is half padding.
        m = crop.mask.astype(bool) & valid
        gt = crop.image.astype(np.float32) / 255.0 * m[..., None]
        box = None
        if protocol.zero_outside_box:
            box = projected_box_mask(cam, frames.vertices[0].cpu().numpy(), protocol.box_padding_m)
        scores = score_view(pred, gt, m, valid, protocol, perceptual, box)
        refined_here = (
            key in refined if item.split == "novel_pose" else (key in (run.refined_mano or {}))
        )
        if refined_here:
            # The protocol's mask is the given MANO's; the refined pose draws another.
            m_refined = refined_mask(frames, run.avatar.hand_model.faces, crop) & valid
            gt_refined = crop.image.astype(np.float32) / 255.0 * m_refined[..., None]
            extra = score_view(pred, gt_refined, m_refined, valid, protocol, perceptual, box)
            scores.update({f"refined_mask_{k}": extra.get(k) for k in ("psnr", "ssim", "lpips")})
        row = {
            "split": item.split,
            "camera": view.camera_id,
            "frame": view.frame_idx,
            "seq": view.seq_name,
            **scores,
            "render_seconds": time.monotonic() - t_render,
        }
        per_hand = hand_masks(source, item, crop, m)
        if per_hand is not None:
            row.update(hand_scores(pred, gt, per_hand))
        rows.append(row)
        interrupts.reached("eval.image", len(rows))
        # The saved render shows what was scored: nothing in the padding.
        shown = valid if box is None else valid & box
        images[image_key(item.split, view.camera_id, view.frame_idx)] = {
            "render": pred * shown[..., None],
            "gt": gt,
            "mask": m,
            **{f"{side}_mask": hand_mask for side, hand_mask in (per_hand or {}).items()},
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
        **source.info,
        "padding": protocol.padding_text,
        "pose_refinement": refinement,
        # A fit with train.refine_pose renders its training frames (novel views) with the
        # refined MANO; their refined_mask_* numbers use that pose's masks.
        "training_frames_refined": bool(run.refined_mano),
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
