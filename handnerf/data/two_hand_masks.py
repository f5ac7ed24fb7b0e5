"""MANO masks of two-hand frames: the union of both hands, and each hand's visible part.

A two-hand view (``FrameView.hand == 'both'``) is split into one single-hand view per side
(:func:`side_view`), whose silhouettes a :class:`~handnerf.data.masks.ManoMasker` per side
fills and caches exactly like a one-hand selection's (same cache keys: a frame's right-hand
silhouette is the same file whichever selection asked for it). The frame's mask is the
union of the two silhouettes (:meth:`TwoHandMasker.mask`): what the images show of the
hands. Each hand's own mask keeps only the pixels where it is in front
(:meth:`TwoHandMasker.visible`): a pixel covered by both silhouettes belongs to the hand
that the ray through its centre meets first (Embree on both posed meshes); the visible
masks are disjoint and their union is the frame's mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from handnerf.data.interhand import HANDS, FrameView
from handnerf.data.masks import DEFAULT_SUPERSAMPLE, ManoMasker, MaskCache
from handnerf.errors import DataError
from handnerf.geometry.raycast import mesh_intersector


def side_view(view: FrameView, side: str) -> FrameView:
    """The one-hand view of ``side`` in a two-hand ``view`` (its MANO, keypoints and hand).

    A one-hand view of ``side`` is returned as is; another side is a DataError."""
    if view.two_hands is None:
        if view.hand != side:
            raise DataError(f"{view.image_path}: a {view.hand}-hand view has no {side} hand")
        return view
    keypoints, valid = view.keypoints_world, view.keypoints_valid
    rows = slice(0, 21) if side == "right" else slice(21, 42)
    return dataclasses.replace(
        view,
        hand=side,
        mano=view.two_hands[side],
        two_hands=None,
        keypoints_world=None if keypoints is None else keypoints[rows],
        keypoints_valid=None if valid is None else valid[rows],
    )


class TwoHandMasker:
    """Masks of two-hand views; ``hand_models`` maps ``'right'``/``'left'`` to each side's
    :class:`~handnerf.hand.hand_model.HandModel`. Offers :class:`ManoMasker`'s ``mask`` /
    ``masks`` (the union) and ``posed_vertices`` (both hands' vertices, right first)."""

    def __init__(
        self,
        hand_models: dict[str, Any],
        cache: MaskCache | None = None,
        supersample: int = DEFAULT_SUPERSAMPLE,
    ) -> None:
        missing = [side for side in HANDS if side not in hand_models]
        if missing:
            raise DataError(f"TwoHandMasker needs a hand model per side; missing: {missing}")
        self.sides = {side: ManoMasker(hand_models[side], cache, supersample) for side in HANDS}

    def silhouettes(self, view: FrameView) -> dict[str, np.ndarray]:
        """``{side: (H, W) bool}`` whole silhouette of each hand (no occlusion)."""
        return {side: m.mask(side_view(view, side)) for side, m in self.sides.items()}

    def mask(self, view: FrameView) -> np.ndarray:
        """(H, W) bool union of both hands' silhouettes."""
        right, left = self.silhouettes(view).values()
        return right | left

    def masks(self, views: Sequence[FrameView]) -> list[np.ndarray]:
        """Union masks of many views (each side's frames posed in one batch first)."""
        for side, masker in self.sides.items():
            masker.posed_vertices([side_view(v, side) for v in views])
        return [self.mask(v) for v in views]

    def posed_vertices(self, views: Sequence[FrameView]) -> list[np.ndarray]:
        """(2 V, 3) posed world vertices of each view: the right hand's, then the left's."""
        per_side = [
            m.posed_vertices([side_view(v, s) for v in views]) for s, m in self.sides.items()
        ]
        return [np.concatenate(pair) for pair in zip(*per_side, strict=True)]

    def visible(self, view: FrameView) -> dict[str, np.ndarray]:
        """``{side: (H, W) bool}``: the pixels of the union mask where ``side`` is in front
        (disjoint; together the union mask)."""
        silhouettes = self.silhouettes(view)
        right, left = silhouettes["right"], silhouettes["left"]
        both = right & left
        visible = {"right": right & ~left, "left": left & ~right}
        if both.any():
            (vertices,) = self.posed_vertices([view])
            right_faces = self.sides["right"].faces
            n_right = vertices.shape[0] - self.sides["left"].hand_model.num_vertices
            faces = np.concatenate([right_faces, self.sides["left"].faces + n_right])
            rows, cols = np.nonzero(both)
            origins, directions = view.camera.world_rays(np.stack([cols, rows], axis=-1))
            scene: Any = mesh_intersector(vertices, faces)
            left_first = np.asarray(scene.intersects_first(origins, directions)) >= len(right_faces)
            # A centre ray that misses both (a pixel covered by two slivers) stays right's.
            visible["right"][rows[~left_first], cols[~left_first]] = True
            visible["left"][rows[left_first], cols[left_first]] = True
        return visible
