"""The fast render path's per-ray bookkeeping compiled for the CPU (numba).

:func:`handnerf.model.marching.march_rays` works in rounds; each round picks every live
ray's next few shell samples. In torch that pick is a pass over a (rays, samples) block
(eligibility, cumulative count, nonzero) every round, and the shell test one over every
sample of every ray: on a 256x256 crop of the demo avatar about a fifth of the render.
Here they are loops that touch only what they use, each a pass where torch takes several:

- :func:`live_samples`: each ray's evaluation bins (the torch sampler's, with its float32
  arithmetic), which of them lie in its frame's shell grid (the ray carried into grid
  units once), and the bins of only the rays with a shell sample: no (rays, samples)
  float blocks for the rays that have none, and no pass over them.
- :func:`take_round`: per still-marching ray, a cursor over its samples: from it, the next
  ``quota`` shell samples at or beyond the ray's skip depth, unless the ray is opaque; and
  each taken sample's depth, bin width and posed point (origin plus depth times
  direction, float32 as torch).
- :func:`cells_occupied`: the canonical occupancy grid's test of each deformed sample
  (:meth:`CanonicalOccupancyGrid.query
  <handnerf.model.occupancy.CanonicalOccupancyGrid.query>`).
- :func:`composite_round`: a round's weights and their sums into each ray (optical depth,
  opacity, depth), instead of a dozen tensor operations.

They run where :func:`available` says (numba imports; CPU tensors); the torch versions in
:mod:`handnerf.model.marching` serve elsewhere, and tests compare the two.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from handnerf.model.kernels import switched_on

try:
    import numba
except ImportError:  # the torch versions serve alone
    numba = None

#: Set to "0" to keep the torch versions (e.g. to compare the two).
ENV_SWITCH = "HANDNERF_MARCH_KERNEL"


def available(device: torch.device | None = None) -> bool:
    """Whether the compiled versions serve tensors on ``device`` (None: the CPU): numba
    imports, the device is the CPU, and ``HANDNERF_MARCH_KERNEL`` is not "0"."""
    cpu = device is None or torch.device(device).type == "cpu"
    return cpu and numba is not None and switched_on(ENV_SWITCH)


def live_samples(
    near: Tensor,
    far: Tensor,
    hit: Tensor,
    fractions: Tensor,
    start: Tensor,
    step: Tensor,
    frame_ids: Tensor,
    shell: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The R rays' evaluation bins and which lie in the shell grid, for the rays with any.

    Per ray (R,): box entry ``near``, exit ``far`` and ``hit``; ``fractions`` (S+1,) the bin
    edges' fractions of [near, far]; ``start`` (R,3) the ray's origin in grid units and
    ``step`` (R,3) grid units per metre; ``frame_ids`` (R,) its frame in ``shell``
    (T,G,G,G) bool. Returns ``live`` (L,) int64, the rays with a shell sample, in order,
    and for them (L,S): shell (bool), bin centres ``mid`` and widths (float32), each as
    the torch sampler's bins and :func:`handnerf.model.marching.shell_mask` give them.
    """
    n_rays, n_samples = near.shape[0], fractions.shape[0] - 1
    flags = np.zeros((n_rays, n_samples), dtype=np.bool_)
    args = (
        near.float().contiguous().numpy(),
        far.float().contiguous().numpy(),
        fractions.float().contiguous().numpy(),
    )
    if n_rays:
        _shell_flags(
            *args,
            hit.contiguous().numpy(),
            start.float().contiguous().numpy(),
            step.float().contiguous().numpy(),
            frame_ids.to(torch.int64).contiguous().numpy(),
            shell.contiguous().view(torch.uint8).numpy(),
            flags,
        )
    live = np.flatnonzero(flags.any(axis=1))
    mid = np.empty((len(live), n_samples), dtype=np.float32)
    widths = np.empty_like(mid)
    if len(live):
        _live_bins(live, *args, mid, widths)
    return (
        torch.from_numpy(live),
        torch.from_numpy(flags[live]),
        torch.from_numpy(mid),
        torch.from_numpy(widths),
    )


def cells_occupied(points: Tensor, low: Tensor, cell: Tensor, grid: Tensor) -> Tensor:
    """(N,) bool: which (N,3) ``points`` lie in a true cell of ``grid`` (X,Y,Z) bool, whose
    cells are ``cell`` (3,) wide from the corner ``low`` (3,): the float32 arithmetic of
    the torch version, ``floor((point - low) / cell)`` (a NaN lies in no cell)."""
    out = np.zeros(points.shape[0], dtype=np.bool_)
    if points.shape[0]:
        _cells_occupied(
            points.detach().float().contiguous().numpy(),
            low.float().contiguous().numpy(),
            cell.float().contiguous().numpy(),
            grid.contiguous().view(torch.uint8).numpy(),
            out,
        )
    return torch.from_numpy(out)


def composite_round(
    rows: Tensor,
    sigma_dt: Tensor,
    depths: Tensor,
    optical: Tensor,
    opacity: Tensor,
    depth_sum: Tensor,
    min_weight: float,
) -> tuple[Tensor, Tensor]:
    """:func:`handnerf.model.marching.composite_round` compiled: the same arguments and
    results, and the same float64 sums in the same order (each sample's optical depth
    before it: the round's running sum less its value at the ray's first sample); only
    ``exp`` may round differently (by a float ulp)."""
    n = rows.shape[0]
    weights = np.empty(n, dtype=np.float32)
    seen = np.empty(n, dtype=np.int64)
    n_seen = _composite(
        rows.contiguous().numpy(),
        sigma_dt.float().contiguous().numpy(),
        depths.float().contiguous().numpy(),
        optical.numpy(),
        opacity.numpy(),
        depth_sum.numpy(),
        float(min_weight),
        weights,
        seen,
    )
    return torch.from_numpy(weights), torch.from_numpy(seen[:n_seen])


def take_round(
    active: Tensor,
    shell: Tensor,
    mid: Tensor,
    widths: Tensor,
    cursor: Tensor,
    skip_to: Tensor,
    optical: Tensor,
    max_optical: float,
    quota: int,
    origins: Tensor,
    dirs: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One round's samples: the rows (n,) of the shell samples taken, sorted by row then
    depth, their depths and bin widths (n,) (``mid``, ``widths`` (L,S) there), their posed
    points (n,3) (``origins`` + depth * ``dirs``, both (L,3) float32 per ray), and the
    rays that stay active (a subset of ``active``, in order).

    ``active`` (A,) int64 rays still marching, in increasing order; ``shell`` (L,S) their
    shell samples; per ray (L,): ``cursor`` int64 first column not yet
    visited (advanced in place), ``skip_to`` depth before which samples are skipped,
    ``optical`` float64 optical depth so far (a ray at ``max_optical`` or beyond takes
    nothing); ``quota`` samples to take per ray. A ray stays when it took its quota and has
    shell samples left beyond them.
    """
    n_active = active.shape[0]
    rows = np.empty(n_active * quota, dtype=np.int64)
    cols = np.empty(n_active * quota, dtype=np.int64)
    stay = active.numpy().copy()
    n_taken, n_stay = _take_round(
        stay,
        shell.numpy(),
        mid.numpy(),
        cursor.numpy(),
        skip_to.numpy(),
        optical.numpy(),
        float(max_optical),
        int(quota),
        rows,
        cols,
    )
    rows, cols = rows[:n_taken], cols[:n_taken]
    depths = np.empty(n_taken, dtype=np.float32)
    bins = np.empty(n_taken, dtype=np.float32)
    points = np.empty((n_taken, 3), dtype=np.float32)
    _points(
        rows,
        cols,
        mid.numpy(),
        widths.numpy(),
        origins.float().contiguous().numpy(),
        dirs.float().contiguous().numpy(),
        depths,
        bins,
        points,
    )
    return (
        torch.from_numpy(rows),
        torch.from_numpy(depths),
        torch.from_numpy(bins),
        torch.from_numpy(points),
        torch.from_numpy(stay[:n_stay]),
    )


if numba is not None:

    @numba.njit(cache=True, nogil=True, inline="always")
    def _bin(near, span, fractions, s):
        """Bin ``s``'s centre and width, as the torch sampler's float32 ops give them:
        edges near + span * fraction, centre 0.5 * (start + end), width end - start."""
        start = near + span * fractions[s]
        end = near + span * fractions[s + 1]
        return (start + end) * np.float32(0.5), end - start

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _shell_flags(near, far, fractions, hit, start, step, frame_ids, shell, out):
        n_rays, n_samples = out.shape
        res = shell.shape[1]
        for ray in numba.prange(n_rays):
            if not hit[ray]:
                continue
            frame = frame_ids[ray]
            span = far[ray] - near[ray]
            for s in range(n_samples):
                depth = _bin(near[ray], span, fractions, s)[0]
                # addcmul in float32, as the torch version: start + depth * step, floored.
                x = np.floor(start[ray, 0] + depth * step[ray, 0])
                y = np.floor(start[ray, 1] + depth * step[ray, 1])
                z = np.floor(start[ray, 2] + depth * step[ray, 2])
                if x < 0 or y < 0 or z < 0 or x >= res or y >= res or z >= res:
                    continue
                out[ray, s] = shell[frame, int(x), int(y), int(z)] != 0

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _live_bins(live, near, far, fractions, mid, widths):
        for i in numba.prange(live.shape[0]):
            ray = live[i]
            span = far[ray] - near[ray]
            for s in range(mid.shape[1]):
                mid[i, s], widths[i, s] = _bin(near[ray], span, fractions, s)

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _cells_occupied(points, low, cell, grid, out):
        size0, size1, size2 = grid.shape
        for n in numba.prange(points.shape[0]):
            i = np.floor((points[n, 0] - low[0]) / cell[0])
            j = np.floor((points[n, 1] - low[1]) / cell[1])
            k = np.floor((points[n, 2] - low[2]) / cell[2])
            # Written so that a NaN (all comparisons false) lies outside.
            if i >= 0 and j >= 0 and k >= 0 and i < size0 and j < size1 and k < size2:
                out[n] = grid[int(i), int(j), int(k)] != 0

    @numba.njit(cache=True, nogil=True)
    def _composite(rows, sigma_dt, depths, optical, opacity, depth_sum, min_weight, weights, seen):
        n = rows.shape[0]
        running = 0.0  # float64: the round's inclusive sum before sample i (a cumsum)
        start = 0.0  # its value at the first sample of the current ray
        n_seen = 0
        for i in range(n):
            row = rows[i]
            if i == 0 or row != rows[i - 1]:
                start = running
            before = optical[row] + (running - start)
            value = np.float32(sigma_dt[i])
            weight = np.float32(math.exp(-before)) * (np.float32(1.0) - np.exp(-value))
            weights[i] = weight
            if weight > min_weight:
                seen[n_seen] = i
                n_seen += 1
            running += np.float64(value)
        # The rays' sums after every sample's weight: each sample's optical depth came
        # from the ray's total before the round.
        for i in range(n):
            row = rows[i]
            opacity[row] += weights[i]
            depth_sum[row] += weights[i] * depths[i]
            optical[row] += np.float64(sigma_dt[i])
        return n_seen

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _points(rows, cols, mid, widths, origins, dirs, depths, bins, points):
        for n in numba.prange(rows.shape[0]):
            row = rows[n]
            depth = mid[row, cols[n]]
            depths[n] = depth
            bins[n] = widths[row, cols[n]]
            for k in range(3):
                points[n, k] = origins[row, k] + dirs[row, k] * depth

    @numba.njit(cache=True, nogil=True)
    def _take_round(active, shell, mid, cursor, skip_to, optical, max_optical, quota, rows, cols):
        n_samples = shell.shape[1]
        n_taken = 0
        n_stay = 0
        for a in range(active.shape[0]):
            ray = active[a]
            if optical[ray] >= max_optical:
                continue
            col = cursor[ray]
            taken = 0
            while col < n_samples and taken < quota:
                if shell[ray, col] and mid[ray, col] >= skip_to[ray]:
                    rows[n_taken] = ray
                    cols[n_taken] = col
                    n_taken += 1
                    taken += 1
                col += 1
            cursor[ray] = col
            if taken < quota:
                continue
            left = False
            for rest in range(col, n_samples):
                if shell[ray, rest]:
                    left = True
                    break
            if left:
                active[n_stay] = ray
                n_stay += 1
        return n_taken, n_stay
