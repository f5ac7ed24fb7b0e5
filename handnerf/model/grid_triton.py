"""The hash grid's lookup as one Triton kernel (CUDA inference): the GPU twin of
:mod:`handnerf.model.grid_kernel`.

On CUDA the torch backend's lookup is about 50 small kernel launches (the corner
arithmetic of every level, then one gather), and launches, not arithmetic, bound the
CUDA render (docs/benchmarks.md, "First run on a GPU"). Here one program encodes a block
of points at every level with the torch backend's float32 arithmetic, as the numba kernel
does: ``pos = fmaf(scale, x, 0.5)`` through an exact float64 product, the weight products
in dimension order ``0..2``, the dense strides and the coherent prime hash masked to the
table. Only the order of the 8-corner sum may differ.

It serves inference only (no gradient), on 3-D grids with float32 parameters; training
keeps the autograd function. This module imports Triton: import it only where Triton is
wanted. Tests run it on the CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from handnerf.model.kernels import warn_unusable

#: Points per program.
BLOCK_POINTS = 128
#: The first lookup's first points are compared with the torch backend's (the same
#: arithmetic but the order of the corner sum: a few float32 ulp).
CHECK_POINTS = 1024
CHECK_TOLERANCE = 1e-5


@triton.jit
def _lookup_kernel(
    x_ptr,  # (n, 3) float32 in [0, 1]
    table_ptr,  # (entries, F) float32
    scales_ptr,  # (L,) float64
    offsets_ptr,  # (L,) int64
    entries_ptr,  # (L,) int64
    dense_ptr,  # (L,) int32 (1: dense level)
    strides_ptr,  # (L, 3) int64
    out_ptr,  # (n, L * F) float32
    n_points,
    n_levels,
    prime1,
    prime2,
    hash_mask,
    F: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = rows < n_points
    x0 = tl.load(x_ptr + rows * 3, mask=live, other=0.0).to(tl.float64)
    x1 = tl.load(x_ptr + rows * 3 + 1, mask=live, other=0.0).to(tl.float64)
    x2 = tl.load(x_ptr + rows * 3 + 2, mask=live, other=0.0).to(tl.float64)
    for level in range(n_levels):
        scale = tl.load(scales_ptr + level)
        offset = tl.load(offsets_ptr + level)
        entries = tl.load(entries_ptr + level)
        dense = tl.load(dense_ptr + level)
        stride0 = tl.load(strides_ptr + level * 3)
        stride1 = tl.load(strides_ptr + level * 3 + 1)
        stride2 = tl.load(strides_ptr + level * 3 + 2)
        # fmaf(scale, x, 0.5f): the float64 product of two float32 values is exact.
        pos0 = (x0 * scale + 0.5).to(tl.float32)
        pos1 = (x1 * scale + 0.5).to(tl.float32)
        pos2 = (x2 * scale + 0.5).to(tl.float32)
        floor0 = tl.floor(pos0)
        floor1 = tl.floor(pos1)
        floor2 = tl.floor(pos2)
        frac0 = pos0 - floor0
        frac1 = pos1 - floor1
        frac2 = pos2 - floor2
        cell0 = floor0.to(tl.int64)
        cell1 = floor1.to(tl.int64)
        cell2 = floor2.to(tl.int64)
        for f in tl.static_range(F):
            total = tl.full([BLOCK], 0.0, tl.float32)
            for corner in tl.static_range(8):
                bit0 = corner & 1
                bit1 = (corner >> 1) & 1
                bit2 = (corner >> 2) & 1
                weight = frac0 if bit0 else 1.0 - frac0
                weight = weight * (frac1 if bit1 else 1.0 - frac1)
                weight = weight * (frac2 if bit2 else 1.0 - frac2)
                c0 = cell0 + bit0
                c1 = cell1 + bit1
                c2 = cell2 + bit2
                dense_index = ((c0 * stride0 + c1 * stride1 + c2 * stride2) & 0xFFFFFFFF) % entries
                hashed = (
                    (c0 & hash_mask) ^ ((c1 * prime1) & hash_mask) ^ ((c2 * prime2) & hash_mask)
                )
                row = offset + tl.where(dense != 0, dense_index, hashed)
                value = tl.load(table_ptr + row * F + f, mask=live, other=0.0)
                total += weight * value
            tl.store(out_ptr + rows * (n_levels * F) + level * F + f, total, mask=live)


def device_constants(arrays: tuple[Any, ...], device: torch.device) -> tuple[Any, ...]:
    """:func:`grid_lookup`'s per-level constants on ``device``, from the numpy arrays of
    :meth:`GridTables.kernel_arrays`, which ``GridTables.triton_constants`` makes once."""
    scales, offsets, n_entries, dense, strides, primes, hash_mask = arrays
    return (
        torch.as_tensor(scales, dtype=torch.float64, device=device),
        torch.as_tensor(offsets, dtype=torch.int64, device=device),
        torch.as_tensor(n_entries, dtype=torch.int64, device=device),
        torch.as_tensor(dense, dtype=torch.int32, device=device),
        torch.as_tensor(strides, dtype=torch.int64, device=device).contiguous(),
        int(primes[1]),
        int(primes[2]),
        int(hash_mask),
    )


def grid_lookup(
    x: torch.Tensor,
    params: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    n_entries: torch.Tensor,
    dense: torch.Tensor,
    strides: torch.Tensor,
    prime1: int,
    prime2: int,
    hash_mask: int,
) -> torch.Tensor:
    """(N, L * F) float32 features of the (N, 3) points ``x`` (in [0, 1]) from the flat
    float32 table ``params`` (entries * F,); the per-level constants from
    :func:`device_constants`, all on the points' device."""
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"grid_lookup: points must be (N, 3), got {tuple(x.shape)}")
    n_levels = scales.shape[0]
    n_features = params.numel() // int(offsets[-1] + n_entries[-1])
    n = x.shape[0]
    out = torch.empty(n, n_levels * n_features, dtype=torch.float32, device=x.device)
    if n == 0:
        return out
    _lookup_kernel[(triton.cdiv(n, BLOCK_POINTS),)](
        x.detach().float().contiguous(),
        params.detach().contiguous(),
        scales,
        offsets,
        n_entries,
        dense,
        strides,
        out,
        n,
        n_levels,
        prime1,
        prime2,
        hash_mask,
        F=n_features,
        BLOCK=BLOCK_POINTS,
    )
    return out


def checked_lookup(
    x: torch.Tensor,
    params: torch.Tensor,
    constants: tuple[Any, ...],
    reference: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor | None:
    """:func:`grid_lookup`, checked against ``reference`` (the torch backend) on its
    first points: the features, or None (with a warning saying why) when the kernel does
    not build or does not agree, so that the caller keeps the torch backend."""
    try:
        out = grid_lookup(x, params, *constants)
        head = x[:CHECK_POINTS]
        expected = reference(head)
        error = float((out[: head.shape[0]] - expected).abs().max()) if head.shape[0] else 0.0
        if not error <= CHECK_TOLERANCE:
            raise RuntimeError(f"features differ from the torch backend's by {error:.3g}")
    except Exception as exc:  # Triton's compile errors, a wrong result...
        warn_unusable("the fused hash-grid kernel", exc, "the torch backend")
        return None
    return out
