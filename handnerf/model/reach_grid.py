"""Closest triangles within the deformer's reach, from a per-frame candidate grid (numba).

The fast render path (:mod:`handnerf.model.marching`) asks, for every shell sample, which
triangle of the posed mesh is closest, and only where that is within the deformer's reach
(``max_distance``) does the answer matter; beyond it, a lower bound of the distance is
enough (the sample is empty and the bound lets the ray skip ahead). libigl's AABB tree
answers the whole-mesh question exactly, but holds the GIL and runs single-threaded below
10,000 points a call, and the fast path's rounds are mostly smaller: on a 256x256 render
of the demo avatar it was about half of the time.

:class:`ReachGrid` answers the narrower question from a grid over the frame's box:

- **Build (per posed frame, on first use).** Every cell lists the triangles whose distance
  to the cell's centre is at most ``limit + h`` (``h``: half the cell's diagonal), sorted by
  that distance. A point of the cell is within ``h`` of the centre, so every triangle
  within ``limit`` of the point is listed (the distance is 1-Lipschitz).
- **Query.** Scan the point's cell's list in order, keeping the nearest triangle; stop once
  a listed triangle's centre distance minus the point's own (at most ``h``) exceeds the
  best distance found (no later one can be nearer) or ``limit``. A point whose nearest
  listed triangle is within ``limit`` gets it, exactly the closest triangle of the whole
  mesh (ties between triangles at the same distance aside: they share the closest point);
  any other point gets none, and the lower bound ``limit`` of its distance.

``limit`` is ``max_distance`` plus a margin (:data:`SKIP_MARGIN`): samples up to the margin
beyond reach still learn their exact distance, which the fast path uses to skip ahead.
The distances are float64, as libigl's.

:meth:`ReachGrid.deform_within` fuses the query with what the deformer does next for a
sample in reach (``FrameDeformation._assemble`` in torch: the closest point's barycentrics
blend its corners' transforms, inverted in closed form, anchored at the blended canonical
point with correctives): one pass per sample instead of a dozen tensor operations, each a
pass over the round's samples. tests/model/test_reach_grid.py checks the triangles against
libigl's and the deformation against the torch path's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from handnerf.model.kernels import switched_on

try:
    import numba
except ImportError:  # libigl serves alone
    numba = None

#: Set to "0" to keep libigl's whole-mesh search (e.g. to compare the two).
ENV_SWITCH = "HANDNERF_REACH_GRID"
#: Exact distances are found up to this far beyond the reach (metres): they let the fast
#: path skip empty samples; larger lists cost more per query.
SKIP_MARGIN = 0.004
#: Grid cell edge (metres): smaller cells list fewer triangles, but take longer to build.
CELL_SIZE = 0.004


def available() -> bool:
    """Whether the grid can serve: numba imports and ``HANDNERF_REACH_GRID`` is not "0"
    (else the fast path asks libigl)."""
    return numba is not None and switched_on(ENV_SWITCH)


class ReachGrid:
    """Candidate grids of one or more posed frames' meshes for :meth:`deform_within`.

    Args:
        vertices: (F, V, 3) posed vertices (metres), float.
        faces: (T, 3) vertex ids.
        max_distance: the deformer's reach (metres).
        cell_size: the grid's cell edge (metres).
        margin: how far beyond ``max_distance`` distances are still exact (metres).

    Each frame's grid covers the box of its vertices dilated by ``limit``: a point outside
    is farther than ``limit`` from the mesh.
    """

    def __init__(
        self,
        vertices: torch.Tensor,
        faces: torch.Tensor,
        max_distance: float,
        cell_size: float = CELL_SIZE,
        margin: float = SKIP_MARGIN,
    ) -> None:
        if numba is None:
            raise RuntimeError("ReachGrid needs numba (pip install numba)")
        self.limit = float(max_distance + margin)
        self.cell_size = float(cell_size)
        self._faces = faces.detach().cpu().numpy().astype(np.int64)
        self._vertices = vertices.detach().cpu().double().numpy()
        # Each frame's grid is built on its first query: a sequence's frames are rendered
        # one at a time, and each grid holds ~10 MB on MANO (about 40 ms to build).
        self._frames: list[tuple[np.ndarray, ...] | None] = [None] * len(self._vertices)

    @property
    def built_frames(self) -> list[int]:
        """The frames whose grid has been built (by a query of theirs)."""
        return [i for i, grid in enumerate(self._frames) if grid is not None]

    def _grid(self, frame: int) -> tuple[np.ndarray, ...]:
        grid = self._frames[frame]
        if grid is None:
            posed = self._vertices[frame]
            corners = np.ascontiguousarray(posed[self._faces])  # (T, 3, 3)
            pad = self.limit + self.cell_size
            box = np.concatenate([posed.min(axis=0) - pad, posed.max(axis=0) + pad])
            grid = _build(corners, box, self.cell_size, self.limit)
            self._frames[frame] = grid
        return grid

    def deform_within(
        self,
        points: torch.Tensor,
        frame_ids: torch.Tensor,
        vertex_affine: torch.Tensor,
        posed_vertices: torch.Tensor,
        canonical_vertices: torch.Tensor | None,
        max_distance: float,
        min_determinant: float,
    ) -> tuple[torch.Tensor, ...]:
        """The inverse-LBS deformation of (N, 3) CPU ``points`` (frames ``frame_ids`` (N,))
        within ``max_distance`` of the mesh, fused with the closest-triangle search: the
        closest point's barycentrics blend its corners' (F * V, 12) ``vertex_affine`` (row-
        major 3x4, canonical -> posed), inverted in closed form (adjugate; invertible when
        the determinant exceeds ``min_determinant``); with (F * V, 3) ``canonical_vertices``
        the canonical point is the blended canonical anchor plus the inverse applied to the
        offset from the blended posed anchor (``posed_vertices`` (F, V, 3)), else the
        inverse applied to the point minus the blended translation, as
        ``FrameDeformation._assemble`` does in torch.

        Returns canonical (N, 3) (the point itself where not valid), valid (N,) bool (within
        ``max_distance`` and invertible), distance (N,) (exact up to ``limit``, else
        ``limit``), neighbour ids (N, 3) int64 (``frame * V + vertex``; 0 beyond reach) and
        weights (N, 3) (0 beyond reach), float32 as the torch path's.
        """
        n = len(points)
        query = points.detach().double().contiguous().numpy()
        frames = frame_ids.cpu().numpy()
        n_vertices = posed_vertices.shape[1]
        affine = vertex_affine.detach().float().contiguous().numpy()
        posed = posed_vertices.detach().reshape(-1, 3).float().contiguous().numpy()
        has_anchor = canonical_vertices is not None
        canonical_table = (
            canonical_vertices.detach().float().contiguous().numpy()
            if canonical_vertices is not None
            else np.zeros((1, 3), dtype=np.float32)
        )
        outputs = (
            np.empty((n, 3), dtype=np.float32),
            np.empty(n, dtype=np.bool_),
            np.empty(n, dtype=np.float32),
            np.empty((n, 3), dtype=np.int64),
            np.empty((n, 3), dtype=np.float32),
        )
        present = _frames_present(frames)
        for frame in present:
            rows = None if len(present) == 1 else np.nonzero(frames == frame)[0]
            part = query if rows is None else np.ascontiguousarray(query[rows])
            parts = tuple(np.empty_like(out[: len(part)]) for out in outputs)
            _deform(
                part,
                self._grid(frame),
                self.limit,
                self._faces,
                frame * n_vertices,
                affine,
                posed,
                canonical_table,
                has_anchor,
                float(max_distance),
                float(min_determinant),
                *parts,
            )
            if rows is None:
                outputs = parts
            else:
                for out, part_out in zip(outputs, parts, strict=True):
                    out[rows] = part_out
        return tuple(torch.from_numpy(out) for out in outputs)


def _frames_present(frames: np.ndarray) -> list[int]:
    """The distinct frame ids of (N,) ``frames``, sorted (one frame, the usual case, costs
    a min and a max, not a sort)."""
    if len(frames) == 0:
        return []
    low, high = int(frames.min()), int(frames.max())
    return [low] if low == high else np.unique(frames).tolist()


def _build(
    corners: np.ndarray, box: np.ndarray, cell_size: float, limit: float
) -> tuple[np.ndarray, ...]:
    """One frame's grid: (origin, cell, dims, list starts, triangles, centre distances,
    corners) as :func:`_nearest` takes them."""
    origin = box[:3].copy()
    dims = np.maximum(np.ceil((box[3:] - box[:3]) / cell_size), 1).astype(np.int64)
    cell = (box[3:] - box[:3]) / dims  # exactly covers the box
    half_diagonal = 0.5 * float(np.linalg.norm(cell))
    # A point of a cell lies within half its diagonal of the centre (plus float rounding
    # of the cell a point is floored into: the 1 nm).
    radius = limit + half_diagonal + 1e-9
    lo = np.floor((corners.min(axis=1) - radius - origin) / cell).astype(np.int64)
    hi = np.floor((corners.max(axis=1) + radius - origin) / cell).astype(np.int64)
    lo = np.clip(lo, 0, dims - 1)
    hi = np.clip(hi, 0, dims - 1)
    counts = np.prod(hi - lo + 1, axis=1)
    offsets = np.zeros(len(corners) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    pair_cell = np.empty(int(offsets[-1]), dtype=np.int64)
    pair_distance = np.empty(int(offsets[-1]), dtype=np.float64)
    _pair(corners, origin, cell, dims, lo, hi, offsets, radius, pair_cell, pair_distance)
    n_cells = int(np.prod(dims))
    starts = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(np.bincount(pair_cell[pair_cell >= 0], minlength=n_cells), out=starts[1:])
    triangles = np.empty(int(starts[-1]), dtype=np.int64)
    distances = np.empty(int(starts[-1]), dtype=np.float64)
    _fill(pair_cell, pair_distance, offsets, starts, triangles, distances)
    return (
        origin,
        cell,
        dims,
        starts,
        triangles,
        distances,
        corners,
    )


if numba is not None:

    @numba.njit(cache=True, nogil=True, inline="always")
    def _closest(px, py, pz, corners, t):
        """Squared distance from (px, py, pz) to triangle ``t`` of ``corners`` (T,3,3) and
        the barycentrics of its closest point (by Voronoi regions, as in Ericson's
        Real-Time Collision Detection, 5.1.5)."""
        ax, ay, az = corners[t, 0, 0], corners[t, 0, 1], corners[t, 0, 2]
        bx, by, bz = corners[t, 1, 0], corners[t, 1, 1], corners[t, 1, 2]
        cx, cy, cz = corners[t, 2, 0], corners[t, 2, 1], corners[t, 2, 2]
        abx, aby, abz = bx - ax, by - ay, bz - az
        acx, acy, acz = cx - ax, cy - ay, cz - az
        apx, apy, apz = px - ax, py - ay, pz - az
        d1 = abx * apx + aby * apy + abz * apz
        d2 = acx * apx + acy * apy + acz * apz
        u, v, w = 1.0, 0.0, 0.0  # corner a
        if d1 > 0.0 or d2 > 0.0:
            bpx, bpy, bpz = px - bx, py - by, pz - bz
            d3 = abx * bpx + aby * bpy + abz * bpz
            d4 = acx * bpx + acy * bpy + acz * bpz
            cpx, cpy, cpz = px - cx, py - cy, pz - cz
            d5 = abx * cpx + aby * cpy + abz * cpz
            d6 = acx * cpx + acy * cpy + acz * cpz
            vc = d1 * d4 - d3 * d2
            vb = d5 * d2 - d1 * d6
            va = d3 * d6 - d5 * d4
            if d3 >= 0.0 and d4 <= d3:
                u, v, w = 0.0, 1.0, 0.0  # corner b
            elif d6 >= 0.0 and d5 <= d6:
                u, v, w = 0.0, 0.0, 1.0  # corner c
            elif vc <= 0.0 and d1 >= 0.0 and d3 <= 0.0:
                v = d1 / (d1 - d3)  # edge ab
                u, w = 1.0 - v, 0.0
            elif vb <= 0.0 and d2 >= 0.0 and d6 <= 0.0:
                w = d2 / (d2 - d6)  # edge ac
                u, v = 1.0 - w, 0.0
            elif va <= 0.0 and (d4 - d3) >= 0.0 and (d5 - d6) >= 0.0:
                w = (d4 - d3) / ((d4 - d3) + (d5 - d6))  # edge bc
                u, v = 0.0, 1.0 - w
            else:
                total = va + vb + vc
                if total > 0.0:  # inside (a degenerate triangle: its edges decided above)
                    v = vb / total
                    w = vc / total
                    u = 1.0 - v - w
        qx = u * ax + v * bx + w * cx
        qy = u * ay + v * by + w * cy
        qz = u * az + v * bz + w * cz
        dx, dy, dz = px - qx, py - qy, pz - qz
        return dx * dx + dy * dy + dz * dz, u, v, w

    @numba.njit(cache=True, nogil=True, inline="always")
    def _nearest(px, py, pz, grid, limit):
        """(squared distance, triangle, its closest point's barycentrics u, v, w) of the
        closest triangle within ``limit`` of the point, or (limit^2, -1, 1, 0, 0); ``grid``:
        one frame's :func:`_build` tuple."""
        origin, cell, dims, starts, triangles, distances, corners = grid
        fi = math.floor((px - origin[0]) / cell[0])
        fj = math.floor((py - origin[1]) / cell[1])
        fk = math.floor((pz - origin[2]) / cell[2])
        best = limit * limit
        best_triangle = -1
        best_u, best_v, best_w = 1.0, 0.0, 0.0
        if fi < 0 or fj < 0 or fk < 0 or fi >= dims[0] or fj >= dims[1] or fk >= dims[2]:
            return best, best_triangle, best_u, best_v, best_w
        c = (int(fi) * dims[1] + int(fj)) * dims[2] + int(fk)
        # Listed triangles are at least their centre distance less the point's own
        # distance to the centre away (1-Lipschitz; plus 1 nm for rounding): tighter than
        # the build's half diagonal, so on the demo avatar a quarter fewer are tested.
        ox = px - (origin[0] + (fi + 0.5) * cell[0])
        oy = py - (origin[1] + (fj + 0.5) * cell[1])
        oz = pz - (origin[2] + (fk + 0.5) * cell[2])
        offset = math.sqrt(ox * ox + oy * oy + oz * oz) + 1e-9
        bound = limit
        for k in range(starts[c], starts[c + 1]):
            if distances[k] - offset > bound:
                break  # this and every later triangle is farther than the best
            t = triangles[k]
            d2, u, v, w = _closest(px, py, pz, corners, t)
            if d2 < best:
                best, best_triangle = d2, t
                best_u, best_v, best_w = u, v, w
                bound = math.sqrt(d2)
        return best, best_triangle, best_u, best_v, best_w

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _pair(corners, origin, cell, dims, lo, hi, offsets, radius, pair_cell, pair_distance):
        radius2 = radius * radius
        for t in numba.prange(corners.shape[0]):
            k = offsets[t]
            for i in range(lo[t, 0], hi[t, 0] + 1):
                x = origin[0] + (i + 0.5) * cell[0]
                for j in range(lo[t, 1], hi[t, 1] + 1):
                    y = origin[1] + (j + 0.5) * cell[1]
                    for m in range(lo[t, 2], hi[t, 2] + 1):
                        z = origin[2] + (m + 0.5) * cell[2]
                        d2 = _closest(x, y, z, corners, t)[0]
                        if d2 <= radius2:
                            pair_cell[k] = (i * dims[1] + j) * dims[2] + m
                            pair_distance[k] = math.sqrt(d2)
                        else:
                            pair_cell[k] = -1
                        k += 1

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _fill(pair_cell, pair_distance, offsets, starts, triangles, distances):
        """The kept pairs into each cell's list (``starts``: CSR offsets), then each list
        sorted by distance (insertion sort: lists are short)."""
        cursor = starts[:-1].copy()
        for t in range(offsets.shape[0] - 1):
            for k in range(offsets[t], offsets[t + 1]):
                c = pair_cell[k]
                if c >= 0:
                    triangles[cursor[c]] = t
                    distances[cursor[c]] = pair_distance[k]
                    cursor[c] += 1
        for c in numba.prange(starts.shape[0] - 1):
            for k in range(starts[c] + 1, starts[c + 1]):
                d, t = distances[k], triangles[k]
                j = k - 1
                while j >= starts[c] and distances[j] > d:
                    distances[j + 1], triangles[j + 1] = distances[j], triangles[j]
                    j -= 1
                distances[j + 1], triangles[j + 1] = d, t

    @numba.njit(cache=True, nogil=True, inline="always")
    def _mix(table, g0, g1, g2, u, v, w, k):
        """Column ``k`` of rows g0, g1, g2 of ``table`` blended with weights u, v, w."""
        return u * table[g0, k] + v * table[g1, k] + w * table[g2, k]

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _deform(
        points,
        grid,
        limit,
        faces,
        base,
        affine,
        posed,
        canonical_table,
        has_anchor,
        max_distance,
        min_determinant,
        canonical_out,
        valid_out,
        distance_out,
        ids_out,
        weights_out,
    ):
        for n in numba.prange(points.shape[0]):
            px, py, pz = points[n, 0], points[n, 1], points[n, 2]
            canonical_out[n, 0], canonical_out[n, 1], canonical_out[n, 2] = px, py, pz
            valid_out[n] = False
            for k in range(3):
                ids_out[n, k] = 0
                weights_out[n, k] = 0.0
            d2, t, u, v, w = _nearest(px, py, pz, grid, limit)
            if t < 0:
                distance_out[n] = limit
                continue
            distance = math.sqrt(d2)
            distance_out[n] = distance
            if distance > max_distance:
                continue
            g0, g1, g2 = base + faces[t, 0], base + faces[t, 1], base + faces[t, 2]
            ids_out[n, 0], ids_out[n, 1], ids_out[n, 2] = g0, g1, g2
            weights_out[n, 0], weights_out[n, 1], weights_out[n, 2] = u, v, w
            # The blended 3x4 transform, row-major.
            m0 = _mix(affine, g0, g1, g2, u, v, w, 0)
            m1 = _mix(affine, g0, g1, g2, u, v, w, 1)
            m2 = _mix(affine, g0, g1, g2, u, v, w, 2)
            m3 = _mix(affine, g0, g1, g2, u, v, w, 3)
            m4 = _mix(affine, g0, g1, g2, u, v, w, 4)
            m5 = _mix(affine, g0, g1, g2, u, v, w, 5)
            m6 = _mix(affine, g0, g1, g2, u, v, w, 6)
            m7 = _mix(affine, g0, g1, g2, u, v, w, 7)
            m8 = _mix(affine, g0, g1, g2, u, v, w, 8)
            m9 = _mix(affine, g0, g1, g2, u, v, w, 9)
            m10 = _mix(affine, g0, g1, g2, u, v, w, 10)
            m11 = _mix(affine, g0, g1, g2, u, v, w, 11)
            # Inverse by the adjugate: columns c0 = r1 x r2, c1 = r2 x r0, c2 = r0 x r1.
            c00 = m5 * m10 - m6 * m9
            c01 = m6 * m8 - m4 * m10
            c02 = m4 * m9 - m5 * m8
            c10 = m9 * m2 - m10 * m1
            c11 = m10 * m0 - m8 * m2
            c12 = m8 * m1 - m9 * m0
            c20 = m1 * m6 - m2 * m5
            c21 = m2 * m4 - m0 * m6
            c22 = m0 * m5 - m1 * m4
            determinant = m0 * c00 + m1 * c01 + m2 * c02
            if abs(determinant) <= min_determinant:
                continue
            if has_anchor:
                ax = _mix(posed, g0, g1, g2, u, v, w, 0)
                ay = _mix(posed, g0, g1, g2, u, v, w, 1)
                az = _mix(posed, g0, g1, g2, u, v, w, 2)
                ox = _mix(canonical_table, g0, g1, g2, u, v, w, 0)
                oy = _mix(canonical_table, g0, g1, g2, u, v, w, 1)
                oz = _mix(canonical_table, g0, g1, g2, u, v, w, 2)
            else:
                ax, ay, az = m3, m7, m11
                ox, oy, oz = 0.0, 0.0, 0.0
            qx, qy, qz = px - ax, py - ay, pz - az
            # inverse[i][j] = c_j[i] / det
            canonical_out[n, 0] = ox + (c00 * qx + c10 * qy + c20 * qz) / determinant
            canonical_out[n, 1] = oy + (c01 * qx + c11 * qy + c21 * qz) / determinant
            canonical_out[n, 2] = oz + (c02 * qx + c12 * qy + c22 * qz) / determinant
            valid_out[n] = True
