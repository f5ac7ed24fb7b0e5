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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.kernels import mesh_search_kernel

if TYPE_CHECKING:
    from handnerf.model.reach_grid import ReachGrid

# Points per chunk of the closest-triangle search (bounds its (N, C, 16) gathers).
SURFACE_CHUNK = 1 << 16
# Columns of MeshTables.face_frames (see face_frames).
FACE_COLUMNS = 16
# Plane distance (metres) of every point from the padding row of MeshTables.face_frames:
# farther than any candidate triangle, never chosen.
PADDING_DISTANCE = 1e9
# (Point, triangle) pairs per chunk of TriangleScan's bounding-sphere distances: on the
# CPU (without libigl) chunks that stay in cache. On CUDA the scan is the GPU path, and
# there each chunk is some 120 small kernel launches whatever its size: on an H200
# (2026-12-04, docs/benchmarks.md) a 256x256 render took 0.7-0.9 s, launch-bound, and
# chunks of 2^22 pairs (2.7k points of MANO) made 47k of its 68k operations. 2^26 pairs
# (43k points, about 0.6 GB of temporaries) cut them to 7k.
SCAN_CHUNK_PAIRS = 1 << 22
SCAN_CHUNK_PAIRS_CUDA = 1 << 26
# Candidates whose lower bound is within this (metres) of the chosen triangle's distance
# are not searched: the closest point could only be that much nearer.
TIE_TOLERANCE = 1e-7


@dataclass
class MeshTables:
    """What the closest-triangle search needs of ``F`` posed frames of one mesh.

    Attributes:
        posed_vertices: (F, V, 3) posed vertices.
        faces: (T, 3) long vertex ids of the triangles.
        vertex_faces: (V, M) long ids of the triangles around each vertex, padded with
            ``T`` (the padding row of every frame's ``face_frames``).
        face_frames: (F * (T + 1), 16) per frame, its triangles and a padding row, see
            :func:`face_frames`.
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
        # Padding points at each frame's padding row (no mask to apply per candidate).
        vertex_faces = torch.where(vertex_faces < 0, faces.shape[0], vertex_faces)
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
    """(F * (T + 1), 16) per frame: a row per triangle and a padding row, each a 4x4
    row-major matrix ``M`` whose product with a point's homogeneous (x, 1) gives its signed
    plane distance h (unit normal n, minus n·a for corner a), its plane projection's
    barycentrics v and w (rows g1, g2: dual vectors of the edges ab and ac), and in the last
    row the altitudes of corners a, b, c over their opposite edges and 1 for a proper
    triangle (0 for a degenerate one, whose first three rows are zero: no plane).

    A barycentric coordinate is the signed distance to the opposite edge's line over that
    altitude, so ``-u * altitude_a`` (when u < 0) bounds the in-plane distance from the
    projection to the triangle from below (exactly, when the closest point lies on that
    edge): :func:`closest_triangles` ranks candidates by that bound. The padding row
    puts every point at ``PADDING_DISTANCE`` from it.
    """
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
    normal = torch.where(flat, 0.0, normal)
    # Altitude over the opposite edge = twice the area / that edge's length.
    opposite = torch.stack(
        [(corners[:, :, 2] - corners[:, :, 1]).norm(dim=-1), ac.norm(dim=-1), ab.norm(dim=-1)], -1
    )
    altitudes = torch.where(flat, 0.0, safe.sqrt() / opposite.clamp(min=1e-30))
    rows = [
        torch.cat([vector, -(vector * a).sum(-1, keepdim=True)], -1) for vector in (normal, g1, g2)
    ]
    rows.append(torch.cat([altitudes, (~flat).to(a.dtype)], -1))
    table = torch.stack(rows, dim=2).reshape(posed_vertices.shape[0], -1, FACE_COLUMNS)
    padding = table.new_zeros(table.shape[0], 1, FACE_COLUMNS)
    padding[..., 3] = PADDING_DISTANCE
    return torch.cat([table, padding], dim=1).reshape(-1, FACE_COLUMNS).contiguous()


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

    Every candidate gets a cheap lower bound of its distance: the plane distance combined
    with the in-plane distance to the edge line its projection lies beyond (exact above a
    triangle, the case of every surface sample, and beyond an edge's interior). The
    candidate with the lowest bound gets the exact closest point. Then only the candidates
    whose bound is below that distance (by more than ``TIE_TOLERANCE``) could hold a
    nearer point: they get the exact search, one (point, candidate) pair at a time, for
    the points whose chosen candidate's bound is not exact (beyond a corner), and with
    ``exact_within`` for every point whose lowest bound is within that distance (others
    are empty whichever candidate is nearest). The distance is always that of a real point
    of the mesh, so it can only overestimate the distance to the mesh.
    """
    out_ids = torch.empty(points.shape[0], 3, dtype=torch.long, device=points.device)
    out_weights = points.new_empty(points.shape[0], 3)
    out_dist2 = points.new_empty(points.shape[0])
    for start in range(0, points.shape[0], SURFACE_CHUNK):
        part = slice(start, start + SURFACE_CHUNK)
        tri_ids, bary, dist2 = _closest_in_chunk(
            tables, points[part], frame_ids[part], near_ids[part], exact_within
        )
        out_ids[part] = tri_ids
        out_weights[part] = bary
        out_dist2[part] = dist2
    return out_ids, out_weights, out_dist2


def _closest_in_chunk(
    tables: MeshTables,
    points: torch.Tensor,
    frame_ids: torch.Tensor,
    near_ids: torch.Tensor,
    exact_within: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`closest_triangles` of (n, 3) points (one chunk)."""
    n_rows = tables.faces.shape[0] + 1  # per frame, with the padding row
    candidates = tables.vertex_faces[near_ids].flatten(1)  # (n, C) triangle ids
    n, n_candidates = candidates.shape
    table = tables.face_frames[frame_ids[:, None] * n_rows + candidates]  # (n, C, 16)
    homogeneous = torch.cat([points, points.new_ones(n, 1)], dim=1)
    # One batched product per point: (C * 4, 4) matrices times its (x, 1).
    hvw = torch.bmm(table.view(n, n_candidates * 4, 4), homogeneous[:, :, None])
    hvw = hvw.view(n, n_candidates, 4)
    height, v, w = hvw[..., 0], hvw[..., 1], hvw[..., 2]
    altitudes = table[..., 12:15]
    # Beyond an edge by -coordinate x altitude in the plane (0 inside; degenerate triangles
    # have zero rows and altitudes, so a bound of 0: they are always searched).
    beyond = torch.maximum(
        torch.maximum((v + w - 1) * altitudes[..., 0], -v * altitudes[..., 1]),
        (-w * altitudes[..., 2]).clamp(min=0),
    )
    bound2 = height.square() + beyond.square()
    best_bound2, best = bound2.min(dim=1)
    rows = torch.arange(len(best), device=points.device)
    # (Clamped: a vertex in no triangle has only padding, at PADDING_DISTANCE: empty.)
    tri_ids = tables.faces[candidates[rows, best].clamp(max=n_rows - 2)]  # (n, 3)
    v, w = v[rows, best], w[rows, best]
    bary = torch.stack([1 - v - w, v, w], -1)
    dist2 = best_bound2.clone()
    # Above the chosen triangle the bound is its distance and the projection's barycentrics
    # its closest point; elsewhere (beyond an edge or corner, or degenerate) search it.
    off = torch.nonzero((bary.amin(dim=1) < 0) | (table[rows, best, 15] == 0)).squeeze(1)
    if off.numel():
        bary[off], dist2[off] = _closest_point(tables, points[off], frame_ids[off], tri_ids[off])
        # Beyond a convex corner the closest point is that corner, most often the nearest
        # vertex, which the lowest bound does not always pick (it underestimates there).
        _take_nearest_vertex(tables, points, frame_ids, near_ids[:, 0], off, tri_ids, bary, dist2)
    if exact_within is None:
        # Only where the chosen bound is not the distance (beyond a corner, or a degenerate
        # triangle): a nearer candidate may exist there.
        search = dist2 > best_bound2 + TIE_TOLERANCE * (2 * best_bound2.sqrt() + TIE_TOLERANCE)
    else:
        search = best_bound2 <= exact_within**2
    limit = (dist2.sqrt() - TIE_TOLERANCE).clamp(min=0).square()
    pairs = search[:, None] & (bound2 < limit[:, None])
    pairs[rows, best] = False
    pair_rows, pair_slots = torch.nonzero(pairs, as_tuple=True)
    if pair_rows.numel() == 0:
        return tri_ids, bary, dist2
    pair_tris = tables.faces[candidates[pair_rows, pair_slots]]  # (P, 3)
    pair_bary, pair_dist2 = _closest_point(
        tables, points[pair_rows], frame_ids[pair_rows], pair_tris
    )
    nearest, wins = _pair_winners(dist2, pair_rows, pair_dist2)
    tri_ids[pair_rows[wins]] = pair_tris[wins]
    bary[pair_rows[wins]] = pair_bary[wins]
    return tri_ids, bary, nearest


class TriangleScan:
    """The exact closest point of the whole mesh in pure PyTorch (any device).

    The twin of :class:`TriangleTrees` for the GPU (and the CPU without libigl): every
    triangle gets a lower bound of its distance from its bounding sphere (one ``cdist``
    per chunk of points), the triangle with the lowest bound an exact test, and then only
    the triangles whose bound is below that distance get one too. Unlike the search among
    the nearest vertices' triangles (:func:`closest_triangles`), it cannot miss a
    triangle, e.g. under fingers curled onto the palm, whose vertices are nearer.
    """

    def __init__(
        self, tables: MeshTables, chunk_pairs: int | None = None, kernel: Any = "auto"
    ) -> None:
        """``chunk_pairs``: (point, triangle) pairs per chunk of the bounding-sphere scan
        (None: :data:`SCAN_CHUNK_PAIRS_CUDA` for tables on CUDA, else
        :data:`SCAN_CHUNK_PAIRS`). The result does not depend on it.
        ``kernel``: a module with ``closest_on_mesh`` (:mod:`handnerf.model.closest_kernel`)
        that searches instead of the scan; "auto": :func:`mesh_search_kernel` of the tables'
        device (the fused kernel on CUDA); None: the scan."""
        self.tables = tables
        device = tables.posed_vertices.device
        self.kernel = mesh_search_kernel(device) if kernel == "auto" else kernel
        if chunk_pairs is None:
            chunk_pairs = SCAN_CHUNK_PAIRS_CUDA if device.type == "cuda" else SCAN_CHUNK_PAIRS
        if chunk_pairs < 1:
            raise ParameterError(f"TriangleScan: chunk_pairs must be >= 1, got {chunk_pairs}")
        self.chunk_pairs = chunk_pairs
        self.corners = tables.posed_vertices[:, tables.faces]  # (F, T, 3, 3)
        self.centres = self.corners.mean(dim=2)  # (F, T, 3)
        self.radii = (self.corners - self.centres[:, :, None]).norm(dim=-1).amax(dim=-1)  # (F, T)

    def closest(
        self, points: torch.Tensor, frame_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`TriangleTrees.closest`."""
        if self.kernel is not None and points.dtype == torch.float32:
            return self._closest_by_kernel(points, frame_ids)
        n_triangles = self.tables.faces.shape[0]
        face = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
        chunk = max(1, self.chunk_pairs // max(n_triangles, 1))
        for frame, rows in rows_by_frame(frame_ids):
            for start in range(0, len(rows), chunk):
                part = rows[start : start + chunk]
                face[part] = self._scan(points[part], frame)
        tri_ids = self.tables.faces[face]
        bary, dist2 = _closest_point(self.tables, points, frame_ids, tri_ids)
        return tri_ids, bary, dist2

    def _closest_by_kernel(
        self, points: torch.Tensor, frame_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`closest` by the fused kernel: one launch per frame."""
        n = points.shape[0]
        face = torch.zeros(n, dtype=torch.long, device=points.device)
        bary = torch.zeros(n, 3, dtype=torch.float32, device=points.device)
        dist2 = torch.zeros(n, dtype=torch.float32, device=points.device)
        with torch.no_grad():
            for frame, rows in rows_by_frame(frame_ids):
                found = self.kernel.closest_on_mesh(points[rows], self.corners[frame])
                face[rows], bary[rows], dist2[rows] = found
        tri_ids = self.tables.faces[face]
        wants_grad = torch.is_grad_enabled() and (
            points.requires_grad or self.tables.posed_vertices.requires_grad
        )
        if wants_grad:
            # The kernel's outputs carry no gradient: a fit differentiates the closest point
            # (w.r.t. the samples, and the posed mesh when poses are refined) as the scan does.
            bary, dist2 = _closest_point(self.tables, points, frame_ids, tri_ids)
            return tri_ids, bary, dist2
        return tri_ids, bary.to(points.dtype), dist2.to(points.dtype)

    def reach_grid(self, reach: float) -> None:
        """None: the scan serves any device (the reach grid is the CPU trees' helper)."""
        return None

    def _scan(self, points: torch.Tensor, frame: int) -> torch.Tensor:
        """(n,) id of the closest triangle of ``frame`` to each (n, 3) point."""
        # Direct form on the CPU: the matmul form rounds differently run to run (see
        # neighbour_search.knn_cdist), which moved near-tie picks between identical calls.
        mode = (
            "donot_use_mm_for_euclid_dist"
            if points.device.type == "cpu"
            else "use_mm_for_euclid_dist_if_necessary"
        )
        distances = torch.cdist(points, self.centres[frame], compute_mode=mode)
        bound = (distances - self.radii[frame]).clamp(min=0)
        first = bound.argmin(dim=1)  # (n,)
        frame_ids = torch.full_like(first, frame)
        _, best2 = _closest_point(self.tables, points, frame_ids, self.tables.faces[first])
        limit = best2.sqrt() + TIE_TOLERANCE
        pairs = bound < limit[:, None]
        pairs[torch.arange(len(first), device=points.device), first] = False
        pair_rows, pair_tris = torch.nonzero(pairs, as_tuple=True)
        if pair_rows.numel() == 0:
            return first
        _, pair_dist2 = _closest_point(
            self.tables, points[pair_rows], frame_ids[pair_rows], self.tables.faces[pair_tris]
        )
        _, wins = _pair_winners(best2, pair_rows, pair_dist2)
        first = first.clone()
        first[pair_rows[wins]] = pair_tris[wins]
        return first


def rows_by_frame(frame_ids: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """``(frame, rows)`` of every frame present in the (N,) ``frame_ids``, its rows in
    order: one sort and one host sync for the whole batch (a training step's rays come
    from every frame), not a pass over all rows per frame."""
    order = torch.argsort(frame_ids, stable=True)
    frames, counts = torch.unique_consecutive(frame_ids[order], return_counts=True)
    groups = torch.split(order, counts.tolist())
    return list(zip(frames.tolist(), groups, strict=True))


def _pair_winners(
    best2: torch.Tensor, pair_rows: torch.Tensor, pair_dist2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's new minimum (n,) of its ``best2`` (n,) and its (P,) pairs' squared
    distances (rows ``pair_rows`` (P,)), and the indices of the pairs that reach it below
    the old one (ties: any of them, one and the same point)."""
    nearest = best2.scatter_reduce(0, pair_rows, pair_dist2, reduce="amin")
    wins = torch.nonzero((pair_dist2 < best2[pair_rows]) & (pair_dist2 == nearest[pair_rows]))
    return nearest, wins.squeeze(1)


class TriangleTrees:
    """libigl AABB trees of the posed frames: the exact closest point of the whole mesh.

    The CPU path of the mesh modes (one tree per frame, ~1 ms to build for MANO's 1538
    triangles). Unlike :func:`closest_triangles` (the pure-PyTorch search among the
    triangles around the nearest vertices, used on the GPU) it needs no candidates and
    can miss no triangle; the barycentrics and distance are then measured as there.
    """

    def __init__(self, tables: MeshTables) -> None:
        import igl  # lazily: only the CPU mesh modes need it

        self.tables = tables
        self._faces = tables.faces.cpu().numpy().astype(np.int64)
        self._vertices = [v.double().numpy() for v in tables.posed_vertices.detach().cpu()]
        self._reach_grids: dict[float, ReachGrid] = {}  # per reach, built on first use
        self._trees = []
        for vertices in self._vertices:
            tree = igl.AABB()
            tree.init(vertices, self._faces)
            self._trees.append(tree)

    @staticmethod
    def available() -> bool:
        """Whether libigl imports (else the mesh modes use :func:`closest_triangles`)."""
        try:
            import igl  # noqa: F401
        except ImportError:
            return False
        return True

    def closest(
        self, points: torch.Tensor, frame_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vertex ids (N, 3) local to the frame, barycentrics (N, 3) and squared distance
        (N,) of the closest point of each (N, 3) point's (N,) frame's mesh."""
        face = torch.empty(points.shape[0], dtype=torch.long)
        query = points.detach().cpu().double().numpy()
        frames = frame_ids.cpu()
        for frame, rows in rows_by_frame(frames):
            _, nearest, _ = self._trees[frame].squared_distance(
                self._vertices[frame], self._faces, np.ascontiguousarray(query[rows.numpy()])
            )
            face[rows] = torch.from_numpy(np.asarray(nearest, dtype=np.int64))
        tri_ids = self.tables.faces[face.to(points.device)]
        bary, dist2 = _closest_point(self.tables, points, frame_ids, tri_ids)
        return tri_ids, bary, dist2

    def reach_grid(self, reach: float) -> ReachGrid | None:
        """The frames' :class:`handnerf.model.reach_grid.ReachGrid` for ``reach`` (built on
        first use; its frames' grids on their first query), or None where numba does not
        import (or ``HANDNERF_REACH_GRID=0``)."""
        from handnerf.model import reach_grid  # numba: imported on first use only

        if not reach_grid.available():
            return None
        grid = self._reach_grids.get(reach)
        if grid is None:
            grid = reach_grid.ReachGrid(self.tables.posed_vertices, self.tables.faces, reach)
            self._reach_grids[reach] = grid
        return grid


def _take_nearest_vertex(
    tables: MeshTables,
    points: torch.Tensor,
    frame_ids: torch.Tensor,
    nearest: torch.Tensor,
    rows: torch.Tensor,
    tri_ids: torch.Tensor,
    bary: torch.Tensor,
    dist2: torch.Tensor,
) -> None:
    """Where the (n,) ``nearest`` vertex is nearer than the closest point found, of the
    (m,) ``rows``, make it the closest point (in place: a triangle around it, weight 1)."""
    num_vertices = tables.posed_vertices.shape[1]
    vertex = nearest[rows]
    position = tables.posed_vertices.reshape(-1, 3)[frame_ids[rows] * num_vertices + vertex]
    vertex_dist2 = (points[rows] - position).square().sum(dim=1)
    nearer = torch.nonzero(vertex_dist2 < dist2[rows]).squeeze(1)
    if nearer.numel() == 0:
        return
    rows, vertex = rows[nearer], vertex[nearer]
    # Its first triangle (a vertex in no triangle has only padding: any triangle, the
    # weights then all 0 and the sample far beyond every candidate anyway).
    triangle = tables.faces[tables.vertex_faces[vertex, 0].clamp(max=len(tables.faces) - 1)]
    tri_ids[rows] = triangle
    bary[rows] = (triangle == vertex[:, None]).to(bary.dtype)
    dist2[rows] = vertex_dist2[nearer]


def _closest_point(
    tables: MeshTables, points: torch.Tensor, frame_ids: torch.Tensor, tri_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Barycentrics (n, 3) of the closest point of each (n, 3) triangle (vertex ids local to
    the point's frame) to each (n, 3) point, and its squared distance (n,) measured from
    that point: the dot-product expansion of :func:`closest_point_on_triangles` loses the
    distance to cancellation in float32 when it is small (micrometres at 2 cm)."""
    corners = tables.posed_vertices.reshape(-1, 3)[
        frame_ids[:, None] * tables.posed_vertices.shape[1] + tri_ids
    ]
    bary, _ = closest_point_on_triangles(points, corners)
    closest = (bary[..., None] * corners).sum(dim=1)
    return bary, (points - closest).square().sum(dim=1)


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
