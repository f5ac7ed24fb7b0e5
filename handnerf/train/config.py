"""The configuration tree of a fit (filled from ``configs/*.yaml`` + ``key=value``)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from handnerf.config import choice, config_from_dict
from handnerf.errors import CheckpointError
from handnerf.hand.procedural import DEFAULT_RESOLUTION, RESOLUTIONS
from handnerf.model.avatar import AvatarConfig
from handnerf.model.visibility import VisibilityConfig
from handnerf.train.losses import LossConfig


@dataclass
class DataConfig:
    """Which part of a capture to fit, and how its images are prepared."""

    split: str = choice("test", ("train", "val", "test"))
    capture: int = 0
    train_seq: str = "ROM04_RT_Occlusion"
    #: More sequences of the capture trained on with ``train_seq``: their views from the
    #: training cameras join the training set (``stride`` thins them too); their views from
    #: held-out cameras, and from cameras ``train_seq`` lacks, are not used. Held-out cameras,
    #: validation and novel-view evaluation stay ``train_seq``'s.
    extra_train_seqs: list[str] = field(default_factory=list)
    #: Sequence used for novel-pose evaluation (None: none).
    novel_pose_seq: str | None = "ROM03_RT_No_Occlusion"
    #: "both": two interacting hands (InterHand's _dh_ sequences) in one avatar.
    hand: str = choice("right", ("right", "left", "both"))
    #: Cameras kept out of training for novel-view evaluation; empty: every ``holdout_every``-th.
    holdout_cameras: list[str] = field(default_factory=list)
    holdout_every: int = 6
    #: Cameras to drop entirely (e.g. grayscale ones).
    exclude_cameras: list[str] = field(default_factory=list)
    stride: int = 1
    novel_pose_stride: int = 1
    #: Square crop around the hand: side = crop_scale * bbox, resized to crop_size px.
    crop_scale: float = 1.3
    crop_size: int = 128
    #: "mano": silhouettes rendered from MANO (what real data has); "gt": synthetic GT masks.
    mask_source: str = choice("mano", ("mano", "gt"))
    #: A user's MANO folder (MANO_RIGHT.pkl / MANO_LEFT.pkl); None: the procedural hand.
    mano_dir: str | None = None
    #: The procedural hand used without mano_dir: "mano" (778 vertices, pose correctives,
    #: what `handnerf synth` renders by default) or "dense" (3.6k vertices, none).
    procedural_hand: str = choice(DEFAULT_RESOLUTION, RESOLUTIONS)


@dataclass
class OptimConfig:
    lr_grid: float = 1e-2
    lr_mlp: float = 1e-2
    lr_camera: float = 5e-4
    weight_decay_mlp: float = 1e-6
    #: Learning rates decay exponentially to ``final_lr_factor`` of their start at the end.
    final_lr_factor: float = 0.05
    warmup_steps: int = 50
    #: Learning rate of the per-frame MANO corrections (train.refine_pose) in the fit,
    #: after the silhouette fit (train.pose_silhouette_steps); it decays with the others
    #: and starts after train.pose_refine_start steps. 0 (the default): the poses stay
    #: where the silhouette fit put them. Measured on the demo capture with 2 deg / 2 mm
    #: errors: 5e-3 left the frames 4.5 mm off (two diverged) where the silhouette fit had
    #: them 0.76 mm off; 1e-3 from step 200, 0.98 mm and -0.8 dB on held-out cameras
    #: (docs/benchmarks.md, "Pose refinement from silhouettes").
    pose_lr: float = 0.0


@dataclass
class TrainConfig:
    #: Optimiser steps of the fit.
    steps: int = 1500
    #: Rays per step (pixels of the training views, sampled across views and frames).
    batch_rays: int = 2048
    #: LPIPS patches per step (0 disables the perceptual loss) and their side in px.
    lpips_patches: int = 1
    lpips_patch_size: int = 32
    #: Background composited behind the avatar in training: a random colour per ray
    #: (the avatar cannot explain the background with density) or black.
    background: str = choice("random", ("random", "black"))
    #: Share of each batch's rays drawn from inside the hand mask.
    fg_fraction: float = 0.7
    #: Rays through a random point of their pixel (colour interpolated there; with MANO
    #: masks, the mask is that ray's own hit test of the posed mesh) instead of the centre:
    #: the silhouette is then learnt finer than the training resolution.
    jitter_rays: bool = True
    #: Steps between occupancy-grid updates.
    occupancy_every: int = 16
    #: Steps between lines of metrics.jsonl (and the progress bar's loss).
    log_every: int = 10
    #: Steps between validation renders of ``val_views`` held-out views.
    val_every: int = 500
    val_views: int = 4
    #: Steps between checkpoints (a killed fit resumes from the last one).
    checkpoint_every: int = 250
    #: Wall-clock budget in minutes (0: none): the fit stops cleanly with a checkpoint.
    max_minutes: float = 0.0
    #: Seed of ray sampling and initialisation.
    seed: int = 0
    #: auto (CUDA when present), cpu, cuda or cuda:N.
    device: str = "auto"
    #: Mixed precision on CUDA (ignored on CPU).
    amp: bool = True
    #: Non-finite losses tolerated (skipped steps with LR back-off) before stopping.
    max_bad_steps: int = 20
    #: Learn per-frame corrections of the given MANO fits (handnerf/train/pose_refinement.py).
    refine_pose: bool = False
    #: Steps of the field alone before the corrections move (a random field's gradient
    #: would only push them around).
    pose_refine_start: int = 50
    #: Before the first step, fit the given poses to the images' silhouettes in every
    #: training view for this many steps (handnerf/train/silhouette_fit.py; refine_pose
    #: only; 0: off). The photometric refinement starts from there.
    pose_silhouette_steps: int = 150
    #: Rebuild the posed frames and silhouettes from the refined pose every N steps (the
    #: gradient always sees the current pose; a rebuild costs ~4 tiny-fit steps).
    pose_refresh_every: int = 10
    #: With MANO masks (data.mask_source=mano), pixels within this many px of the given
    #: fit's silhouette, where its mask is wrong by the fit's error, are not held to it
    #: while refining (0: they are; the refined pose then stays at the given one).
    pose_mask_band: int = 6
    #: What those pixels' rays are held to instead. "image": the image's own silhouette
    #: (the hand brighter than the dark background, by each pixel's coverage, as the
    #: silhouette fit reads it), over the random background like every other ray. "none":
    #: no mask; the raw image over black, the capture's background. "none" lets the field
    #: put dark density around the hand there, which shows at other poses: the demo's
    #: novel poses scored 27.6 dB against 29.2 with "image" (docs/benchmarks.md).
    pose_band_masks: str = choice("image", ("image", "none"))
    #: Width (m) of the soft shell edge whose gradient pulls the refined mesh towards
    #: density the image wants beyond it (pose_refinement.soft_shell_with_pose_grad; 0: off).
    pose_shell_softness: float = 0.0


@dataclass
class FitConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: AvatarConfig = field(default_factory=AvatarConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _other_hand_before(saved: dict[str, Any]) -> bool:
    """``model.visibility.other_hand`` of a run saved before the key: false for a two-hand
    run with self-shadowing (each hand's visibility was cast against itself alone). Anywhere
    else the key changes nothing (one hand, or no visibility), so such a run trained exactly
    as one with today's default does, and resumes with it."""
    data = saved.get("data")
    model = saved.get("model")
    visibility = model.get("visibility") if isinstance(model, dict) else None
    two_hands = isinstance(data, dict) and data.get("hand") == "both"
    shadows = (
        isinstance(visibility, dict)
        and visibility.get("n_directions", VisibilityConfig.n_directions) != 0
    )
    return not (two_hands and shadows)


#: Keys added to the config after runs were already being saved, with the value that
#: reproduces how those runs were trained (not necessarily today's default), or a function
#: of the saved config dict giving it.
ADDED_KEYS: tuple[tuple[tuple[str, ...], Any], ...] = (
    # Before self-shadowing the colour MLP took no visibility inputs.
    (("model", "visibility"), asdict(VisibilityConfig(n_directions=0))),
    (("model", "field", "color_model"), "mlp"),
    (("model", "field", "shading_hidden_dim"), 32),
    # Before jittered rays every training ray went through its pixel's centre.
    (("train", "jitter_rays"), False),
    # Before the deformer's mesh modes emptiness was judged by the nearest posed vertex and
    # pose correctives were left in the canonical positions.
    (("model", "deformer", "near"), "vertex"),
    (("model", "deformer", "correctives"), False),
    # Before the MANO-resolution procedural hand became the default, it was the dense one.
    (("data", "procedural_hand"), "dense"),
    # Early ray termination only acts where no gradient is taken: a run saved before it
    # trained exactly as one with it does, so it resumes (and renders) with the default.
    (("model", "early_stop_eps"), 1e-4),
    # Training samples were always stratified before it became a choice.
    (("model", "sampler", "stratified"), True),
    # Pose refinement trusted the MANO masks everywhere before the uncertain band.
    (("train", "pose_mask_band"), 0),
    (("train", "pose_shell_softness"), 0.0),
    # The band was held to the raw image over black, without a mask, before its rays took
    # the image's own silhouette.
    (("train", "pose_band_masks"), "none"),
    # Pose refinement started from the given fits before the silhouette fit.
    (("train", "pose_silhouette_steps"), 0),
    # Every run trained on train_seq alone before extra training sequences.
    (("data", "extra_train_seqs"), []),
    # Each hand of a two-hand avatar cast its visibility against itself alone before the
    # other hand's mesh cast shadows too (only where that changed
    # anything: see _other_hand_before).
    (("model", "visibility", "other_hand"), _other_hand_before),
    # The colour's features came from the density MLP before they had a grid of their own.
    (("model", "field", "separate_color_grid"), False),
    (("model", "field", "visibility_lights"), 0),
    # Training coloured every evaluated sample before the colour waited for the weights.
    (("model", "train_color_min_weight"), 0.0),
)


#: Keys older runs saved that are no longer config: values derived from the data, now
#: passed to the model as arguments (the rig's camera count, the visibility width).
REMOVED_KEYS: tuple[tuple[str, ...], ...] = (
    ("model", "field", "n_cameras"),
    ("model", "field", "n_visibility"),
)


def upgrade_saved_config(saved: Any) -> Any:
    """A checkpoint's config dict in today's layout, keeping what its weights were trained with.

    Every key of :data:`ADDED_KEYS` a saved config lacks is filled with the value that
    reproduces its training: runs saved before self-shadowing read as
    ``model.visibility.n_directions=0``, before jittered rays as ``train.jitter_rays=false``,
    two-hand runs with self-shadowing before the other hand's shadows as
    ``model.visibility.other_hand=false``.
    Render and eval load such runs unchanged; ``--resume`` needs those values given as
    overrides (and names the key otherwise). Keys of :data:`REMOVED_KEYS` are dropped.
    Anything else is returned unchanged.
    """
    if not isinstance(saved, dict):
        return saved
    upgraded = dict(saved)
    for path, value in ADDED_KEYS:
        parent = _copied_parent(upgraded, path)
        if parent is not None and path[-1] not in parent:
            # Keys filled earlier in the table are seen: a function reads the upgraded dict.
            filled = value(upgraded) if callable(value) else value
            # A copy: the table's lists and dicts must not be shared with (and changed via) a run's.
            parent[path[-1]] = copy.deepcopy(filled)
    for path in REMOVED_KEYS:
        parent = _copied_parent(upgraded, path)
        if parent is not None:
            parent.pop(path[-1], None)
    return upgraded


def saved_fit_config(state: dict[str, Any], where: str | Path) -> FitConfig:
    """The :class:`FitConfig` a checkpoint ``state`` (read from ``where``) was trained with,
    upgraded to today's layout (:func:`upgrade_saved_config`)."""
    if "config" not in state:
        raise CheckpointError(f"{where}: missing 'config' (not a complete fit checkpoint)")
    return config_from_dict(FitConfig, upgrade_saved_config(state["config"]))


def _copied_parent(tree: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The dict holding ``path``'s last key in ``tree``, its ancestors copied on the way
    (the checkpoint's own dicts are never modified); None where a level is not a dict."""
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            return None
        node[key] = node = dict(child)
    return node
