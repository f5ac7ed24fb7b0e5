"""The hand(s) a fit models: one hand (``data.hand=right|left``) or both (``both``).

:class:`FitHands` answers, for either case, what the fit's data preparation, trainer and
run loader ask of "the hand": its MANO per frame (a :class:`ManoParams`, or one per side
for two hands), posed vertices for the crops, MANO masks, the subject's betas, the hand
identity a checkpoint records, the triangles of the training silhouettes, and the avatar.
A one-hand fit goes through exactly the calls it made before (bit-identical results).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from handnerf.data.interhand import FrameView
from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.hand.identity import hands_identity
from handnerf.model.avatar import AvatarConfig, HandAvatar
from handnerf.model.two_hands import SIDES, TwoHandAvatar

#: A fit's MANO parameters of T frames: one hand's, or ``{side: ManoParams}`` for both.
FitMano = Union[ManoParams, dict[str, ManoParams]]  # noqa: UP007 (a runtime alias)


def mano_to(mano: FitMano, device: torch.device | str) -> FitMano:
    """``mano`` (either kind) on ``device``."""
    if isinstance(mano, dict):
        return {side: params.to(device) for side, params in mano.items()}
    return mano.to(device)


def map_mano(mano: FitMano, fn: Callable[[str | None, ManoParams], ManoParams]) -> FitMano:
    """``fn(side, params)`` applied to one hand's ``mano`` (side None) or to each side's."""
    if isinstance(mano, dict):
        return {side: fn(side, params) for side, params in mano.items()}
    return fn(None, mano)


def mano_length(mano: FitMano) -> int:
    """How many frames ``mano`` (either kind) holds."""
    return len(mano["right"]) if isinstance(mano, dict) else len(mano)


@dataclass
class FitHands:
    """The hand model(s) of a fit: ``models[side]`` for each side it models."""

    models: dict[str, HandModel]

    @classmethod
    def load(cls, hand: str, mano_dir: str | None, procedural: str | None) -> FitHands:
        """The hand models of ``data.hand`` (``'both'``: right and left)."""
        folder = Path(mano_dir) if mano_dir else None
        sides = SIDES if hand == "both" else (hand,)
        return cls(
            {side: HandModel.from_folder(folder, side, procedural=procedural) for side in sides}
        )

    @property
    def both(self) -> bool:
        return len(self.models) == 2

    @property
    def first(self) -> HandModel:
        """The one hand's model (the right one's for two hands: file checks, procedural metadata)."""
        return next(iter(self.models.values()))

    def frame_mano(self, views: Sequence[FrameView], keys: Sequence[tuple[str, int]]) -> FitMano:
        """MANO of the frames ``keys`` ((seq, frame) each), see :func:`frame_mano`."""
        return frame_mano(views, keys, "both" if self.both else self.first.side)

    def posed_vertices(self, mano: FitMano) -> np.ndarray:
        """(T, V, 3) posed vertices (both hands: right's then left's) of every frame."""
        with torch.no_grad():
            if not isinstance(mano, dict):
                return self.first(mano).vertices.cpu().numpy()
            return np.concatenate(
                [self.models[side](mano[side]).vertices.cpu().numpy() for side in SIDES], axis=1
            )

    def masker(self, cache: Path | None) -> Any:
        """A :class:`ManoMasker` (one hand) or :class:`TwoHandMasker` (union masks)."""
        from handnerf.data.masks import ManoMasker, MaskCache
        from handnerf.data.two_hand_masks import TwoHandMasker

        mask_cache = MaskCache(cache) if cache is not None else None
        if self.both:
            return TwoHandMasker(self.models, cache=mask_cache)
        return ManoMasker(self.first, cache=mask_cache)

    def subject_betas(self, mano: FitMano) -> Tensor:
        """(10,) the one hand's shape, or (2, 10) right and left: each the mean of its
        training frames' betas (InterHand fits each frame's shape separately)."""
        if isinstance(mano, dict):
            return torch.stack([mano[side].betas.mean(0) for side in SIDES])
        return mano.betas.mean(0).clone()

    def identity(self) -> dict[str, str]:
        """What a checkpoint records of the hand model(s) (:func:`hands_identity`)."""
        return hands_identity(self.models, "both" if self.both else next(iter(self.models)))

    def faces(self) -> Tensor:
        """(F, 3) triangles of the posed vertices :meth:`posed_vertices` gives."""
        if not self.both:
            return self.first.faces
        right, left = self.models["right"], self.models["left"]
        return torch.cat([right.faces, left.faces + right.num_vertices])

    def avatar(
        self, cfg: AvatarConfig, betas: Tensor, n_cameras: int, device: torch.device | str = "cpu"
    ) -> Any:
        """A :class:`HandAvatar`, or a :class:`TwoHandAvatar` (``betas`` (2, 10)), built for
        ``device`` (it decides the device-dependent backends; move it there with ``.to``)."""
        if not self.both:
            return HandAvatar(cfg, self.first, betas, n_cameras=n_cameras, device=device)
        return TwoHandAvatar(
            cfg, self.models, {side: betas[i] for i, side in enumerate(SIDES)}, n_cameras, device
        )


def frame_mano(views: Sequence[FrameView], keys: Sequence[tuple[str, int]], hand: str) -> FitMano:
    """MANO of the frames ``keys`` ((seq, frame) each) of a ``hand`` selection (``'both'``:
    one :class:`ManoParams` per side), from the first view of each frame."""
    first: dict[tuple[str, int], FrameView] = {}
    for view in views:
        first.setdefault((view.seq_name, view.frame_idx), view)
    if hand != "both":
        return ManoParams.stack(
            [ManoParams.from_interhand(first[k].mano, where=f"frame {k}") for k in keys]
        )
    return {
        side: ManoParams.stack(
            [
                ManoParams.from_interhand(
                    first[k].hands_mano[side], where=first[k].mano_where_of(side)
                )
                for k in keys
            ]
        )
        for side in SIDES
    }
