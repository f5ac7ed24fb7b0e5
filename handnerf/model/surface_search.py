"""Closest points on a posed triangle mesh, for the deformer's surface modes.

The inverse-LBS deformer (:mod:`handnerf.model.deformer`) finds each sample's nearest
posed vertices; this module turns those into the closest point on the mesh: the closest
triangle among the triangles around the nearest vertices, the barycentric coordinates of
the closest point on it and its squared distance. It also bounds how far a surface point
can lie from every vertex (:func:`cover_radius`: the search reach needed when emptiness is
judged by the distance to the mesh) and seeds points over the mesh's triangles
(:func:`surface_lattice`: the avatar's shell grid of a coarse mesh).

Tensors: ``F`` frames, ``V`` vertices, ``T`` triangles, ``N`` query points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from handnerf.errors import ConfigError, ParameterError

# Points per chunk of the closest-triangle search (bounds its (N, C, 3, 3) gathers).
SURFACE_CHUNK = 1 << 16


@dataclass
class MeshTables:
    """What the closest-triangle search needs of ``F`` posed frames of one mesh.

    Attributes:
        posed_vertices: (F, V, 3) posed vertices.
        faces: (T, 3) long vertex ids of the triangles.
        vertex_faces: (V, M) long ids of the triangles around each vertex, -1 padded.
        face_frames: (F * T, 13) per frame and triangle, see :func:`face_frames`.
    """

    posed_vertices: torch.Tensor
    faces: torch.Tensor
    vertex_faces: torch.Tensor
    face_frames: torch.Tensor

    @classmethod
    def build(cls, posed_vertices: torch.Tensor, faces: torch.Tensor | None) -> MeshTables:
        """Check ``faces`` (T, 3) against ``posed_vertices`` (F, V, 3) and build the tables."""
        faces, vertex_faces = face_tables(faces, posed_vertices.shape[1])
        faces = faces.to(posed_vertices.device)
        return cls(
            posed_vertices=posed_vertices,
            faces=faces,
            vertex_faces=vertex_faces.to(posed_vertices.device),
            face_frames=face_frames(posed_vertices, faces),
        )


def face_tables(faces: torch.Tensor | None, num_vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked (T, 3) long faces and the (V, M) table of triangles around each vertex (-1 pad)."""
    if faces is None:
        raise ConfigError(
            "the deformer's surface modes need the mesh: pass faces to prepare_frames"
        )
    if not isinstance(faces, torch.Tensor) or faces.ndim != 2 or faces.shape[1] != 3:
        shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces)
        raise ParameterError(f"prepare_frames: faces must be a (T, 3) tensor, got {shape}")
    if faces.dtype.is_floating_point or faces.shape[0] == 0:
        raise ParameterError("prepare_frames: faces must be a non-empty integer tensor")
    faces = faces.detach().cpu().long()
    if int(faces.min()) < 0 or int(faces.max()) >= num_vertices:
        raise ParameterError(
            f"prepare_frames: faces must index vertices in [0, {num_vertices}), got range "
            f"[{int(faces.min())}, {int(faces.max())}]"
        )
    corner_vertex = faces.reshape(-1)
    corner_face = torch.arange(faces.shape[0]).repeat_interleave(3)
    order = torch.argsort(corner_vertex, stable=True)
    corner_vertex, corner_face = corner_vertex[order], corner_face[order]
    counts = torch.bincount(corner_vertex, minlength=num_vertices)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(corner_vertex)) - starts[corner_vertex]
    table = torch.full((num_vertices, max(1, int(counts.max()))), -1, dtype=torch.long)
    table[corner_vertex, slot] = corner_face
    return faces, table


def face_frames(posed_vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(F * T, 13) per frame and triangle: corner a, unit normal n, the dual vectors g1,
    g2 that give the plane projection's barycentrics as v = (p - a)·g1, w = (p - a)·g2,
    and 1 for a proper triangle, 0 for a degenerate one (no plane to project on)."""
    corners = posed_vertices[:, faces]  # (F, T, 3, 3)
    a = corners[:, :, 0]
    ab, ac = corners[:, :, 1] - a, corners[:, :, 2] - a
    d00, d01, d11 = (ab * ab).sum(-1), (ab * ac).sum(-1), (ac * ac).sum(-1)
    denom = (d00 * d11 - d01 * d01)[..., None]
    flat = denom <= 1e-12 * (d00 * d11)[..., None].clamp(min=1e-30)
    safe = torch.where(flat, torch.ones_like(denom), denom)
    g1 = torch.where(flat, 0.0, (d11[..., None] * ab - d01[..., None] * ac) / safe)
    g2 = torch.where(flat, 0.0, (d00[..., None] * ac - d01[..., None] * ab) / safe)
    normal = torch.nn.functional.normalize(torch.cross(ab, ac, dim=-1), dim=-1)
    proper = (~flat).to(a.dtype)
    return torch.cat([a, normal, g1, g2, proper], dim=-1).reshape(-1, 13).contiguous()


def closest_point_on_triangles(
    points: torch.Tensor, corners: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentric coordinates (..., 3) of the closest point on each triangle to each point,
    and its squared distance (...).

    points (..., 3) broadcast against corners (..., 3, 3) (three corners of each triangle).
    The closest point is the projection onto the plane when that falls inside the
    triangle, else the closest point of the nearest edge; degenerate triangles use the
    edges only. Distances are expanded from dot products, so that the only (..., 3)
    temporaries are the edge vectors (this runs for every candidate of every sample).
    """
    a, b, c = corners[..., 0, :], corners[..., 1, :], corners[..., 2, :]
    ab, ac, ap = b - a, c - a, points - a
    d00, d01, d11 = (ab * ab).sum(-1), (ab * ac).sum(-1), (ac * ac).sum(-1)
    d20, d21, dpp = (ap * ab).sum(-1), (ap * ac).sum(-1), (ap * ap).sum(-1)
    tiny = 1e-30
    denom = d00 * d11 - d01 * d01
    flat = denom <= 1e-12 * (d00 * d11).clamp(min=tiny)
    safe = torch.where(flat, torch.ones_like(denom), denom)
    v = (d11 * d20 - d01 * d21) / safe
    w = (d00 * d21 - d01 * d20) / safe
    u = 1.0 - v - w
    inside = (u >= 0) & (v >= 0) & (w >= 0) & ~flat
    plane = dpp - 2 * (v * d20 + w * d21) + v * v * d00 + 2 * v * w * d01 + w * w * d11
    # Edges: a + t ab, a + t ac, b + t bc, with bp·bc = (d21 - d20) - (d01 - d00) and
    # |bc|^2 = d00 + d11 - 2 d01, all from the dot products above.
    d_bc = (d00 + d11 - 2 * d01).clamp(min=tiny)
    t_ab = (d20 / d00.clamp(min=tiny)).clamp(0.0, 1.0)
    t_ac = (d21 / d11.clamp(min=tiny)).clamp(0.0, 1.0)
    t_bc = (((d21 - d20) - (d01 - d00)) / d_bc).clamp(0.0, 1.0)
    e_ab = dpp - 2 * t_ab * d20 + t_ab * t_ab * d00
    e_ac = dpp - 2 * t_ac * d21 + t_ac * t_ac * d11
    # |p - b - t bc|^2 = |bp|^2 - 2 t bp·bc + t^2 |bc|^2, |bp|^2 = dpp - 2 d20 + d00
    bp_bc = (d21 - d20) - (d01 - d00)
    e_bc = (dpp - 2 * d20 + d00) - 2 * t_bc * bp_bc + t_bc * t_bc * d_bc
    zero = torch.zeros_like(u)
    # Inside, the plane point is closest; else the nearest of the three edge points.
    use_ab = (e_ab <= e_ac) & (e_ab <= e_bc)
    use_ac = ~use_ab & (e_ac <= e_bc)
    edge_d2 = torch.where(use_ab, e_ab, torch.where(use_ac, e_ac, e_bc))
    bu = torch.where(use_ab, 1 - t_ab, torch.where(use_ac, 1 - t_ac, zero))
    bv = torch.where(use_ab, t_ab, torch.where(use_ac, zero, 1 - t_bc))
    bw = torch.where(use_ab, zero, torch.where(use_ac, t_ac, t_bc))
    bary = torch.stack(
        [torch.where(inside, u, bu), torch.where(inside, v, bv), torch.where(inside, w, bw)], -1
    )
    return bary, torch.where(inside, plane, edge_d2).clamp(min=0.0)


def closest_triangles(
    tables: MeshTables,
    points: torch.Tensor,
    frame_ids: torch.Tensor,
    near_ids: torch.Tensor,
    exact_within: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each point's closest triangle among those around its nearest vertices.

    Args:
        tables: the posed frames' mesh tables.
        points: (N, 3) posed points.
        frame_ids: (N,) long frame of each point.
        near_ids: (N, c) long ids, local to the point's frame, of its nearest vertices
            (every triangle around them is a candidate).
        exact_within: the closest of all candidates also for points off the surface that
            may lie within this distance (metres) of a candidate (see below).

    Returns:
        vertex ids (N, 3) local to the frame, barycentric weights (N, 3) of the closest point
        and its squared distance (N,).

    Fast path: among the candidates whose plane projection falls inside them, the one with
    the nearest plane (exact for points above a triangle, the case of every surface
    sample). Points with no such candidate (beyond an edge or a convex corner) get the
    exact closest-point search over their candidates. With ``exact_within``, so do the points
    for which another candidate's plane is nearer than the chosen one (its edge could be
    nearer too: between two fingers, a point beyond one finger's edge projects into the
    other finger's triangle); without, the distance is that of a real point of the mesh,
    so it can only overestimate the distance to the mesh.
    """
    n_faces = tables.faces.shape[0]
    num_vertices = tables.posed_vertices.shape[1]
    out_ids = torch.empty(points.shape[0], 3, dtype=torch.long, device=points.device)
    out_weights = points.new_empty(points.shape[0], 3)
    out_dist2 = points.new_empty(points.shape[0])
    flat_vertices = tables.posed_vertices.reshape(-1, 3)
    for start in range(0, points.shape[0], SURFACE_CHUNK):
        part = slice(start, start + SURFACE_CHUNK)
        candidates = tables.vertex_faces[near_ids[part]].flatten(1)  # (n, C) triangle ids
        real = candidates >= 0
        candidates = candidates.clamp(min=0)
        table = tables.face_frames[frame_ids[part, None] * n_faces + candidates]  # (n, C, 13)
        ap = points[part, None] - table[..., 0:3]
        height = (ap * table[..., 3:6]).sum(-1).abs()
        v = (ap * table[..., 6:9]).sum(-1)
        w = (ap * table[..., 9:12]).sum(-1)
        # Degenerate candidates are left to the exact search below (it uses their edges).
        inside = real & (table[..., 12] > 0) & (v >= 0) & (w >= 0) & (v + w <= 1)
        score = torch.where(inside, height, torch.full_like(height, torch.inf))
        best_score, best = score.min(dim=1)
        rows = torch.arange(len(best), device=points.device)
        bary = torch.stack([1 - v[rows, best] - w[rows, best], v[rows, best], w[rows, best]], -1)
        tri_ids = tables.faces[candidates[rows, best]]
        dist2 = best_score.square()
        unsure = ~torch.isfinite(best_score)
        if exact_within is not None:
            # A triangle is never nearer than its plane: only a candidate not chosen whose
            # plane is nearer than the choice can hold a nearer point (degenerate ones,
            # without a plane, always could).
            lower = torch.where(table[..., 12] > 0, height, torch.zeros_like(height))
            lower = torch.where(real & ~inside, lower, torch.full_like(lower, torch.inf))
            # Points no candidate plane comes within reach of stay as they are (empty).
            nearest_plane = torch.where(real, height, torch.full_like(height, torch.inf))
            within = nearest_plane.amin(dim=1) <= exact_within
            unsure |= (lower.amin(dim=1) < best_score) & within
        outside = torch.nonzero(unsure).squeeze(1)
        if outside.numel():
            triangles = tables.faces[candidates[outside]]  # (m, C, 3)
            frame_of = frame_ids[part][outside]
            corners = flat_vertices[frame_of[:, None, None] * num_vertices + triangles]
            exact_bary, exact_dist2 = closest_point_on_triangles(
                points[part][outside, None], corners
            )
            exact_dist2 = torch.where(real[outside], exact_dist2, torch.inf)
            pick = exact_dist2.argmin(dim=1)
            sub = torch.arange(len(pick), device=points.device)
            bary[outside] = exact_bary[sub, pick]
            tri_ids[outside] = triangles[sub, pick]
            dist2[outside] = exact_dist2[sub, pick]
        out_ids[part] = tri_ids
        out_weights[part] = bary
        out_dist2[part] = dist2
    return out_ids, out_weights, out_dist2


def cover_radius(posed_vertices: torch.Tensor, faces: torch.Tensor) -> float:
    """Bound (metres) on the distance from any point of the meshes to its nearest vertex.

    A point of a triangle is no farther from the nearest corner than the triangle's
    circumradius (its farthest point from all corners is the circumcentre, or a point of an
    edge's bisector, inside the circumcircle), nor than the longest edge. The maximum over
    the (F, V, 3) frames' (T, 3) triangles; on real MANO about 12-14 mm.
    """
    corners = posed_vertices[:, faces]  # (F, T, 3, 3)
    edges = corners.roll(-1, dims=2) - corners
    lengths = edges.norm(dim=-1)  # (F, T, 3)
    twice_area = torch.cross(edges[..., 0, :], edges[..., 1, :], dim=-1).norm(dim=-1)
    circumradius = lengths.prod(dim=-1) / (2 * twice_area).clamp(min=1e-30)
    bound = torch.minimum(circumradius, lengths.amax(dim=-1))
    return float(bound.amax()) if bound.numel() else 0.0


def surface_lattice(vertices: torch.Tensor, faces: torch.Tensor, spacing: float) -> torch.Tensor:
    """(F, T * L, 3) points over the triangles of the (F, V, 3) meshes, every point of every
    triangle within ``spacing`` of one of them.

    Each (T, 3) triangle is split into ``n^2`` by a regular barycentric lattice of
    ``L = (n + 1)(n + 2) / 2`` points, ``n`` chosen so that the longest edge of the meshes
    is cut into pieces no longer than ``spacing``.
    """
    if not math.isfinite(spacing) or spacing <= 0:
        raise ParameterError(f"surface_lattice: spacing must be positive, got {spacing}")
    corners = vertices[:, faces]  # (F, T, 3, 3)
    longest = (
        float((corners.roll(-1, dims=2) - corners).norm(dim=-1).amax()) if faces.numel() else 0.0
    )
    n = max(1, math.ceil(longest / spacing))
    steps = torch.arange(n + 1, device=vertices.device)
    i, j = torch.meshgrid(steps, steps, indexing="ij")
    keep = i + j <= n
    i, j = i[keep], j[keep]
    bary = torch.stack([n - i - j, i, j], dim=-1).to(vertices.dtype) / n  # (L, 3)
    points = torch.einsum("lc,ftcd->ftld", bary, corners)
    return points.reshape(vertices.shape[0], -1, 3)
