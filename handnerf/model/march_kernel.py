"""The fast render path's per-ray bookkeeping compiled for the CPU (numba).

:func:`handnerf.model.marching.march_rays` works in rounds; each round picks every live
ray's next few shell samples. In torch that pick is a pass over a (rays, samples) block
(eligibility, cumulative count, nonzero) every round, and the shell test one over every
sample of every ray: on a 256x256 crop of the demo avatar about a fifth of the render.
Here both are loops over rays that touch only what they use:

- :func:`shell_mask`: the samples of each ray that lie in its frame's shell grid, with
  the torch version's float32 arithmetic (the ray carried into grid units once).
- :func:`take_round`: per still-marching ray, a cursor over its samples: from it, the next
  ``quota`` shell samples at or beyond the ray's skip depth, unless the ray is opaque.

They run where :func:`available` says (numba imports; CPU tensors); the torch versions in
:mod:`handnerf.model.marching` serve elsewhere, and tests compare the two.
"""

from __future__ import annotations

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


def shell_mask(
    start: Tensor, step: Tensor, frame_ids: Tensor, mid: Tensor, mask: Tensor, shell: Tensor
) -> Tensor:
    """(R,S) bool: which samples at depths ``mid`` (R,S) (only where ``mask`` (R,S)) of rays
    starting at ``start`` (R,3) grid units with ``step`` (R,3) grid units per metre lie in
    the shell grid ``shell`` (T,G,G,G) of their frame ``frame_ids`` (R,)."""
    out = np.zeros(tuple(mask.shape), dtype=np.bool_)
    if mask.numel():
        _shell_mask(
            start.float().contiguous().numpy(),
            step.float().contiguous().numpy(),
            frame_ids.to(torch.int64).contiguous().numpy(),
            mid.float().contiguous().numpy(),
            mask.contiguous().numpy(),
            shell.contiguous().view(torch.uint8).numpy(),
            out,
        )
    return torch.from_numpy(out)


def take_round(
    active: Tensor,
    shell: Tensor,
    mid: Tensor,
    cursor: Tensor,
    skip_to: Tensor,
    optical: Tensor,
    max_optical: float,
    quota: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """One round's samples: rows (n,) and columns (n,) of the shell samples taken, sorted
    by row then depth, and the rays that stay active (a subset of ``active``, in order).

    ``active`` (A,) int64 rays still marching, in increasing order; ``shell``/``mid`` (L,S)
    their shell samples and depths; per ray (L,): ``cursor`` int64 first column not yet
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
    return (
        torch.from_numpy(rows[:n_taken]),
        torch.from_numpy(cols[:n_taken]),
        torch.from_numpy(stay[:n_stay]),
    )


if numba is not None:

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _shell_mask(start, step, frame_ids, mid, mask, shell, out):
        n_rays, n_samples = mask.shape
        res = shell.shape[1]
        for ray in numba.prange(n_rays):
            frame = frame_ids[ray]
            for s in range(n_samples):
                if not mask[ray, s]:
                    continue
                depth = mid[ray, s]
                # addcmul in float32, as the torch version: start + depth * step, floored.
                x = np.floor(start[ray, 0] + depth * step[ray, 0])
                y = np.floor(start[ray, 1] + depth * step[ray, 1])
                z = np.floor(start[ray, 2] + depth * step[ray, 2])
                if x < 0 or y < 0 or z < 0 or x >= res or y >= res or z >= res:
                    continue
                out[ray, s] = shell[frame, int(x), int(y), int(z)] != 0

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
