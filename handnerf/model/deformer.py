"""Inverse linear blend skinning: posed-space samples → canonical space.

A sample ``x`` in posed world space gets skinning weights from the ``k`` nearest posed
mesh vertices; the blended bone transform ``A = sum_b w_b T_b`` (canonical → posed) is then
inverted to find the canonical position ``A^{-1} x``. A blend of rigid transforms is not
rigid, so the inverse is the true inverse of the 3x4 affine part (closed-form 3x3
adjugate), not the transpose of the rotation.

With ``blend="surface"`` the weights are instead those of the closest point on the posed
mesh: its barycentric coordinates on the closest triangle (searched among the triangles
around the nearest vertices). For a point on the surface that is what forward skinning
used, so it maps back to where it started even in a crease or where two fingers touch,
where the nearest vertices may belong to the other side.

Coarse meshes (real MANO: edges up to 24 mm, surface points up to 12 mm from every vertex)
need two more options, both working on the closest point of the posed mesh (found by
:mod:`handnerf.model.surface_search`) for every sample within reach:

- ``near="mesh"``: emptiness (and the returned distance) is judged by the distance to the
  closest point on the posed triangles, not to the nearest vertex, which leaves discs of
  empty space in the middle of large triangles.
- ``correctives=True``: MANO's pose blend shapes move posed vertices off the LBS of the
  canonical ones; the canonical position is anchored at the closest point instead,
  ``c(p) + L^{-1} (x - p)`` with ``p`` the closest posed point, ``c(p)`` the same
  barycentric point of the canonical (corrective-free) mesh and ``L`` the blended linear
  part. Exact for every surface point, correctives included, however large the triangle
  and however bent the joint; off the surface the offset is carried back by the blended
  rotation as before. (Subtracting the interpolated corrective displacement after inverse
  LBS instead leaves a second-order error: up to 2.6 mm on the coarse test hand.)

Because skinning is linear in the weights, the per-vertex blended transforms
``A_v = sum_b W[v, b] T_b`` are precomputed once per frame; a sample then only blends the
``k`` gathered 3x4 matrices of its neighbours, and a batch mixing frames needs no loop over
frames in that step.

Three lookup backends find the neighbours (all are measured by ``tools/bench_deformer.py``):

- ``kdtree``: scipy ``cKDTree`` per frame on the CPU (multi-threaded queries).
- ``cdist``: chunked ``torch.cdist`` + ``topk``; pure torch, so it runs on the GPU.
- ``grid``: the blended transform, bone-rotation quaternion and nearest-vertex distance
  precomputed on a voxel grid over each frame's posed bounding box (with the exact kNN
  lookup above) and trilinearly interpolated per sample. Expensive to prepare, cheapest to
  query; less accurate near joints because it interpolates across them.

The lookup needs no autograd (MANO parameters are fixed during fitting): all outputs are
plain tensors without a graph, usable as inputs of a downstream field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.blend_math import (
    blend_bone_quaternions,
    blend_quaternions,
    inverse_3x3,
    invert_affine,
    matrix_to_quaternion,
    quaternion_to_matrix,
)
from handnerf.model.surface_search import (
    MeshTables,
    TriangleScan,
    TriangleTrees,
    closest_point_on_triangles,
    closest_triangles,
    cover_radius,
)

__all__ = [
    "BACKENDS",
    "BLEND_SCHEMES",
    "NEAR_MODES",
    "DeformResult",
    "FrameDeformation",
    "InverseLBSDeformer",
    "closest_point_on_triangles",
]

BACKENDS = ("auto", "kdtree", "cdist", "grid")
BLEND_SCHEMES = ("inverse_distance", "gaussian", "nearest", "surface")
NEAR_MODES = ("vertex", "mesh")

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
# Elements of one chunk's (points x vertices) distance matrix in the cdist backend: big
# enough to keep the GPU busy, small enough (64 MiB of float32) not to spike memory.
_CDIST_CHUNK_ELEMENTS = 1 << 24
# Queries smaller than this run single-threaded in the kd-tree backend.
_KDTREE_PARALLEL_MIN_POINTS = 16384
# kd-tree searches stop at this multiple of max_distance (see _knn_kdtree).
_KDTREE_BOUND_FACTOR = 2.0


@dataclass
class DeformResult:
    """Canonical positions of posed samples.

    Attributes:
        canonical: (N, 3) canonical-space positions (meaningless where ``valid`` is false).
        valid: (N,) bool, the sample lies within ``max_distance`` of the posed surface and
            its blended transform is invertible.
        rotation: (N, 3, 3) blended bone rotation, canonical → posed (orthonormal).
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
    rotation: torch.Tensor
    distance: torch.Tensor
    normal: torch.Tensor | None = None
    neighbor_ids: torch.Tensor | None = None
    neighbor_weights: torch.Tensor | None = None


@dataclass
class _GridField:
    """Per-frame voxel grids of the deformation, flattened for one gather.

    ``values``: (F * X * Y * Z, 17) = 12 affine entries, 4 quaternion entries, distance.
    ``origin``: (F, 3) world position of node (0, 0, 0) per frame; ``dims``: (X, Y, Z).
    """

    values: torch.Tensor
    origin: torch.Tensor
    voxel_size: float
    dims: tuple[int, int, int]


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
    grid: _GridField | None = None
    vertex_normals: torch.Tensor | None = None  # (F * V, 3) posed vertex normals
    vertex_attributes: torch.Tensor | None = None  # (F * V, C), see blend_attributes
    mesh: MeshTables | None = None  # the posed triangles (blend="surface")
    vertex_inverse: torch.Tensor | None = None  # (F * V, 12) inverse of vertex_affine
    canonical_vertices: torch.Tensor | None = None  # (F * V, 3), correctives=True
    #: near="mesh": every sample's exact closest point of the whole mesh (no neighbour
    #: search needed): libigl trees on the CPU (kdtree backend), else the PyTorch scan.
    triangle_trees: TriangleTrees | TriangleScan | None = None
    config: InverseLBSDeformer.Config = field(default=None)  # type: ignore[assignment]
    #: Samples farther than this (metres) from every posed vertex are empty: max_distance,
    #: plus the mesh's cover radius with near="mesh" (a surface point can be that far).
    reach: float = 0.0

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
        self, points: torch.Tensor, frame_ids: torch.Tensor | None = None, surface: bool = True
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
        """
        points, frame_ids = self._check_query(points, frame_ids)
        if points.shape[0] == 0:
            return _empty_result(points, self)
        with torch.no_grad():
            if self.backend == "grid":
                return self._deform_grid(points, frame_ids)
            return self._deform_knn(points, frame_ids, surface)

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
        self, points: torch.Tensor, frame_ids: torch.Tensor, surface: bool
    ) -> DeformResult:
        cfg = self.config
        if self.triangle_trees is not None:
            return self._deform_closest(points, frame_ids)
        distances, ids = _knn(self, points, frame_ids)
        weights = _blend_weights(distances, cfg)
        global_ids = frame_ids[:, None] * self.num_vertices + ids  # (N, k)
        distance = distances[:, 0]
        if self.on_mesh:
            distance = self._mesh_weights(points, frame_ids, ids, global_ids, weights, distance)
        elif surface and cfg.blend == "surface":
            self._surface_weights(points, frame_ids, global_ids, weights)
        return self._assemble(points, global_ids, weights, distance)

    def _deform_closest(self, points: torch.Tensor, frame_ids: torch.Tensor) -> DeformResult:
        """near="mesh" with libigl: every (N, 3) sample's closest point on its frame's mesh
        gives its weights (the three corners' barycentrics) and its distance."""
        assert self.triangle_trees is not None
        tri_ids, bary, dist2 = self.triangle_trees.closest(points, frame_ids)
        global_ids = frame_ids[:, None] * self.num_vertices + tri_ids  # (N, 3)
        return self._assemble(points, global_ids, bary, dist2.sqrt())

    def _mesh_weights(
        self,
        points: torch.Tensor,
        frame_ids: torch.Tensor,
        ids: torch.Tensor,
        global_ids: torch.Tensor,
        weights: torch.Tensor,
        distance: torch.Tensor,
    ) -> torch.Tensor:
        """Give every sample within reach its closest triangle's corners and barycentric
        weights (in place in the (N, k) ``global_ids`` and ``weights``; ``ids`` (N, k) are
        the same neighbours local to their frame); returns the (N,) distance to use."""
        assert self.mesh is not None
        reached = torch.nonzero(distance <= self.reach).squeeze(1)
        if reached.numel() == 0:
            return distance
        frames_of = frame_ids[reached]
        near = ids[reached, :_MESH_CANDIDATE_VERTICES]
        # The exact candidate search where the distance decides emptiness (up to the
        # threshold: beyond, a sample is empty whichever candidate is nearest).
        exact = self.config.max_distance if self.config.near == "mesh" else None
        tri_ids, tri_weights, dist2 = closest_triangles(
            self.mesh, points[reached], frames_of, near, exact_within=exact
        )
        tri_ids = frames_of[:, None] * self.num_vertices + tri_ids
        global_ids[reached, :3] = tri_ids
        global_ids[reached, 3:] = tri_ids[:, :1]
        weights[reached, :3] = tri_weights
        weights[reached, 3:] = 0.0
        if self.config.near != "mesh":
            return distance
        distance = distance.clone()
        distance[reached] = dist2.sqrt()
        return distance

    def _assemble(
        self,
        points: torch.Tensor,
        global_ids: torch.Tensor,
        weights: torch.Tensor,
        distance: torch.Tensor,
    ) -> DeformResult:
        affine = (weights[..., None] * self.vertex_affine[global_ids]).sum(dim=1)  # (N, 12)
        quaternion = blend_quaternions(self.vertex_quaternion[global_ids], weights)
        anchor = None
        if self.canonical_vertices is not None:
            # The blended posed point and its canonical twin (the closest point of the
            # mesh, within reach): the canonical position is the twin plus the offset.
            flat = self.posed_vertices.reshape(-1, 3)
            posed_anchor = (weights[..., None] * flat[global_ids]).sum(dim=1)
            canonical_anchor = (weights[..., None] * self.canonical_vertices[global_ids]).sum(1)
            anchor = (posed_anchor, canonical_anchor)
        result = _finish(points, affine, quaternion, distance, self.config.max_distance, anchor)
        if self.vertex_normals is not None:
            normal = (weights[..., None] * self.vertex_normals[global_ids]).sum(dim=1)
            result.normal = torch.nn.functional.normalize(normal, dim=-1)
        result.neighbor_ids, result.neighbor_weights = global_ids, weights
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
        with torch.no_grad():
            changed = self._surface_weights(points, frame_ids, global_ids, weights)
            if changed.numel() == 0:
                return result
            part = self._assemble(
                points[changed], global_ids[changed], weights[changed], result.distance[changed]
            )
        out = DeformResult(
            canonical=result.canonical.clone(),
            valid=result.valid.clone(),
            rotation=result.rotation.clone(),
            distance=result.distance,
            normal=None if result.normal is None else result.normal.clone(),
            neighbor_ids=global_ids,
            neighbor_weights=weights,
        )
        out.canonical[changed] = part.canonical
        out.valid[changed] = part.valid
        out.rotation[changed] = part.rotation
        if out.normal is not None and part.normal is not None:
            out.normal[changed] = part.normal
        return out

    def blend_attributes(self, result: DeformResult) -> torch.Tensor | None:
        """(N, C) ``vertex_attributes`` blended with ``result``'s neighbour weights, or None.

        Separate from :meth:`deform` so that callers blend only the samples they keep (the
        gather is (N, k, C) values: the costly part for wide attributes).
        """
        if self.vertex_attributes is None or result.neighbor_ids is None:
            return None
        assert result.neighbor_weights is not None
        gathered = self.vertex_attributes[result.neighbor_ids]  # (N, k, C)
        return torch.einsum("nk,nkc->nc", result.neighbor_weights, gathered)

    def _deform_grid(self, points: torch.Tensor, frame_ids: torch.Tensor) -> DeformResult:
        grid = self.grid
        assert grid is not None
        dims = torch.tensor(grid.dims, device=points.device)
        local = (points - grid.origin[frame_ids]) / grid.voxel_size  # (N, 3) in voxel units
        inside = ((local >= 0) & (local <= (dims - 1).to(local.dtype))).all(dim=1)
        base = local.floor().long().clamp(min=torch.zeros_like(dims), max=dims - 2)
        frac = (local - base.to(local.dtype)).clamp(0.0, 1.0)
        strides = (dims[1] * dims[2], dims[2], 1)
        frame_offset = frame_ids * int(dims.prod())
        values = torch.zeros(points.shape[0], 17, dtype=points.dtype, device=points.device)
        reference_quaternion: torch.Tensor | None = None
        for corner in range(8):
            offset = [(corner >> axis) & 1 for axis in (2, 1, 0)]
            index = frame_offset.clone()
            corner_weight = torch.ones_like(frac[:, 0])
            for axis in range(3):
                index += (base[:, axis] + offset[axis]) * strides[axis]
                corner_weight *= frac[:, axis] if offset[axis] else 1.0 - frac[:, axis]
            corner_values = grid.values[index]
            # Quaternions q and -q are one rotation: align every corner to the first so
            # that interpolation does not cancel them.
            if reference_quaternion is None:
                reference_quaternion = corner_values[:, 12:16]
            else:
                sign = torch.sign((corner_values[:, 12:16] * reference_quaternion).sum(dim=1))
                corner_values[:, 12:16] *= torch.where(sign == 0, 1.0, sign)[:, None]
            values += corner_weight[:, None] * corner_values
        distance = torch.where(inside, values[:, 16], torch.full_like(values[:, 16], torch.inf))
        return _finish(points, values[:, :12], values[:, 12:16], distance, self.config.max_distance)


class InverseLBSDeformer(nn.Module):
    """Posed-space samples → canonical space by inverse linear blend skinning.

    Usage::

        deformer = InverseLBSDeformer(InverseLBSDeformer.Config())
        frames = deformer.prepare_frames(posed_vertices, bone_transforms, skinning_weights)
        result = frames.deform(points, frame_ids)  # or deformer(frames, points, frame_ids)
    """

    @dataclass
    class Config:
        k_neighbors: int = 4
        """Posed vertices whose skinning weights are blended per sample."""
        max_distance: float = 0.015
        """Samples farther than this (metres) from the nearest posed vertex are empty."""
        blend: str = "inverse_distance"
        """Neighbour weighting: ``inverse_distance``, ``gaussian``, ``nearest`` or ``surface``
        (barycentric weights of the closest point on the posed mesh; needs ``faces``)."""
        idw_power: float = 2.0
        """Exponent p of inverse-distance weights 1 / d^p."""
        gaussian_sigma: float = 0.004
        """Standard deviation (metres) of Gaussian neighbour weights."""
        backend: str = "auto"
        """Neighbour lookup: ``auto``, ``kdtree`` (CPU), ``cdist`` or ``grid``."""
        grid_voxel_size: float = 0.002
        """Voxel edge (metres) of the ``grid`` backend."""
        kdtree_workers: int = -1
        """Threads of scipy's cKDTree queries (-1: torch's CPU thread count)."""
        near: str = "vertex"
        """What ``max_distance`` is measured to: the nearest posed ``vertex``, or the closest
        point of the posed ``mesh`` (right on coarse meshes such as real MANO, whose large
        triangles hold surface points up to 12 mm from every vertex; needs
        ``blend="surface"``)."""
        correctives: bool = False
        """Undo pose correctives (MANO's ``posedirs``): anchor each sample's canonical
        position at its closest surface point (needs ``blend="surface"`` and the canonical
        vertices in ``prepare_frames``)."""

    def __init__(self, config: InverseLBSDeformer.Config | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else InverseLBSDeformer.Config()
        _check_config(self.config)

    def resolve_backend(self, device: torch.device) -> str:
        """The lookup backend used for frames on ``device`` (``auto`` chosen by measurement)."""
        if self.config.backend != "auto":
            return self.config.backend
        # tools/bench_deformer.py: on the CPU the kd-tree queries fastest for a fresh
        # frame; on CUDA the chunked cdist is fast and exact (no CPU round trip).
        return "cdist" if device.type == "cuda" else "kdtree"

    def prepare_frame(
        self,
        posed_vertices: torch.Tensor,
        bone_transforms: torch.Tensor,
        skinning_weights: torch.Tensor,
    ) -> FrameDeformation:
        """``prepare_frames`` for one frame: (V, 3), (16, 4, 4) and (V, 16) inputs."""
        if posed_vertices.ndim != 2 or bone_transforms.ndim != 3:
            raise ParameterError(
                "prepare_frame: posed_vertices must be (V, 3) and bone_transforms (J, 4, 4), "
                f"got {tuple(posed_vertices.shape)} and {tuple(bone_transforms.shape)}"
            )
        return self.prepare_frames(posed_vertices[None], bone_transforms[None], skinning_weights)

    def prepare_frames(
        self,
        posed_vertices: torch.Tensor,
        bone_transforms: torch.Tensor,
        skinning_weights: torch.Tensor,
        vertex_normals: torch.Tensor | None = None,
        vertex_attributes: torch.Tensor | None = None,
        faces: torch.Tensor | None = None,
        canonical_vertices: torch.Tensor | None = None,
    ) -> FrameDeformation:
        """Build the lookup structures of ``F`` frames.

        Args:
            posed_vertices: (F, V, 3) posed world vertices (metres).
            bone_transforms: (F, J, 4, 4) canonical → posed bone transforms (J = 16 for
                MANO): ``x_posed = sum_b w_b T_b x_canonical``.
            skinning_weights: (V, J) or (F, V, J) per-vertex skinning weights.
            vertex_normals: optional (F, V, 3) posed vertex normals; with them the kNN
                backends also return each sample's blended surface normal.
            vertex_attributes: optional (F, V, C) per-vertex values that
                :meth:`FrameDeformation.blend_attributes` blends per sample (kNN backends).
            faces: (T, 3) triangles of the mesh (vertex ids); required by ``blend="surface"``.
            canonical_vertices: (V, 3) or (F, V, 3) canonical vertices without pose
                correctives (the posed ones are their skinning plus correctives); required
                by ``correctives=True``, unused otherwise.

        Returns:
            a :class:`FrameDeformation` on the device of ``posed_vertices``.
        """
        posed_vertices, bone_transforms, skinning_weights = _check_frames(
            posed_vertices, bone_transforms, skinning_weights
        )
        backend = self.resolve_backend(posed_vertices.device)
        with torch.no_grad():
            num_frames, num_vertices = posed_vertices.shape[:2]
            affine_bones = bone_transforms[:, :, :3, :].reshape(num_frames, -1, 12)  # (F, J, 12)
            vertex_affine = torch.einsum("fvj,fjc->fvc", skinning_weights, affine_bones)
            bone_quaternions = matrix_to_quaternion(bone_transforms[:, :, :3, :3])  # (F, J, 4)
            vertex_quaternion = blend_bone_quaternions(bone_quaternions, skinning_weights)
            frames = FrameDeformation(
                posed_vertices=posed_vertices.contiguous(),
                vertex_affine=vertex_affine.reshape(num_frames * num_vertices, 12).contiguous(),
                vertex_quaternion=vertex_quaternion.reshape(num_frames * num_vertices, 4),
                backend=backend,
                config=self.config,
            )
            if vertex_normals is not None:
                if vertex_normals.shape != posed_vertices.shape:
                    raise ParameterError(
                        f"prepare_frames: vertex_normals must have shape {tuple(posed_vertices.shape)}, "
                        f"got {tuple(vertex_normals.shape)}"
                    )
                frames.vertex_normals = vertex_normals.reshape(-1, 3).to(posed_vertices.dtype)
            if vertex_attributes is not None:
                if vertex_attributes.ndim != 3 or vertex_attributes.shape[:2] != (
                    num_frames,
                    num_vertices,
                ):
                    raise ParameterError(
                        "prepare_frames: vertex_attributes must have shape "
                        f"({num_frames}, {num_vertices}, C), got {tuple(vertex_attributes.shape)}"
                    )
                if backend == "grid":
                    raise ConfigError(
                        "deformer backend 'grid' does not blend vertex attributes; use kdtree, "
                        "cdist or auto"
                    )
                frames.vertex_attributes = vertex_attributes.reshape(
                    num_frames * num_vertices, -1
                ).to(posed_vertices.dtype)
            if self.config.blend == "surface":
                if backend == "grid":
                    raise ConfigError(
                        "deformer blend 'surface' needs a nearest-vertex backend (kdtree, "
                        "cdist or auto), not 'grid'"
                    )
                frames.mesh = MeshTables.build(frames.posed_vertices, faces)
                frames.vertex_inverse = invert_affine(frames.vertex_affine)
            frames.reach = self.config.max_distance
            if self.config.near == "mesh":
                assert frames.mesh is not None
                frames.reach += cover_radius(frames.posed_vertices, frames.mesh.faces)
            if self.config.correctives:
                frames.canonical_vertices = _check_canonical(canonical_vertices, posed_vertices)
            on_cpu = posed_vertices.device.type == "cpu"
            if self.config.near == "mesh":
                assert frames.mesh is not None
                if backend == "kdtree" and on_cpu and TriangleTrees.available():
                    frames.triangle_trees = TriangleTrees(frames.mesh)
                else:
                    frames.triangle_trees = TriangleScan(frames.mesh)
            elif backend in ("kdtree", "grid") and on_cpu:
                frames.trees = _build_trees(posed_vertices)
            if backend == "grid":
                frames.grid = _build_grid(frames)
        return frames

    def deform(
        self, frames: FrameDeformation, points: torch.Tensor, frame_ids: torch.Tensor | None = None
    ) -> DeformResult:
        """``frames.deform(points, frame_ids)``; see :meth:`FrameDeformation.deform`."""
        return frames.deform(points, frame_ids)

    def forward(
        self, frames: FrameDeformation, points: torch.Tensor, frame_ids: torch.Tensor | None = None
    ) -> DeformResult:
        return frames.deform(points, frame_ids)


def _check_config(cfg: InverseLBSDeformer.Config) -> None:
    where = "deformer config"
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"{where}: backend must be one of {BACKENDS}, got {cfg.backend!r}")
    if cfg.blend not in BLEND_SCHEMES:
        raise ConfigError(f"{where}: blend must be one of {BLEND_SCHEMES}, got {cfg.blend!r}")
    if cfg.near not in NEAR_MODES:
        raise ConfigError(f"{where}: near must be one of {NEAR_MODES}, got {cfg.near!r}")
    if not isinstance(cfg.correctives, bool):
        raise ConfigError(f"{where}: correctives must be true or false, got {cfg.correctives!r}")
    if (cfg.near == "mesh" or cfg.correctives) and cfg.blend != "surface":
        raise ConfigError(
            f"{where}: near=mesh and correctives=true work on the closest point of the mesh; "
            f"they need blend='surface', got {cfg.blend!r}"
        )
    if cfg.k_neighbors < 1:
        raise ConfigError(f"{where}: k_neighbors must be >= 1, got {cfg.k_neighbors}")
    for name in ("max_distance", "gaussian_sigma", "grid_voxel_size", "idw_power"):
        value = getattr(cfg, name)
        if not np.isfinite(value) or value <= 0:
            raise ConfigError(f"{where}: {name} must be a positive number, got {value}")


def _check_frames(
    posed_vertices: torch.Tensor, bone_transforms: torch.Tensor, skinning_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    where = "prepare_frames"
    for name, tensor in (
        ("posed_vertices", posed_vertices),
        ("bone_transforms", bone_transforms),
        ("skinning_weights", skinning_weights),
    ):
        if not isinstance(tensor, torch.Tensor):
            raise ParameterError(f"{where}: {name} must be a torch.Tensor, got {type(tensor)}")
        if not tensor.dtype.is_floating_point:
            raise ParameterError(f"{where}: {name} must be floating point, got {tensor.dtype}")
    if posed_vertices.ndim != 3 or posed_vertices.shape[2] != 3 or posed_vertices.shape[1] == 0:
        raise ParameterError(
            f"{where}: posed_vertices must be (F, V, 3) with V > 0, got {tuple(posed_vertices.shape)}"
        )
    num_frames, num_vertices = posed_vertices.shape[:2]
    if (
        bone_transforms.ndim != 4
        or bone_transforms.shape[0] != num_frames
        or bone_transforms.shape[2:] != (4, 4)
    ):
        raise ParameterError(
            f"{where}: bone_transforms must be ({num_frames}, J, 4, 4), got "
            f"{tuple(bone_transforms.shape)}"
        )
    num_bones = bone_transforms.shape[1]
    if skinning_weights.ndim == 2:
        skinning_weights = skinning_weights[None].expand(num_frames, -1, -1)
    if skinning_weights.shape != (num_frames, num_vertices, num_bones):
        raise ParameterError(
            f"{where}: skinning_weights must be ({num_vertices}, {num_bones}) or "
            f"({num_frames}, {num_vertices}, {num_bones}), got {tuple(skinning_weights.shape)}"
        )
    for name, tensor in (
        ("posed_vertices", posed_vertices),
        ("bone_transforms", bone_transforms),
        ("skinning_weights", skinning_weights),
    ):
        if not bool(torch.isfinite(tensor).all()):
            raise ParameterError(f"{where}: {name} contains NaN or inf")
    device, dtype = posed_vertices.device, posed_vertices.dtype
    return (
        posed_vertices.detach(),
        bone_transforms.detach().to(device=device, dtype=dtype),
        skinning_weights.detach().to(device=device, dtype=dtype),
    )


def _check_canonical(
    canonical_vertices: torch.Tensor | None, posed_vertices: torch.Tensor
) -> torch.Tensor:
    """(F * V, 3) canonical vertices from (V, 3) or (F, V, 3), checked against (F, V, 3)."""
    if canonical_vertices is None:
        raise ConfigError(
            "deformer correctives=true needs the canonical vertices: pass canonical_vertices "
            "to prepare_frames"
        )
    shape = tuple(posed_vertices.shape)
    if not isinstance(canonical_vertices, torch.Tensor) or canonical_vertices.shape not in (
        shape,
        shape[1:],
    ):
        got = (
            tuple(canonical_vertices.shape)
            if isinstance(canonical_vertices, torch.Tensor)
            else type(canonical_vertices)
        )
        raise ParameterError(
            f"prepare_frames: canonical_vertices must have shape {shape[1:]} or {shape}, got {got}"
        )
    canonical = canonical_vertices.detach().to(posed_vertices)
    if not bool(torch.isfinite(canonical).all()):
        raise ParameterError("prepare_frames: canonical_vertices contains NaN or inf")
    return canonical.expand(shape).reshape(-1, 3).contiguous()


def _empty_result(points: torch.Tensor, frames: FrameDeformation) -> DeformResult:
    """A zero-length result with the same fields a non-empty query of ``frames`` fills."""
    knn = frames.backend != "grid"
    k = 3 if frames.triangle_trees is not None else _knn_count(frames)
    return DeformResult(
        canonical=points.new_zeros(0, 3),
        valid=torch.zeros(0, dtype=torch.bool, device=points.device),
        rotation=points.new_zeros(0, 3, 3),
        distance=points.new_zeros(0),
        normal=points.new_zeros(0, 3) if knn and frames.vertex_normals is not None else None,
        neighbor_ids=(torch.zeros(0, k, dtype=torch.long, device=points.device) if knn else None),
        neighbor_weights=points.new_zeros(0, k) if knn else None,
    )


def _build_trees(posed_vertices: torch.Tensor) -> list:
    from scipy.spatial import cKDTree

    return [cKDTree(v) for v in posed_vertices.cpu().double().numpy()]


def _knn(
    frames: FrameDeformation, points: torch.Tensor, frame_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (N, k), ascending, and ids (N, k) of each sample's nearest frame vertices."""
    k = _knn_count(frames)
    distances = points.new_empty(points.shape[0], k)
    ids = torch.empty(points.shape[0], k, dtype=torch.long, device=points.device)
    single_frame = frames.num_frames == 1
    use_trees = frames.trees is not None and frames.backend != "cdist"
    for frame in range(frames.num_frames):
        if single_frame:
            selection: torch.Tensor | slice = slice(None)
            frame_points = points
        else:
            selection = torch.nonzero(frame_ids == frame).squeeze(1)
            if selection.numel() == 0:
                continue
            frame_points = points[selection]
        if use_trees:
            d, i = _knn_kdtree(frames, frame, frame_points, k)
        else:
            d, i = _knn_cdist(frames.posed_vertices[frame], frame_points, k)
        distances[selection] = d
        ids[selection] = i
    return distances, ids


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


def _knn_kdtree(
    frames: FrameDeformation, frame: int, points: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    assert frames.trees is not None
    query = points.cpu().numpy()
    workers = frames.config.kdtree_workers
    if workers < 1:
        # scipy's -1 means os.cpu_count(), the host's cores rather than this process's
        # share: follow torch's thread count instead.
        workers = torch.get_num_threads()
    if len(query) < _KDTREE_PARALLEL_MIN_POINTS:
        workers = 1  # starting threads costs more than a small query
    # Samples beyond the reach are invalid anyway: bounding the search lets the tree stop
    # early (measured ~2x faster on hand-sized shells). Neighbours it did not find come
    # back as (inf, n); they get weight 0 (1/inf) and the nearest vertex's id.
    bound = max(_KDTREE_BOUND_FACTOR * frames.config.max_distance, frames.reach)
    d, i = frames.trees[frame].query(query, k=k, workers=workers, distance_upper_bound=bound)
    d = np.asarray(d, dtype=np.float64).reshape(len(query), k)
    i = np.asarray(i, dtype=np.int64).reshape(len(query), k)
    missing = ~np.isfinite(d)
    i = np.where(missing, i[:, :1], i)
    i[missing[:, 0], :] = 0  # nothing in reach: any id; the inf distance marks it invalid
    d = torch.from_numpy(d)
    i = torch.from_numpy(i)
    return d.to(device=points.device, dtype=points.dtype), i.to(points.device)


def _knn_cdist(
    vertices: torch.Tensor, points: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # Centring first keeps the matmul form of cdist (|x|² + |v|² - 2 x·v) accurate; the
    # selected neighbours' distances are then recomputed exactly from differences.
    centre = vertices.mean(dim=0)
    vertices_c = vertices - centre
    points_c = points - centre
    chunk = max(1, _CDIST_CHUNK_ELEMENTS // vertices.shape[0])
    ids = torch.empty(points.shape[0], k, dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], chunk):
        block = torch.cdist(points_c[start : start + chunk], vertices_c)
        ids[start : start + chunk] = torch.topk(block, k, dim=1, largest=False, sorted=True).indices
    distances = (points_c[:, None, :] - vertices_c[ids]).norm(dim=2)
    # Exact distances may reorder near-ties; keep the nearest first (validity uses it).
    distances, order = distances.sort(dim=1)
    return distances, torch.gather(ids, 1, order)


def _blend_weights(distances: torch.Tensor, cfg: InverseLBSDeformer.Config) -> torch.Tensor:
    """Normalised (N, k) neighbour weights from ascending distances (N, k)."""
    if distances.shape[1] == 1:
        return torch.ones_like(distances)
    if cfg.blend == "gaussian":
        # Shifting by the nearest distance keeps far samples from underflowing to 0/0.
        shifted = distances.square() - distances[:, :1].square()
        weights = torch.exp(-shifted / (2.0 * cfg.gaussian_sigma**2))
    else:
        # The epsilon makes a sample on a vertex take that vertex's weights (1/0 avoided).
        weights = (distances + 1e-7).pow(-cfg.idw_power)
    total = weights.sum(dim=1, keepdim=True)
    # No neighbour in reach (all distances inf): take the first; the sample is invalid.
    empty = total[:, 0] == 0
    if bool(empty.any()):
        weights[empty, 0] = 1.0
        total[empty] = 1.0
    return weights / total


def _finish(
    points: torch.Tensor,
    affine: torch.Tensor,
    quaternion: torch.Tensor,
    distance: torch.Tensor,
    max_distance: float,
    anchor: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> DeformResult:
    """Invert the blended (N, 12) affine transforms and assemble the result.

    ``anchor``: (N, 3) posed points and (N, 3) their known canonical positions; the sample's
    canonical position is then its anchor's plus the inverted offset from it (without, the
    blended transform's own translation is the anchor).
    """
    matrix = affine.reshape(-1, 3, 4)
    inverse, invertible = inverse_3x3(matrix[:, :, :3])
    if anchor is None:
        canonical = torch.einsum("nij,nj->ni", inverse, points - matrix[:, :, 3])
    else:
        canonical = anchor[1] + torch.einsum("nij,nj->ni", inverse, points - anchor[0])
    valid = invertible & (distance <= max_distance)
    canonical = torch.where(invertible[:, None], canonical, points)
    quaternion_norm = quaternion.norm(dim=1, keepdim=True)
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=points.dtype, device=points.device)
    quaternion = torch.where(quaternion_norm > 1e-8, quaternion, identity)
    rotation = quaternion_to_matrix(quaternion / quaternion.norm(dim=1, keepdim=True))
    return DeformResult(canonical=canonical, valid=valid, rotation=rotation, distance=distance)


def _build_grid(frames: FrameDeformation) -> _GridField:
    """Sample the exact kNN deformation on a voxel grid over each frame's padded box."""
    cfg = frames.config
    voxel = cfg.grid_voxel_size
    vertices = frames.posed_vertices
    # Padding by max_distance plus a voxel keeps every valid sample strictly inside.
    pad = cfg.max_distance + voxel
    lower = vertices.amin(dim=1) - pad  # (F, 3)
    extent = (vertices.amax(dim=1) + pad - lower).amax(dim=0)  # (3,) common to all frames
    dims = tuple(int(d) for d in (torch.ceil(extent / voxel).long() + 1).tolist())
    axes = [torch.arange(d, dtype=vertices.dtype, device=vertices.device) * voxel for d in dims]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    nodes_per_frame = offsets.shape[0]
    values = vertices.new_empty(frames.num_frames * nodes_per_frame, 17)
    k = 1 if cfg.blend == "nearest" else min(cfg.k_neighbors, frames.num_vertices)
    for frame in range(frames.num_frames):
        nodes = lower[frame] + offsets
        if frames.trees is not None:
            distances, ids = _knn_kdtree(frames, frame, nodes, k)
        else:
            distances, ids = _knn_cdist(vertices[frame], nodes, k)
        weights = _blend_weights(distances, cfg)
        global_ids = frame * frames.num_vertices + ids
        rows = slice(frame * nodes_per_frame, (frame + 1) * nodes_per_frame)
        values[rows, :12] = (weights[..., None] * frames.vertex_affine[global_ids]).sum(dim=1)
        quaternion = blend_quaternions(frames.vertex_quaternion[global_ids], weights)
        values[rows, 12:16] = quaternion / quaternion.norm(dim=1, keepdim=True).clamp_min(1e-12)
        values[rows, 16] = distances[:, 0]
    return _GridField(values=values, origin=lower, voxel_size=voxel, dims=dims)  # type: ignore[arg-type]
