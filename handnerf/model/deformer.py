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

Three lookup backends find the neighbours (``kdtree``, ``cdist``, ``grid``; all are
measured by ``tools/bench_deformer.py``): see :mod:`handnerf.model.neighbour_search`.

The lookup needs no autograd (MANO parameters are fixed during fitting): all outputs are
plain tensors without a graph, usable as inputs of a downstream field.

Modules: the settings (:mod:`handnerf.model.deformer_config`), preparing frames (here),
querying them (:mod:`handnerf.model.frame_deformation`), the neighbour search
(:mod:`handnerf.model.neighbour_search`) and the closest point of the mesh
(:mod:`handnerf.model.surface_search`).
"""

from __future__ import annotations

import torch
from torch import nn

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.blend_math import blend_bone_quaternions, invert_affine, matrix_to_quaternion
from handnerf.model.deformer_config import (
    BACKENDS,
    BLEND_SCHEMES,
    NEAR_MODES,
    DeformerConfig,
    check_config,
)
from handnerf.model.frame_deformation import DeformResult, FrameDeformation, fp32_geometry
from handnerf.model.neighbour_search import build_grid, build_trees
from handnerf.model.surface_search import (
    MeshTables,
    TriangleScan,
    TriangleTrees,
    closest_point_on_triangles,
)

__all__ = [
    "BACKENDS",
    "BLEND_SCHEMES",
    "NEAR_MODES",
    "DeformResult",
    "DeformerConfig",
    "FrameDeformation",
    "InverseLBSDeformer",
    "closest_point_on_triangles",
]


class InverseLBSDeformer(nn.Module):
    """Posed-space samples → canonical space by inverse linear blend skinning.

    Usage::

        deformer = InverseLBSDeformer(DeformerConfig())
        frames = deformer.prepare_frames(posed_vertices, bone_transforms, skinning_weights)
        result = frames.deform(points, frame_ids)  # or deformer(frames, points, frame_ids)
    """

    def __init__(self, config: DeformerConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else DeformerConfig()
        check_config(self.config)

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
        with torch.no_grad(), fp32_geometry(posed_vertices.device):
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
                frames.trees = build_trees(posed_vertices)
            if backend == "grid":
                frames.grid = build_grid(
                    frames.posed_vertices,
                    frames.vertex_affine,
                    frames.vertex_quaternion,
                    self.config,
                    frames.trees,
                )
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
