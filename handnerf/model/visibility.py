"""Self-shadowing of the posed hand: which world directions each posed vertex can see.

A studio light is fixed in the world while the hand moves, so a finger casts a shadow on
the palm in one pose and not in the next. A colour MLP that sees only the canonical
position and the surface normal cannot tell those frames apart: it learns the average and
blurs every shadow. Instead, for every posed vertex we cast one ray per direction of a fixed
set of world directions (a Fibonacci sphere) against the posed mesh, and record whether it
escapes (1) or hits the hand (0); directions behind the vertex's surface count as 0. The
deformer's neighbour weights blend these per-vertex visibilities into each evaluated
sample (:meth:`FrameDeformation.blend_attributes`), and the colour learns which of them
matter (the field's learnt lights gather the directions nearest the rig's lights).
Because visibility is computed from the posed MANO mesh, it is equally defined for poses
never seen in training.

Another mesh can occlude too (:class:`PosedMesh`, e.g. the other hand of a two-hand
avatar): its triangles join the posed mesh's in the intersector, so a direction counts as
seen only if the ray escapes both; its vertices get no visibility of their own.

Ray casting uses Embree through trimesh (``embreex``, a dependency), via the same
:func:`~handnerf.geometry.raycast.mesh_intersector` as the synthetic renderer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from handnerf.errors import ConfigError, ParameterError
from handnerf.geometry.raycast import mesh_intersector


def fibonacci_directions(n: int) -> Tensor:
    """(n, 3) unit directions spread evenly over the sphere (golden-angle spiral)."""
    if n < 1:
        raise ConfigError(f"visibility.n_directions must be >= 1 to build directions, got {n}")
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = torch.sqrt((1.0 - z * z).clamp(min=0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1).float()


@dataclass
class VisibilityConfig:
    """Settings of :class:`VertexVisibility`."""

    #: World directions tested per vertex; 0 turns self-shadowing off. Dense enough that
    #: some lie within ~10 degrees of any light, so the colour's learnt lights
    #: (``field.visibility_lights``) can gather a sharp cast shadow: on the demo capture 128
    #: directions and 4 lights score 0.6 dB more inside the hand mask than 32 raw
    #: directions (docs/benchmarks.md, "Cast shadows"). Runs saved before kept 32.
    n_directions: int = 128
    #: Rays start this far (m) off the surface along the vertex normal, so they do not
    #: hit the vertex's own triangles.
    offset: float = 5e-4
    #: In a two-hand avatar, the other hand's mesh casts shadows too (the rays of each
    #: hand's vertices are also tested against the other posed hand). Runs saved before it
    #: read as false: their colour MLPs learnt each hand's visibility against itself alone.
    other_hand: bool = True


class PosedMesh(NamedTuple):
    """A mesh posed in T frames: ``vertices`` (T,V,3) float, ``faces`` (F,3) long."""

    vertices: Tensor
    faces: Tensor


class VertexVisibility:
    """Per-vertex visibility of ``n_directions`` world directions against the posed mesh.

    ``__call__(vertices (T,V,3), normals (T,V,3), faces (F,3), occluders=None) -> (T,V,K)``
    float in {0, 1} (1: the direction lies in front of the surface and the ray from the
    vertex towards it leaves the hand, and the ``occluders`` mesh when one is given).
    """

    def __init__(self, cfg: VisibilityConfig | None = None) -> None:
        self.cfg = cfg = cfg if cfg is not None else VisibilityConfig()
        if cfg.n_directions < 0:
            raise ConfigError(
                f"visibility.n_directions must be >= 0 (0: off), got {cfg.n_directions}"
            )
        if not cfg.offset >= 0 or not math.isfinite(cfg.offset):
            raise ConfigError(f"visibility.offset must be a finite number >= 0, got {cfg.offset}")
        self.directions = (
            fibonacci_directions(cfg.n_directions) if cfg.n_directions else torch.zeros(0, 3)
        )

    @property
    def enabled(self) -> bool:
        return self.cfg.n_directions > 0

    @torch.no_grad()
    def __call__(
        self,
        vertices: Tensor,
        normals: Tensor,
        faces: Tensor,
        occluders: PosedMesh | None = None,
    ) -> Tensor:
        """(T,V,K) visibility of the K directions from each of the V posed ``vertices``
        (T,V,3) with unit ``normals`` (T,V,3) of the mesh ``faces`` (F,3).

        ``occluders``: another mesh posed in the same T frames (vertices (T,V2,3), faces
        (F2,3) indexing them) that the rays are tested against too; None: the mesh alone
        (the result is then exactly that of a mesh without occluders).
        """
        if vertices.ndim != 3 or vertices.shape[-1] != 3 or normals.shape != vertices.shape:
            raise ParameterError(
                "visibility: vertices and normals must both be (T,V,3), got "
                f"{tuple(vertices.shape)} and {tuple(normals.shape)}"
            )
        t, v = vertices.shape[:2]
        if occluders is not None and (
            occluders.vertices.ndim != 3
            or occluders.vertices.shape[0] != t
            or occluders.vertices.shape[-1] != 3
        ):
            raise ParameterError(
                f"visibility: occluder vertices must be ({t},V2,3) for {t} frames, got "
                f"{tuple(occluders.vertices.shape)}"
            )
        k = self.cfg.n_directions
        out = torch.zeros(t, v, k, dtype=torch.float32)
        if k == 0 or v == 0:
            return out.to(vertices.device)
        dirs = self.directions.double().numpy()
        faces_np = faces.detach().cpu().long().numpy()
        if occluders is not None:
            # One intersector per frame on both meshes: the occluder's faces index its
            # vertices, which follow the mesh's own.
            occluder_faces = occluders.faces.detach().cpu().long().numpy() + v
            faces_np = np.concatenate([faces_np, occluder_faces])
        for frame in range(t):
            verts = vertices[frame].detach().cpu().double().numpy()
            if not np.isfinite(verts).all():
                raise ParameterError(f"visibility: frame {frame} has non-finite posed vertices")
            mesh_verts = verts
            if occluders is not None:
                other = occluders.vertices[frame].detach().cpu().double().numpy()
                if not np.isfinite(other).all():
                    raise ParameterError(
                        f"visibility: frame {frame} has non-finite occluder vertices"
                    )
                mesh_verts = np.concatenate([verts, other])
            caster = mesh_intersector(mesh_verts, faces_np)
            normal = normals[frame].detach().cpu().double().numpy()
            # A direction behind the surface is dark by definition (as in Lambertian
            # shading); casting it would let a ray from the offset start graze out.
            facing = normal @ dirs.T > 0.0  # (V, K)
            vertex_ids, dir_ids = np.nonzero(facing)
            origins = verts[vertex_ids] + normal[vertex_ids] * self.cfg.offset
            hit = np.asarray(caster.intersects_any(origins, dirs[dir_ids]), dtype=bool)
            seen = np.zeros((v, k), dtype=np.float32)
            seen[vertex_ids[~hit], dir_ids[~hit]] = 1.0
            out[frame] = torch.from_numpy(seen)
        return out.to(vertices.device)
