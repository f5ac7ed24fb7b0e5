"""Open a finished (or interrupted) fit for rendering and evaluation.

Reads what :mod:`handnerf.train` wrote (``run.json``, the config and the checkpoint) and
rebuilds the :class:`HandAvatar`; rendering it is :func:`handnerf.model.renderer.render_camera`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from handnerf.errors import CheckpointError
from handnerf.files import pick_device
from handnerf.hand.hand_model import ManoParams
from handnerf.hand.identity import same_hand
from handnerf.model.avatar import HandAvatar
from handnerf.train.checkpoint import LATEST, load_checkpoint
from handnerf.train.config import FitConfig, saved_fit_config
from handnerf.train.fit_hands import FitHands
from handnerf.train.pose_refinement import refined_mano_of


@dataclass
class TrainedRun:
    run_dir: Path
    cfg: FitConfig
    info: dict[str, Any]
    avatar: HandAvatar
    step: int
    camera_names: list[str]
    device: torch.device
    #: (seq, frame) -> refined MANO parameters of the training frames (train.refine_pose).
    refined_mano: dict[tuple[str, int], ManoParams] | None = None
    #: The hand model(s) of the fit (None: the avatar's one hand).
    hands: FitHands | None = None

    @property
    def fit_hands(self) -> FitHands:
        """The hand model(s) the avatar was fitted with (two for ``data.hand=both``)."""
        return self.hands or FitHands({self.avatar.hand_model.side: self.avatar.hand_model})

    def frame_mano(self, seq: str, frame: int, given: ManoParams) -> ManoParams:
        """A frame's parameters: the fit's refined ones for a training frame, else ``given``."""
        return (self.refined_mano or {}).get((seq, int(frame)), given)

    @property
    def data_root(self) -> Path:
        return Path(self.info["data_root"])

    def camera_index(self, camera: str) -> int | None:
        """Index of a training-rig camera (its colour affine), None for unknown cameras."""
        return self.camera_names.index(camera) if camera in self.camera_names else None


def load_run(run_dir: Path, device: str = "auto", checkpoint: Path | None = None) -> TrainedRun:
    """Rebuild the avatar of ``run_dir`` from its checkpoint (weights_only loading)."""
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise CheckpointError(f"{run_dir} is not a handnerf run folder (no run.json)")
    try:
        info = json.loads(info_path.read_text())
        info["data_root"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{info_path}: unreadable or missing 'data_root' ({exc})") from exc
    path = checkpoint or run_dir / "checkpoints" / LATEST
    state = load_checkpoint(path)
    cfg = saved_fit_config(state, path)
    try:
        camera_names = list(state["camera_names"])
        betas = state["betas"]
        model_state = state["model"]
    except KeyError as exc:
        raise CheckpointError(f"{path}: missing {exc} (not a complete fit checkpoint)") from exc
    dev = pick_device(device)
    mano_dir = Path(cfg.data.mano_dir) if cfg.data.mano_dir else None
    hands = FitHands.load(cfg.data.hand, cfg.data.mano_dir, cfg.data.procedural_hand)
    if not same_hand(state.get("hand_identity"), hands.identity()):
        raise CheckpointError(
            f"{path}: trained with hand model {state.get('hand_identity')}, but "
            f"{mano_dir or 'the procedural hand'} gives {hands.identity()}"
        )
    # data.hand=both: a TwoHandAvatar (the same interface, state "hands.right.*", ...).
    avatar = hands.avatar(cfg.model, betas, n_cameras=len(camera_names), device=dev)
    try:
        avatar.load_state_dict(model_state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the configured model ({exc})") from exc
    avatar.to(dev).eval()
    return TrainedRun(
        run_dir=run_dir,
        cfg=cfg,
        info=info,
        avatar=avatar,
        step=int(state["step"]),
        camera_names=camera_names,
        device=dev,
        refined_mano=refined_mano_of(state),
        hands=hands,
    )
