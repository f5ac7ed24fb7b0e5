"""``eval --refine-pose``: each evaluated novel-pose frame's MANO corrected first.

The published protocols render novel poses from the given MANO fits (InterHand2.6M's are
off by millimetres), so this is off by default. With it, each novel-pose frame that is
scored gets its pose fitted (:func:`handnerf.train.frame_pose.fit_frame_pose`, avatar
frozen) against that frame's views from cameras that are not scored: the run's training
cameras, minus every camera evaluated in that frame. The masks of the scored views are
MANO silhouettes; refinement moves them, so the report gives the numbers with both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from handnerf.data.crops import Crop
from handnerf.errors import ConfigError, DataError
from handnerf.hand.hand_model import ManoParams
from handnerf.model.avatar import PosedFrames
from handnerf.model.rays import pixel_rays
from handnerf.model.renderer import CameraTensors
from handnerf.runs.loader import TrainedRun
from handnerf.train.fit_data import open_sequence, prepare_view_set
from handnerf.train.frame_pose import FramePoseConfig, fit_frame_pose
from handnerf.train.silhouette import MeshSilhouette

FrameKey = tuple[str, int]


def refine_novel_poses(
    run: TrainedRun,
    items: list[Any],
    given: dict[FrameKey, ManoParams],
    holdout: list[str],
    cfg: FramePoseConfig | None = None,
) -> tuple[dict[FrameKey, ManoParams], dict[str, Any]]:
    """Refined MANO of every novel-pose frame among ``items`` (``EvalView`` s), and what was
    done (for the report).

    ``given``: each frame's MANO as given; ``holdout``: the run's held-out cameras (never
    used to refine: their colour affine was not learnt).
    """
    cfg = cfg or FramePoseConfig()
    if run.fit_hands.both:
        raise ConfigError("eval --refine-pose is one-hand only for now (this run has both)")
    data_root = Path(run.data_root)
    evaluated: dict[FrameKey, set[str]] = {}
    for item in items:
        if item.split == "novel_pose":
            key = (item.view.seq_name, int(item.view.frame_idx))
            evaluated.setdefault(key, set()).add(str(item.view.camera_id))
    if not evaluated:
        return {}, {"used": False, "reason": "no novel-pose view evaluated"}
    if item_cached(items):
        raise DataError(
            f"eval --refine-pose reads the novel-pose images of an InterHand2.6M root; "
            f"{run.run_dir} was fitted from a prepared cache ({data_root})"
        )
    seq = next(iter(evaluated))[0]
    capture = open_sequence(data_root, run.cfg.data, seq, run.cfg.data.novel_pose_stride)
    camera_index = {c: i for i, c in enumerate(run.camera_names)}
    refined: dict[FrameKey, ManoParams] = {}
    cameras_used: dict[str, list[str]] = {}
    for key, scored in sorted(evaluated.items()):
        views = [
            v
            for v in capture.views
            if (v.seq_name, int(v.frame_idx)) == key
            and str(v.camera_id) not in scored
            and str(v.camera_id) not in holdout
            and str(v.camera_id) in camera_index
        ]
        if not views:
            raise DataError(
                f"eval --refine-pose: frame {key[1]} of {seq} has no view from a training "
                f"camera that is not evaluated (evaluated: {', '.join(sorted(scored))}); "
                "evaluate fewer views (--max-views)"
            )
        view_set = prepare_view_set(
            views,
            capture,
            run.fit_hands,
            run.cfg.data,
            camera_index,
            run.run_dir / "mask_cache",
            progress=False,
            desc="refine-pose views",
        )
        mano = given[key].to(run.device)
        refined[key] = fit_frame_pose(run.avatar, mano, view_set.stack, cfg).to(torch.device("cpu"))
        cameras_used[f"{key[0]}/{key[1]}"] = sorted(str(v.camera_id) for v in views)
    info = {
        "used": True,
        "split": "novel_pose",
        "frames": len(refined),
        "steps": cfg.steps,
        "batch_rays": cfg.batch_rays,
        "silhouette_steps": cfg.silhouette_steps,
        "mask_band_px": cfg.mask_band,
        "cameras": cameras_used,
        "masks": (
            "psnr/ssim/lpips with the given MANO's masks (the protocol's); "
            "refined_mask_* with the refined MANO's"
        ),
    }
    return refined, info


def item_cached(items: list[Any]) -> bool:
    return any(getattr(item, "cached", None) is not None for item in items)


def refined_mask(frames: PosedFrames, faces: torch.Tensor, crop: Crop) -> np.ndarray:
    """(H,W) bool: which pixel centres of ``crop``'s camera see frame 0 of ``frames``."""
    cam = CameraTensors.of(crop.camera)
    v, u = torch.meshgrid(torch.arange(cam.height), torch.arange(cam.width), indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    n = len(u)
    origins, dirs = pixel_rays(
        cam.K.expand(n, 3, 3), cam.R.expand(n, 3, 3), cam.t.expand(n, 3), u, v
    )
    hit = MeshSilhouette(frames.vertices[:1].cpu(), faces.cpu())(
        origins, dirs, torch.zeros(n, dtype=torch.long)
    )
    return hit.reshape(cam.height, cam.width).numpy()
