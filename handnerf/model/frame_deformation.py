"""Querying prepared frames: posed samples -> canonical positions (inverse LBS).

:class:`FrameDeformation` holds what ``InverseLBSDeformer.prepare_frames``
(:mod:`handnerf.model.deformer`, where the method as a whole is described) built for a
batch of frames, and answers queries: the neighbours of each sample
(:mod:`handnerf.model.neighbour_search`) or its closest point of the posed mesh
(:mod:`handnerf.model.surface_search`) give its blend weights; the blended 3x4 transform is
inverted (:func:`_finish`) into the :class:`DeformResult`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields

import torch

from handnerf.errors import ParameterError
from handnerf.model.blend_math import (
    MIN_DETERMINANT,
    blend_quaternions,
    inverse_3x3,
    quaternion_to_matrix,
)
from handnerf.model.deformer_config import DeformerConfig
from handnerf.model.neighbour_search import GridField, knn, neighbour_weights, sample_grid
from handnerf.model.surface_search import MeshTables, TriangleScan, TriangleTrees, closest_triangles

# The "surface" blend looks for the closest triangle among those around this many of the
# sample's nearest vertices (measured on the demo poses: 2 finds the same triangle as 4
# for surface samples, 1 misses it near long, thin triangles).
_SURFACE_CANDIDATE_VERTICES = 2
# The mesh modes search every sample, off-surface ones included, on coarse meshes whose
# nearest vertices can all be corners of a neighbouring fan: they look around one more
# (measured on the coarse test hand: with 2, 0.15 % of surface samples miss their triangle).
_MESH_CANDIDATE_VERTICES = 3
# Samples whose neighbours' inverse transforms agree within this (metres) keep the
# distance-weighted blend: the closest-triangle search would move them by less.
_SURFACE_AGREEMENT = 2e-5


def fp32_geometry(device: torch.device) -> AbstractContextManager:
    """Autocast off on ``device``: positions are metres in a box of ~0.3 m, and a float16
    (or bfloat16) matrix product would move them by ~0.1 mm, a cell of the finest hash
    level. Geometry (deform, refine, attribute blending, pose gradients) runs under it, so
    a mixed-precision training step or render gets the same canonical positions as fp32."""
    return torch.autocast(device.type, enabled=False)


@dataclass
class DeformResult:
    """Canonical positions of posed samples.

    Attributes:
        canonical: (N, 3) canonical-space positions (meaningless where ``valid`` is false).
        valid: (N,) bool, the sample lies within ``max_distance`` of the posed surface and
            its blended transform is invertible.
        rotation: (N, 3, 3) blended bone rotation, canonical → posed (orthonormal); None
            only from ``deform(..., orient=False)`` (see :meth:`FrameDeformation.orient`,
            which may add the normal alone).
        distance: (N,) distance in metres to the nearest posed vertex, or with
            ``near="mesh"`` to the closest point of the posed mesh (``inf`` or any value
            above ``max_distance`` beyond the kd-tree's search bound, or outside the grid
            backend's box).
        normal: (N, 3) unit posed-surface normal blended from the neighbours' vertex
            normals with the skinning blend weights (barycentric at the closest point in
            the mesh modes) (kNN backends, when the frames were
            prepared with ``vertex_normals``), else None.
        neighbor_ids, neighbor_weights: (N, k) global vertex ids (``frame * V + vertex``)
            of the sample's neighbours and their blend weights (kNN backends), else None;
            :meth:`FrameDeformation.blend_attributes` blends per-vertex values with them.
    """

    canonical: torch.Tensor
    valid: torch.Tensor
    rotation: torch.Tensor | None
    distance: torch.Tensor
    normal: torch.Tensor | None = None
    neighbor_ids: torch.Tensor | None = None
    neighbor_weights: torch.Tensor | None = None

    def subset(self, rows: torch.Tensor) -> DeformResult:
        """The result of the samples ``rows`` ((M,) indices or (N,) bool) only."""
        if rows.dtype == torch.bool:
            rows = torch.nonzero(rows).squeeze(1)
        # index_select, not advanced indexing: the same rows, several times faster on
        # the CPU (the fast render path takes a subset of every round's samples).
        return DeformResult(
            **{
                f.name: None
                if getattr(self, f.name) is None
                else getattr(self, f.name).index_select(0, rows)
                for f in fields(self)
            }
        )


@dataclass
class FrameDeformation:
    """The per-frame lookup structures of a batch of ``F`` frames (see ``prepare_frames``).

    Attributes:
        posed_vertices: (F, V, 3) posed vertices.
        vertex_affine: (F * V, 12) row-major 3x4 blended transform of each vertex.
        vertex_quaternion: (F * V, 4) unit quaternion (w, x, y, z) of each vertex's blended
            bone rotation.
        backend: the resolved lookup backend.
        trees: one ``cKDTree`` per frame (``kdtree`` backend), else ``None``.
        grid: the voxel grids (``grid`` backend), else ``None``.
    """

    posed_vertices: torch.Tensor
    vertex_affine: torch.Tensor
    vertex_quaternion: torch.Tensor
    backend: str
    trees: list | None = None
    grid: GridField | None = None
    vertex_normals: torch.Tensor | None = None  # (F * V, 3) posed vertex normals
    vertex_attributes: torch.Tensor | None = None  # (F * V, C), see blend_attributes
    mesh: MeshTables | None = None  # the posed triangles (blend="surface")
    vertex_inverse: torch.Tensor | None = None  # (F * V, 12) inverse of vertex_affine
    canonical_vertices: torch.Tensor | None = None  # (F * V, 3), correctives=True
    #: near="mesh": every sample's exact closest point of the whole mesh (no neighbour
    #: search needed): libigl trees on the CPU (kdtree backend), else the PyTorch scan.
    triangle_trees: TriangleTrees | TriangleScan | None = None
    config: DeformerConfig = field(default=None)  # type: ignore[assignment]

    @property
    def on_mesh(self) -> bool:
        """Whether every sample within reach gets its closest point on the mesh."""
        return self.config.near == "mesh" or self.config.correctives

    @property
    def num_frames(self) -> int:
        return int(self.posed_vertices.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.posed_vertices.shape[1])

    @property
    def device(self) -> torch.device:
        return self.posed_vertices.device

    def deform(
        self,
        points: torch.Tensor,
        frame_ids: torch.Tensor | None = None,
        surface: bool = True,
        orient: bool = True,
        reach_only: bool = False,
    ) -> DeformResult:
        """Map posed samples to canonical space.

        Args:
            points: (N, 3) posed world positions (metres), on this structure's device.
            frame_ids: (N,) integer index into the prepared frames; may be ``None`` when
                a single frame was prepared.
            surface: with ``blend="surface"``, False keeps the distance-weighted blend
                (cheaper; :meth:`refine_to_surface` can finish the job for a subset).
                Ignored in the mesh modes (``near="mesh"`` or ``correctives``), where the
                closest point decides emptiness and so is found for every sample.
            orient: False leaves ``rotation`` and ``normal`` None (kNN backends): the
                occupancy test needs neither; :meth:`orient` adds them for a subset.
            reach_only: with ``orient=False`` and the whole-mesh search (``near="mesh"``),
                samples beyond ``max_distance`` are not blended: their ``canonical`` is the
                point itself (they are invalid, so an occupancy test drops them anyway).
        """
        points, frame_ids = self._check_query(points, frame_ids)
        if points.shape[0] == 0:
            return _empty_result(points, self)
        with torch.no_grad(), fp32_geometry(self.device):
            if self.backend == "grid":
                return self._deform_grid(points, frame_ids)
            if reach_only and not orient and self.triangle_trees is not None:
                return self._deform_reached(points, frame_ids)
            return self._deform_knn(points, frame_ids, surface, orient)

    def _check_query(
        self, points: torch.Tensor, frame_ids: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 3:
            shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points)
            raise ParameterError(f"deform: points must be an (N, 3) tensor, got {shape}")
        if points.device != self.device:
            raise ParameterError(
                f"deform: points are on {points.device} but the frames were prepared on "
                f"{self.device}"
            )
        points = points.detach().to(self.posed_vertices.dtype)
        n = points.shape[0]
        if frame_ids is None:
            if self.num_frames != 1:
                raise ParameterError(
                    f"deform: frame_ids is required when {self.num_frames} frames are prepared"
                )
            frame_ids = torch.zeros(n, dtype=torch.long, device=self.device)
        if (
            not isinstance(frame_ids, torch.Tensor)
            or frame_ids.shape != (n,)
            or frame_ids.dtype.is_floating_point
        ):
            shape = (
                tuple(frame_ids.shape) if isinstance(frame_ids, torch.Tensor) else type(frame_ids)
            )
            raise ParameterError(
                f"deform: frame_ids must be an integer tensor of shape ({n},), got {shape}"
            )
        frame_ids = frame_ids.to(device=self.device, dtype=torch.long)
        if n and (int(frame_ids.min()) < 0 or int(frame_ids.max()) >= self.num_frames):
            raise ParameterError(
                f"deform: frame_ids must lie in [0, {self.num_frames}), got range "
                f"[{int(frame_ids.min())}, {int(frame_ids.max())}]"
            )
        return points, frame_ids

    def _deform_knn(
        self, points: torch.Tensor, frame_ids: torch.Tensor, surface: bool, orient: bool = True
    ) -> DeformResult:
        cfg = self.config
        if self.triangle_trees is not None:
            return self._deform_closest(points, frame_ids, orient)
        distances, ids = _knn(self, points, frame_ids)
        weights = neighbour_weights(distances, cfg)
        global_ids = frame_ids[:, None] * self.num_vertices + ids  # (N, k)
        distance = distances[:, 0]
        if self.on_mesh:
            self._mesh_weights(points, frame_ids, ids, global_ids, weights, distance)
        elif surface and cfg.blend == "surface":
            self._surface_weights(points, frame_ids, global_ids, weights)
        return self._assemble(points, global_ids, weights, distance, orient)

    def _deform_closest(
        self, points: torch.Tensor, frame_ids: torch.Tensor, orient: bool = True
    ) -> DeformResult:
        """near="mesh" with libigl: every (N, 3) sample's closest point on its frame's mesh
        gives its weights (the three corners' barycentrics) and its distance."""
        assert self.triangle_trees is not None
        tri_ids, bary, dist2 = self.triangle_trees.closest(points, frame_ids)
        global_ids = frame_ids[:, None] * self.num_vertices + tri_ids  # (N, 3)
        return self._assemble(points, global_ids, bary, dist2.sqrt(), orient)

    def _deform_reached(self, points: torch.Tensor, frame_ids: torch.Tensor) -> DeformResult:
        """``_deform_closest`` without orientation, blended only within reach. With the
        reach grid (:meth:`ReachGrid.deform_within
        <handnerf.model.reach_grid.ReachGrid.deform_within>`) samples beyond reach get
        neighbour weights 0, and beyond its ``limit`` a lower bound of their distance:
        they are empty either way."""
        assert self.triangle_trees is not None
        grid = self.triangle_trees.reach_grid(self.config.max_distance)
        if grid is not None and points.device.type == "cpu":
            # The search and the blend fused (numba); the same arithmetic as below.
            canonical, valid, distance, ids, weights = grid.deform_within(
                points,
                frame_ids,
                self.vertex_affine,
                self.posed_vertices,
                self.canonical_vertices,
                self.config.max_distance,
                MIN_DETERMINANT,
            )
            return DeformResult(
                canonical=canonical,
                valid=valid,
                rotation=None,
                distance=distance,
                neighbor_ids=ids,
                neighbor_weights=weights,
            )
        tri_ids, bary, dist2 = self.triangle_trees.closest(points, frame_ids)
        global_ids = frame_ids[:, None] * self.num_vertices + tri_ids  # (N, 3)
        distance = dist2.sqrt()
        near = torch.nonzero(distance <= self.config.max_distance).squeeze(1)
        part = self._assemble(points[near], global_ids[near], bary[near], distance[near], False)
        canonical = points.clone()
        canonical[near] = part.canonical
        valid = torch.zeros_like(distance, dtype=torch.bool)
        valid[near] = part.valid
        return DeformResult(
            canonical=canonical,
            valid=valid,
            rotation=None,
            distance=distance,
            neighbor_ids=global_ids,
            neighbor_weights=bary,
        )

    def _mesh_weights(
        self,
        points: torch.Tensor,
        frame_ids: torch.Tensor,
        ids: torch.Tensor,
        global_ids: torch.Tensor,
        weights: torch.Tensor,
        distance: torch.Tensor,
    ) -> None:
        """``correctives`` with near="vertex": give every sample within ``max_distance`` of a
        vertex (the (N,) ``distance``) its closest triangle's corners and barycentric weights,
        in place in the (N, k) ``global_ids`` and ``weights`` (``ids``: the same neighbours
        local to their frame). near="mesh" never comes here: its frames carry
        ``triangle_trees``, which search the whole mesh."""
        assert self.mesh is not None
        reached = torch.nonzero(distance <= self.config.max_distance).squeeze(1)
        if reached.numel() == 0:
            return
        frames_of = frame_ids[reached]
        near = ids[reached, :_MESH_CANDIDATE_VERTICES]
        tri_ids, tri_weights, _ = closest_triangles(self.mesh, points[reached], frames_of, near)
        tri_ids = frames_of[:, None] * self.num_vertices + tri_ids
        global_ids[reached, :3] = tri_ids
        global_ids[reached, 3:] = tri_ids[:, :1]
        weights[reached, :3] = tri_weights
        weights[reached, 3:] = 0.0

    def _assemble(
        self,
        points: torch.Tensor,
        global_ids: torch.Tensor,
        weights: torch.Tensor,
        distance: torch.Tensor,
        orient: bool = True,
    ) -> DeformResult:
        affine = (weights[..., None] * self.vertex_affine[global_ids]).sum(dim=1)  # (N, 12)
        anchor = None
        if self.canonical_vertices is not None:
            # The blended posed point and its canonical twin (the closest point of the
            # mesh, within reach): the canonical position is the twin plus the offset.
            flat = self.posed_vertices.reshape(-1, 3)
            posed_anchor = (weights[..., None] * flat[global_ids]).sum(dim=1)
            canonical_anchor = (weights[..., None] * self.canonical_vertices[global_ids]).sum(1)
            anchor = (posed_anchor, canonical_anchor)
        result = _finish(points, affine, None, distance, self.config.max_distance, anchor)
        result.neighbor_ids, result.neighbor_weights = global_ids, weights
        return self.orient(result) if orient else result

    def orient(self, result: DeformResult, rotation: bool = True) -> DeformResult:
        """``result`` (from ``deform(..., orient=False)``, kNN backends) with its blended
        rotation and normal added, in place; computed only for the samples that need
        them (the field's colour, not the occupancy test). ``rotation=False`` adds the
        normal alone, for a field that does not take the rotation (most of the cost)."""
        if result.neighbor_ids is None:
            return result
        assert result.neighbor_weights is not None
        global_ids, weights = result.neighbor_ids, result.neighbor_weights
        if rotation and result.rotation is None:
            quaternion = blend_quaternions(self.vertex_quaternion[global_ids], weights)
            result.rotation = _rotation(quaternion)
        if self.vertex_normals is not None and result.normal is None:
            normal = (weights[..., None] * self.vertex_normals[global_ids]).sum(dim=1)
            result.normal = torch.nn.functional.normalize(normal, dim=-1)
        return result

    def _surface_weights(
        self,
        points: torch.Tensor,
        frame_ids: torch.Tensor,
        global_ids: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """Replace, in place, the neighbours (N, k) and weights (N, k) of the samples that
        need it by their closest triangle's corners and barycentric weights (zero-padded);
        returns the indices of the samples changed."""
        # Where every neighbour's own inverse sends the point to the same canonical
        # place, any blend of them does too; only the other samples need a triangle.
        ambiguous = _neighbours_disagree(self, points, global_ids, weights > 0)
        if ambiguous.numel():
            frames_of = frame_ids[ambiguous]
            local = global_ids[ambiguous] - frames_of[:, None] * self.num_vertices
            assert self.mesh is not None
            tri_ids, tri_weights, _ = closest_triangles(
                self.mesh, points[ambiguous], frames_of, local[:, :_SURFACE_CANDIDATE_VERTICES]
            )
            tri_ids = frames_of[:, None] * self.num_vertices + tri_ids
            global_ids[ambiguous, :3] = tri_ids
            global_ids[ambiguous, 3:] = tri_ids[:, :1]
            weights[ambiguous, :3] = tri_weights
            weights[ambiguous, 3:] = 0.0
        return ambiguous

    def refine_to_surface(self, points: torch.Tensor, result: DeformResult) -> DeformResult:
        """Apply ``blend="surface"`` to a result computed with ``deform(..., surface=False)``.

        The occupancy test can afford the cheaper distance-weighted blend; the samples the
        field then evaluates (a fraction of them) get the closest-triangle weights here.
        ``points`` (N, 3) are the posed points ``result`` (N rows) was computed for. In the
        mesh modes the result already has them and is returned as is.
        """
        if (
            self.config.blend != "surface"
            or self.on_mesh
            or result.neighbor_ids is None
            or not len(points)
        ):
            return result
        assert result.neighbor_weights is not None
        points = points.detach().to(self.posed_vertices.dtype)
        global_ids = result.neighbor_ids.clone()
        weights = result.neighbor_weights.clone()
        frame_ids = global_ids[:, 0] // self.num_vertices
        with torch.no_grad(), fp32_geometry(self.device):
            changed = self._surface_weights(points, frame_ids, global_ids, weights)
            if changed.numel() == 0:
                return result
            part = self._assemble(
                points[changed],
                global_ids[changed],
                weights[changed],
                result.distance[changed],
                # Re-orient what was oriented (a normal may come without the rotation).
                orient=result.rotation is not None or result.normal is not None,
            )
        out = DeformResult(
            canonical=result.canonical.clone(),
            valid=result.valid.clone(),
            rotation=None if result.rotation is None else result.rotation.clone(),
            distance=result.distance,
            normal=None if result.normal is None else result.normal.clone(),
            neighbor_ids=global_ids,
            neighbor_weights=weights,
        )
        out.canonical[changed] = part.canonical
        out.valid[changed] = part.valid
        if out.rotation is not None and part.rotation is not None:
            out.rotation[changed] = part.rotation
        if out.normal is not None and part.normal is not None:
            out.normal[changed] = part.normal
        return out

    def blend_attributes(
        self, result: DeformResult, attributes: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """(N, C) ``vertex_attributes`` blended with ``result``'s neighbour weights, or None.

        Separate from :meth:`deform` so that callers blend only the samples they keep (the
        gather is (N, k, C) values: the costly part for wide attributes). ``attributes``:
        other (F * V, C') per-vertex values to blend instead (e.g. a linear map of them).
        """
        values = self.vertex_attributes if attributes is None else attributes
        if values is None or result.neighbor_ids is None:
            return None
        assert result.neighbor_weights is not None
        gathered = values[result.neighbor_ids]  # (N, k, C)
        with fp32_geometry(self.device):
            return torch.einsum("nk,nkc->nc", result.neighbor_weights, gathered)

    def _deform_grid(self, points: torch.Tensor, frame_ids: torch.Tensor) -> DeformResult:
        assert self.grid is not None
        affine, quaternion, distance = sample_grid(self.grid, points, frame_ids)
        return _finish(points, affine, quaternion, distance, self.config.max_distance)


def _empty_result(points: torch.Tensor, frames: FrameDeformation) -> DeformResult:
    """A zero-length result with the same fields a non-empty query of ``frames`` fills."""
    by_neighbours = frames.backend != "grid"
    k = 3 if frames.triangle_trees is not None else _knn_count(frames)
    return DeformResult(
        canonical=points.new_zeros(0, 3),
        valid=torch.zeros(0, dtype=torch.bool, device=points.device),
        rotation=points.new_zeros(0, 3, 3),
        distance=points.new_zeros(0),
        normal=points.new_zeros(0, 3)
        if by_neighbours and frames.vertex_normals is not None
        else None,
        neighbor_ids=(
            torch.zeros(0, k, dtype=torch.long, device=points.device) if by_neighbours else None
        ),
        neighbor_weights=points.new_zeros(0, k) if by_neighbours else None,
    )


def _knn(
    frames: FrameDeformation, points: torch.Tensor, frame_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N, k), ascending, and ids (N, k) of each sample's nearest frame vertices."""
    trees = frames.trees if frames.backend != "cdist" else None
    return knn(
        frames.posed_vertices,
        points,
        frame_ids,
        _knn_count(frames),
        frames.config,
        trees,
    )


def _knn_count(frames: FrameDeformation) -> int:
    k = min(frames.config.k_neighbors, frames.num_vertices)
    if frames.config.blend == "nearest":
        return 1
    if frames.config.blend == "surface":
        # At least a triangle's three columns (the result carries its weights in them).
        wanted = _MESH_CANDIDATE_VERTICES if frames.on_mesh else _SURFACE_CANDIDATE_VERTICES
        return min(max(k, wanted, 3), frames.num_vertices)
    return k


def _neighbours_disagree(
    frames: FrameDeformation, points: torch.Tensor, global_ids: torch.Tensor, found: torch.Tensor
) -> torch.Tensor:
    """Indices of the points whose ``found`` neighbours' (N, k) own inverse transforms map
    them more than ``_SURFACE_AGREEMENT`` apart (the others keep their blend)."""
    assert frames.vertex_inverse is not None
    inverse = frames.vertex_inverse[global_ids].reshape(*global_ids.shape, 3, 4)
    canonical = torch.einsum("nkij,nkj->nki", inverse[..., :3], points[:, None]) + inverse[..., 3]
    spread = (canonical - canonical[:, :1]).norm(dim=-1)
    spread = torch.where(found, spread, torch.zeros_like(spread))
    return torch.nonzero(spread.amax(dim=1) > _SURFACE_AGREEMENT).squeeze(1)


def _finish(
    points: torch.Tensor,
    affine: torch.Tensor,
    quaternion: torch.Tensor | None,
    distance: torch.Tensor,
    max_distance: float,
    anchor: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> DeformResult:
    """Invert the blended (N, 12) affine transforms and assemble the result.

    ``anchor``: (N, 3) posed points and (N, 3) their known canonical positions; the sample's
    canonical position is then its anchor's plus the inverted offset from it (without, the
    blended transform's own translation is the anchor). ``quaternion`` (N, 4) blended
    rotations, or None: no ``rotation`` (see :meth:`FrameDeformation.orient`).
    """
    matrix = affine.reshape(-1, 3, 4)
    inverse, invertible = inverse_3x3(matrix[:, :, :3])
    if anchor is None:
        canonical = torch.einsum("nij,nj->ni", inverse, points - matrix[:, :, 3])
    else:
        canonical = anchor[1] + torch.einsum("nij,nj->ni", inverse, points - anchor[0])
    valid = invertible & (distance <= max_distance)
    canonical = torch.where(invertible[:, None], canonical, points)
    rotation = None if quaternion is None else _rotation(quaternion)
    return DeformResult(canonical=canonical, valid=valid, rotation=rotation, distance=distance)


def _rotation(quaternion: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations of blended (N, 4) quaternions (identity where they cancel out)."""
    quaternion_norm = quaternion.norm(dim=1, keepdim=True)
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=quaternion.dtype, device=quaternion.device)
    quaternion = torch.where(quaternion_norm > 1e-8, quaternion, identity)
    return quaternion_to_matrix(quaternion / quaternion.norm(dim=1, keepdim=True))
