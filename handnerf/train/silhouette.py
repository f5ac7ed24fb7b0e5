"""Exact hand silhouettes for arbitrary rays: does a ray hit the frame's posed mesh?

The MANO masks of a capture are rasterised at the training resolution; jittered training
rays (:mod:`handnerf.train.rays`) need the mask at any point of a pixel, which is a ray
cast against the same posed mesh (Embree, via trimesh; :mod:`handnerf.geometry.raycast`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from handnerf.errors import ParameterError
from handnerf.geometry.raycast import mesh_intersector


class MeshSilhouette:
    """``silhouette(origins (R,3), dirs (R,3), frame_ids (R,)) -> (R,) bool`` for the
    posed meshes ``vertices`` (T,V,3) with triangles ``faces`` (F,3).

    One Embree scene per frame, built the first time a ray needs it.
    """

    def __init__(self, vertices: Tensor, faces: Tensor) -> None:
        if vertices.ndim != 3 or vertices.shape[-1] != 3:
            raise ParameterError(
                f"MeshSilhouette: vertices must be (T,V,3), got {tuple(vertices.shape)}"
            )
        if faces.ndim != 2 or faces.shape[-1] != 3:
            raise ParameterError(f"MeshSilhouette: faces must be (F,3), got {tuple(faces.shape)}")
        self.vertices = vertices.detach().cpu().double().numpy()
        self.faces = faces.detach().cpu().long().numpy()
        self._scenes: dict[int, object] = {}

    def __len__(self) -> int:
        return int(self.vertices.shape[0])

    def _scene(self, frame: int) -> object:
        if frame not in self._scenes:
            self._scenes[frame] = mesh_intersector(self.vertices[frame], self.faces)
        return self._scenes[frame]

    def __call__(self, origins: Tensor, dirs: Tensor, frame_ids: Tensor) -> Tensor:
        n = origins.shape[0]
        if dirs.shape != (n, 3) or origins.shape != (n, 3) or frame_ids.shape != (n,):
            raise ParameterError(
                "MeshSilhouette: origins, dirs (R,3) and frame_ids (R,) expected, got "
                f"{tuple(origins.shape)}, {tuple(dirs.shape)}, {tuple(frame_ids.shape)}"
            )
        ids = frame_ids.detach().cpu().long().numpy()
        if n and (ids.min() < 0 or ids.max() >= len(self)):
            raise ParameterError(f"MeshSilhouette: frame_ids must lie in [0, {len(self)})")
        o = origins.detach().cpu().double().numpy()
        d = dirs.detach().cpu().double().numpy()
        hit = np.zeros(n, dtype=bool)
        for frame in np.unique(ids):
            rows = np.nonzero(ids == frame)[0]
            scene = self._scene(int(frame))
            hit[rows] = scene.intersects_any(o[rows], d[rows])  # type: ignore[attr-defined]
        return torch.from_numpy(hit).to(origins.device)
