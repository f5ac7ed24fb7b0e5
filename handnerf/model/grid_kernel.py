"""The hash grid's lookup compiled for the CPU (numba): inference's encoding, fused.

:class:`handnerf.model.encoding.HashGridEncoding`'s torch backend vectorises the lookup over
levels and corners: it materialises ``L * 2^D`` rows and weights per point (an (L, 8, N)
int64 block and a float one on a 3-D grid) and gathers through ``index_select``, which is
what a gradient needs kept, but most of its CPU time when nothing is differentiated.
:func:`grid_lookup` computes the same features point by point in registers, level by level
(one level's table stays in cache while a chunk of points reads it), in parallel over
chunks of points (numba's ``prange``), with the torch backend's float32 arithmetic:
``pos = fmaf(scale, x, 0.5)`` through an exact float64 product, the weight products in
dimension order ``0..2``, the dense strides and the coherent prime hash masked to the table.
Only the order of the 8-corner sum may differ, so the two agree to a few float32 ulp
(tests/model/test_grid_kernel.py). Measured on the demo avatar's 240k samples of a 256x256
render (2 threads): 0.28 s -> 0.05 s (docs/benchmarks.md). The 8 corners are written out
(their rows and weights computed once per point, two features summed in registers) and a
dense level takes a remainder only where an index leaves its table: the density and colour
grids of that render, 0.08 s -> 0.07 s, the same features bit for bit.

It serves inference only, on 3-D grids: :meth:`HashGridEncoding.forward` takes it on the CPU
when no gradient is wanted and :func:`available` says so; training keeps the autograd
function. numba is imported with this module (by the encoding on first use, not at import
of the package); the compiled code is cached beside it (``cache=True``) where that folder
is writable, so a process compiles it once (a few seconds) and later ones load it.
"""

from __future__ import annotations

import numpy as np
import torch

from handnerf.model.kernels import GRID_KERNEL_ENV, switched_on

try:
    import numba
except ImportError:  # the torch backend serves alone
    numba = None

#: Set to "0" to keep the torch backend everywhere (e.g. to compare the two).
ENV_SWITCH = GRID_KERNEL_ENV


def available() -> bool:
    """Whether the compiled lookup can run here: numba imports, and it is not switched
    off by ``HANDNERF_GRID_KERNEL=0``."""
    return numba is not None and switched_on(ENV_SWITCH)


def grid_lookup(
    x: torch.Tensor,
    params: torch.Tensor,
    scales: np.ndarray,
    offsets: np.ndarray,
    n_entries: np.ndarray,
    dense: np.ndarray,
    strides: np.ndarray,
    primes: np.ndarray,
    hash_mask: int,
) -> torch.Tensor:
    """(N, L * F) float32 features of the (N, 3) float32 CPU points ``x`` (in [0, 1]) from
    the flat float32 table ``params`` (entries * F,).

    Per level (L,): ``scales`` float64, ``offsets`` and ``n_entries`` int64 (in entries),
    ``dense`` bool; ``strides`` (L, 3) int64 dense strides (rows of hashed levels unused),
    ``primes`` (3,) int64 hash primes, ``hash_mask`` the hashed tables' size - 1.
    """
    if not available():
        raise RuntimeError(f"grid_lookup needs numba (pip install numba) and {ENV_SWITCH} != 0")
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"grid_lookup: points must be (N, 3), got {tuple(x.shape)}")
    n_levels = scales.shape[0]
    n_features = params.numel() // int(offsets[-1] + n_entries[-1])
    table = params.detach().view(-1, n_features).numpy()
    points = x.detach().float().contiguous().numpy()
    out = np.empty((points.shape[0], n_levels * n_features), dtype=np.float32)
    if points.shape[0]:
        _lookup(
            points,
            table,
            scales,
            offsets,
            n_entries,
            dense,
            strides,
            primes,
            hash_mask,
            out,
            16 * numba.get_num_threads(),
        )
    return torch.from_numpy(out)


if numba is not None:

    @numba.njit(cache=True, nogil=True, inline="always")
    def _wrap(index, entries):
        return index % entries if index >= entries else index

    @numba.njit(cache=True, nogil=True, inline="always")
    def _corners(cell0, cell1, cell2, is_dense, strides, level, entries, hash_mask, primes):
        """The table rows (within the level) of a cell's 8 corners, corner ``c`` at bits
        (c & 1, c >> 1 & 1, c >> 2 & 1) of (x, y, z): dense strides (the index wrapped to
        32 bits, then to the table) or the coherent prime hash."""
        if is_dense:
            x0, x1 = cell0 * strides[level, 0], (cell0 + 1) * strides[level, 0]
            y0, y1 = cell1 * strides[level, 1], (cell1 + 1) * strides[level, 1]
            z0, z1 = cell2 * strides[level, 2], (cell2 + 1) * strides[level, 2]
            # The remainder only where an index leaves the table: a 64-bit division per
            # corner is most of these levels' cost, and the result is the same.
            return (
                _wrap((x0 + y0 + z0) & 0xFFFFFFFF, entries),
                _wrap((x1 + y0 + z0) & 0xFFFFFFFF, entries),
                _wrap((x0 + y1 + z0) & 0xFFFFFFFF, entries),
                _wrap((x1 + y1 + z0) & 0xFFFFFFFF, entries),
                _wrap((x0 + y0 + z1) & 0xFFFFFFFF, entries),
                _wrap((x1 + y0 + z1) & 0xFFFFFFFF, entries),
                _wrap((x0 + y1 + z1) & 0xFFFFFFFF, entries),
                _wrap((x1 + y1 + z1) & 0xFFFFFFFF, entries),
            )
        x0, x1 = cell0 & hash_mask, (cell0 + 1) & hash_mask
        y0, y1 = (cell1 * primes[1]) & hash_mask, ((cell1 + 1) * primes[1]) & hash_mask
        z0, z1 = (cell2 * primes[2]) & hash_mask, ((cell2 + 1) * primes[2]) & hash_mask
        return (
            x0 ^ y0 ^ z0,
            x1 ^ y0 ^ z0,
            x0 ^ y1 ^ z0,
            x1 ^ y1 ^ z0,
            x0 ^ y0 ^ z1,
            x1 ^ y0 ^ z1,
            x0 ^ y1 ^ z1,
            x1 ^ y1 ^ z1,
        )

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _lookup(
        x, table, scales, offsets, n_entries, dense, strides, primes, hash_mask, out, n_chunks
    ):
        # n_chunks is an argument: numba.get_num_threads() inside would stop the caching.
        n_points = x.shape[0]
        n_levels = scales.shape[0]
        n_features = table.shape[1]
        one = np.float32(1.0)
        n_chunks = min(n_points, n_chunks)
        for chunk in numba.prange(n_chunks):
            start = chunk * n_points // n_chunks
            stop = (chunk + 1) * n_points // n_chunks
            for level in range(n_levels):
                scale, offset, entries = scales[level], offsets[level], n_entries[level]
                is_dense = dense[level]
                column = level * n_features
                for i in range(start, stop):
                    # fmaf(scale, x, 0.5f): the float64 product of float32 values is exact.
                    pos0 = np.float32(0.5 + scale * np.float64(x[i, 0]))
                    pos1 = np.float32(0.5 + scale * np.float64(x[i, 1]))
                    pos2 = np.float32(0.5 + scale * np.float64(x[i, 2]))
                    floor0, floor1, floor2 = np.floor(pos0), np.floor(pos1), np.floor(pos2)
                    frac0, frac1, frac2 = pos0 - floor0, pos1 - floor1, pos2 - floor2
                    rest0, rest1, rest2 = one - frac0, one - frac1, one - frac2
                    rows = _corners(
                        np.int64(floor0),
                        np.int64(floor1),
                        np.int64(floor2),
                        is_dense,
                        strides,
                        level,
                        entries,
                        hash_mask,
                        primes,
                    )
                    # The weights as products in dimension order (x * y) * z, as torch's.
                    xy00, xy10 = rest0 * rest1, frac0 * rest1
                    xy01, xy11 = rest0 * frac1, frac0 * frac1
                    weights = (
                        xy00 * rest2,
                        xy10 * rest2,
                        xy01 * rest2,
                        xy11 * rest2,
                        xy00 * frac2,
                        xy10 * frac2,
                        xy01 * frac2,
                        xy11 * frac2,
                    )
                    # The corners summed in order; two features (the usual grid) in
                    # registers: the loop over features costs the demo's lookups 6 % more.
                    if n_features == 2:
                        sum0 = sum1 = np.float32(0.0)
                        for corner in numba.literal_unroll((0, 1, 2, 3, 4, 5, 6, 7)):
                            row = offset + rows[corner]
                            sum0 += weights[corner] * table[row, 0]
                            sum1 += weights[corner] * table[row, 1]
                        out[i, column] = sum0
                        out[i, column + 1] = sum1
                    else:
                        for f in range(n_features):
                            total = np.float32(0.0)
                            for corner in numba.literal_unroll((0, 1, 2, 3, 4, 5, 6, 7)):
                                total += weights[corner] * table[offset + rows[corner], f]
                            out[i, column + f] = total
