"""The closest point of a triangle mesh to every point, in one fused Triton kernel (CUDA).

The GPU twin of :class:`handnerf.model.surface_search.TriangleScan`'s search. On CUDA the
torch scan is launch-bound: about 120 small kernels per chunk of points (each a launch
of ~10 us), where the arithmetic itself is microseconds (docs/benchmarks.md, "First run
on a GPU"). Here one program takes a block of points and visits every triangle of the
frame, keeping the nearest: one launch per frame, whatever the number of points.

Per (point, triangle) it computes the closest point as :func:`closest_point_on_triangles`
does (the plane projection when it falls inside the triangle, else the nearest of the three
edges' closest points; degenerate triangles use the edges only), but measures each
candidate's distance from the point itself, not by the dot-product expansion, which loses
small distances to cancellation in float32. Ties keep the lowest triangle index.

This module imports Triton; import it only where Triton is wanted (see
:func:`mesh_search_kernel`). Tests run it on the CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Points per program.
BLOCK_POINTS = 128


@triton.jit
def _closest_on_mesh_kernel(
    points_ptr,  # (n, 3) float32
    corners_ptr,  # (T, 9) float32: a, b, c of each triangle
    face_ptr,  # (n,) int64 out
    bary_ptr,  # (n, 3) float32 out
    dist2_ptr,  # (n,) float32 out
    n_points,
    n_triangles,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n_points
    px = tl.load(points_ptr + rows * 3, mask=live, other=0.0)
    py = tl.load(points_ptr + rows * 3 + 1, mask=live, other=0.0)
    pz = tl.load(points_ptr + rows * 3 + 2, mask=live, other=0.0)
    best = tl.full([BLOCK], float("inf"), tl.float32)
    best_face = tl.full([BLOCK], 0, tl.int64)
    best_u = tl.full([BLOCK], 0.0, tl.float32)
    best_v = tl.full([BLOCK], 0.0, tl.float32)
    best_w = tl.full([BLOCK], 0.0, tl.float32)
    for tri in range(n_triangles):
        base = corners_ptr + tri * 9
        ax = tl.load(base)
        ay = tl.load(base + 1)
        az = tl.load(base + 2)
        abx = tl.load(base + 3) - ax
        aby = tl.load(base + 4) - ay
        abz = tl.load(base + 5) - az
        acx = tl.load(base + 6) - ax
        acy = tl.load(base + 7) - ay
        acz = tl.load(base + 8) - az
        d00 = abx * abx + aby * aby + abz * abz
        d01 = abx * acx + aby * acy + abz * acz
        d11 = acx * acx + acy * acy + acz * acz
        apx = px - ax
        apy = py - ay
        apz = pz - az
        d20 = apx * abx + apy * aby + apz * abz
        d21 = apx * acx + apy * acy + apz * acz
        denom = d00 * d11 - d01 * d01
        # A degenerate (flat) triangle: the edges alone. Compared per point, so that the
        # test is a block like the others.
        solid = d20 * 0.0 + denom > 1e-12 * tl.maximum(d00 * d11, 1e-30)
        safe = tl.where(solid, denom, 1.0)
        v = (d11 * d20 - d01 * d21) / safe
        w = (d00 * d21 - d01 * d20) / safe
        u = 1.0 - v - w
        inside = (u >= 0) & (v >= 0) & (w >= 0) & solid
        qx = apx - (v * abx + w * acx)
        qy = apy - (v * aby + w * acy)
        qz = apz - (v * abz + w * acz)
        plane = qx * qx + qy * qy + qz * qz
        # Each edge's closest point a + t e, t in [0, 1], and its squared distance.
        t_ab = tl.minimum(tl.maximum(d20 / tl.maximum(d00, 1e-30), 0.0), 1.0)
        ex = apx - t_ab * abx
        ey = apy - t_ab * aby
        ez = apz - t_ab * abz
        e_ab = ex * ex + ey * ey + ez * ez
        t_ac = tl.minimum(tl.maximum(d21 / tl.maximum(d11, 1e-30), 0.0), 1.0)
        ex = apx - t_ac * acx
        ey = apy - t_ac * acy
        ez = apz - t_ac * acz
        e_ac = ex * ex + ey * ey + ez * ez
        bcx = acx - abx
        bcy = acy - aby
        bcz = acz - abz
        bpx = apx - abx
        bpy = apy - aby
        bpz = apz - abz
        d_bc = tl.maximum(bcx * bcx + bcy * bcy + bcz * bcz, 1e-30)
        t_bc = tl.minimum(tl.maximum((bpx * bcx + bpy * bcy + bpz * bcz) / d_bc, 0.0), 1.0)
        ex = bpx - t_bc * bcx
        ey = bpy - t_bc * bcy
        ez = bpz - t_bc * bcz
        e_bc = ex * ex + ey * ey + ez * ez
        use_ab = (e_ab <= e_ac) & (e_ab <= e_bc)
        use_ac = (~use_ab) & (e_ac <= e_bc)
        edge = tl.where(use_ab, e_ab, tl.where(use_ac, e_ac, e_bc))
        eu = tl.where(use_ab, 1.0 - t_ab, tl.where(use_ac, 1.0 - t_ac, 0.0))
        ev = tl.where(use_ab, t_ab, tl.where(use_ac, 0.0, 1.0 - t_bc))
        ew = tl.where(use_ab, 0.0, tl.where(use_ac, t_ac, t_bc))
        d2 = tl.where(inside, plane, edge)
        nearer = d2 < best
        best = tl.where(nearer, d2, best)
        best_face = tl.where(nearer, tri, best_face)
        best_u = tl.where(nearer, tl.where(inside, u, eu), best_u)
        best_v = tl.where(nearer, tl.where(inside, v, ev), best_v)
        best_w = tl.where(nearer, tl.where(inside, w, ew), best_w)
    tl.store(face_ptr + rows, best_face, mask=live)
    tl.store(bary_ptr + rows * 3, best_u, mask=live)
    tl.store(bary_ptr + rows * 3 + 1, best_v, mask=live)
    tl.store(bary_ptr + rows * 3 + 2, best_w, mask=live)
    tl.store(dist2_ptr + rows, best, mask=live)


def closest_on_mesh(
    points: torch.Tensor, corners: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For (n, 3) float32 points and (T, 3, 3) float32 triangles on one device: the index
    (n,) int64 of each point's closest triangle, the barycentrics (n, 3) of the closest
    point on it and its squared distance (n,)."""
    n = points.shape[0]
    face = torch.empty(n, dtype=torch.int64, device=points.device)
    bary = torch.empty(n, 3, dtype=torch.float32, device=points.device)
    dist2 = torch.empty(n, dtype=torch.float32, device=points.device)
    if n == 0:
        return face, bary, dist2
    grid = (triton.cdiv(n, BLOCK_POINTS),)
    _closest_on_mesh_kernel[grid](
        points.float().contiguous(),
        corners.float().reshape(-1, 9).contiguous(),
        face,
        bary,
        dist2,
        n,
        corners.shape[0],
        BLOCK=BLOCK_POINTS,
    )
    return face, bary, dist2
