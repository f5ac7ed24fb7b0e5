"""One frame's MANO pose fitted to its images with the avatar frozen (``eval --refine-pose``).

A novel pose's MANO is a fit too, off by the same degrees and millimetres as the training
frames'. With the avatar learnt, the frame's pose alone can be corrected against views of
it that are not scored: the same corrections, gradients and mask band as the fit's
refinement (:mod:`handnerf.train.pose_refinement`), with only the 51 pose numbers
optimised, after a fit of the frame's silhouettes in those views
(:mod:`handnerf.train.silhouette_fit`) has taken out most of the error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from handnerf.errors import ParameterError
from handnerf.hand.hand_model import ManoParams
from handnerf.train.losses import mask_loss, photometric_loss
from handnerf.train.pose_refinement import PoseRefiner, held_targets, silhouette_band
from handnerf.train.rays import RaySampler, ViewStack
from handnerf.train.silhouette_fit import SilhouetteFitConfig, fit_silhouette_corrections


@dataclass
class FramePoseConfig:
    """How one frame's pose is fitted (defaults: the demo fit's refinement settings)."""

    #: Photometric steps after the silhouette fit (0: none). Measured on the demo
    #: capture's novel poses (handavatar, refined masks): silhouettes alone 27.15 dB; then
    #: 100 steps at lr 5e-3 23.22 dB (the poses wander), at 5e-4 27.06 dB.
    steps: int = 0
    batch_rays: int = 1024
    lr: float = 5e-3
    w_mask: float = 0.1
    w_prior: float = 1e-4
    mask_band: int = 6
    refresh_every: int = 10
    seed: int = 0
    #: Steps of the silhouette fit first (:mod:`handnerf.train.silhouette_fit`; 0: none).
    silhouette_steps: int = 150


def fit_frame_pose(
    avatar: torch.nn.Module,
    mano: ManoParams,
    views: ViewStack,
    cfg: FramePoseConfig | None = None,
) -> ManoParams:
    """``mano`` (1 frame) corrected to fit ``views`` (all of that frame: ``frame_ids`` 0)
    with ``avatar`` (a :class:`~handnerf.model.avatar.HandAvatar`) frozen.

    ``views.masks`` are the given MANO's silhouettes: held only away from their edge
    (``cfg.mask_band`` px), as in the fit. Returns the refined parameters (1 row, detached,
    on ``mano``'s device).
    """
    cfg = cfg or FramePoseConfig()
    if len(mano) != 1:
        raise ParameterError(f"fit_frame_pose: one frame's MANO expected, got {len(mano)}")
    if len(views) == 0 or bool((views.frame_ids != 0).any()):
        raise ParameterError("fit_frame_pose: views of the one frame (frame_ids 0) expected")
    device = next(avatar.parameters()).device
    frozen = [p for p in avatar.parameters() if p.requires_grad]
    was_training = avatar.training
    for p in frozen:
        p.requires_grad_(False)
    try:
        refiner = PoseRefiner(avatar, mano, [("", 0)], device)
        if cfg.silhouette_steps > 0:
            fit_silhouette_corrections(
                refiner.hand_model,
                refiner.subject_mano(corrected=False),
                refiner.corrections,
                views,
                SilhouetteFitConfig(steps=cfg.silhouette_steps, band=cfg.mask_band),
            )
        if cfg.steps > 0:
            _photometric_steps(avatar, refiner, views, cfg)
        refined = refiner.refined()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        avatar.train(was_training)
    return ManoParams(
        *(x.to(mano.global_orient.device) for x in (refined.global_orient, refined.hand_pose)),
        betas=mano.betas,
        transl=refined.transl.to(mano.transl.device),
    )


def _photometric_steps(
    avatar: torch.nn.Module, refiner: PoseRefiner, views: ViewStack, cfg: FramePoseConfig
) -> None:
    """``cfg.steps`` steps of ``refiner``'s corrections against ``views`` rendered by the
    frozen ``avatar`` (the fit's refinement: same losses, band and rebuilds)."""
    device = refiner.device
    optimizer = torch.optim.Adam(refiner.corrections.parameters(), lr=cfg.lr, eps=1e-15)
    rays = RaySampler(views, seed=cfg.seed, uncertain=silhouette_band(views.masks, cfg.mask_band))
    generator = torch.Generator().manual_seed(cfg.seed)
    frames = refiner.pose_frames()
    avatar.train()
    for step in range(cfg.steps):
        batch = rays.sample(cfg.batch_rays).to(device)
        refiner.attach_gradient(frames)
        bg = torch.rand(len(batch), 3, generator=generator).to(device)
        target, bg, trusted = held_targets(batch.rgb, batch.mask, batch.uncertain, bg)
        out = avatar.render_rays(frames, batch.rays, bg, training=True)
        loss = photometric_loss(out["rgb"].float(), target, "huber")
        loss = loss + cfg.w_prior * refiner.prior()
        if cfg.w_mask > 0 and bool(trusted.any()):
            loss = loss + cfg.w_mask * mask_loss(out["opacity"][trusted], batch.mask[trusted])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % max(cfg.refresh_every, 1) == 0:
            frames = refiner.pose_frames()
