"""The hash grid's geometry (tiny-cuda-nn's scheme) and the torch backend's lookup.

:class:`handnerf.model.encoding.HashGridEncoding` holds the parameters and picks the
backend; this module says where each point's corners lie in the flat table
(:func:`grid_levels`, :class:`GridTables`) and looks them up differentiably in torch
(:class:`GridFunction`). The compiled lookups (:mod:`handnerf.model.grid_kernel`,
:mod:`handnerf.model.grid_triton`) take :meth:`GridTables.kernel_arrays`.

The grid scheme (per level ``l``, ``D`` input dimensions, ``F`` features per level)
-----------------------------------------------------------------------------------
* ``scale_l = exp2f(l * log2f(per_level_scale)) * base_resolution - 1`` (float32 arithmetic),
  ``resolution_l = ceilf(scale_l) + 1``.
* ``pos = fmaf(scale_l, x, 0.5)``, ``cell = floor(pos)``, ``frac = pos - cell``; the
  ``2^D`` corners ``cell + b`` (bit ``d`` of the corner number ``c`` selects ``+1`` along
  dimension ``d``) get the weight ``prod_d (b_d ? frac_d : 1 - frac_d)``.
* Table size ``params_l = min(next_multiple(resolution_l^D, 8), 2^log2_hashmap_size)``
  entries; level offsets are the running sum of ``params_l``.
* Corner index: dense ``sum_d c_d * resolution_l^d`` when ``resolution_l^D <= params_l``
  (that is, when the dense grid fits the level's table), otherwise the coherent prime hash
  ``xor_d (c_d * prime_d)`` in uint32 arithmetic with primes
  ``(1, 2654435761, 805459861, 3674653429, ...)``; then ``% params_l``. The ``+0.5``
  offset lets a corner reach ``resolution_l`` along a dimension; tiny-cuda-nn lets such
  indices wrap around through the modulo and so do we.
* ``params[(offset_l + index) * F + f]`` is feature ``f`` of entry ``index`` of level
  ``l``. Initialisation: uniform(-1e-4, 1e-4) (tiny-cuda-nn draws these from its own pcg32
  generator, so the initial values themselves differ between backends).

Inputs outside ``[0, 1]`` are clamped into it, so points off the unit cube read the
features of the nearest boundary point and get no gradient with respect to ``x`` along the
clamped dimensions (tiny-cuda-nn does not clamp; it is only defined on ``[0, 1]``).

``per_level_scale`` defaults to 1.5: 16 levels from resolution 16 up to about 7000 (the
finest cell is ~1/7000 of the box); levels 0-3 are dense, 4-15 hashed with the defaults.

Verified against tiny-cuda-nn's source (read with the search tool, no GPU here)
-------------------------------------------------------------------------------
From ``include/tiny-cuda-nn/encodings/grid.h`` (current master and an older 2022 version)
and ``include/tiny-cuda-nn/common_device.h`` (``grid_scale``, ``grid_resolution``,
``grid_index``, ``coherent_prime_hash``, ``pos_fract``):

* ``grid_scale = exp2f(level * log2_per_level_scale) * base_resolution - 1.0f`` and
  ``grid_resolution = (uint32_t)ceilf(scale) + 1``; the table size uses ``resolution``
  while ``pos`` uses ``scale``; the dense stride is ``resolution``, not ``scale``.
* Table sizes are computed per level in the constructor, ``next_multiple(.., 8u)`` is
  applied BEFORE ``min(.., 1u << log2_hashmap_size)``; no padding between levels beyond
  that; ``n_params = offset_total * N_FEATURES_PER_LEVEL``; values per entry are
  contiguous (``grid_index(...) * N_FEATURES_PER_LEVEL + feature``).
* Dense indexing is decided per level: master computes the dense index when
  ``resolution <= MAX_BASES[D]`` (0x659 for D = 3) and hashes iff
  ``hashmap_size < stride`` (``stride = resolution^D``, or ``0xFFFFFFFF`` beyond
  ``MAX_BASES``); the older version's early-exit loop gives the same decision.
* Hash ``CoherentPrime`` (the default ``"hash"``) uses primes in the order
  ``1, 2654435761, 805459861, ...`` for dimensions ``0, 1, 2, ...`` combined by xor in
  uint32; the older ``fast_hash`` uses the same primes.
* ``pos_fract``: ``pos = fmaf(scale, input, 0.5f)``, ``pos_grid = (uint32_t)(int)floorf(pos)``;
  the corner loop's weight product runs over dimensions in order ``0..D-1``.
* JSON defaults: ``n_levels`` 16, ``n_features_per_level`` 2 (1, 2, 4 or 8 allowed),
  ``log2_hashmap_size`` 19, ``base_resolution`` 16, ``per_level_scale`` 2.0 (so we always
  write it explicitly), ``interpolation`` ``"Linear"``.

Could not verify (no GPU, ``tinycudann`` not installed): the numbers tiny-cuda-nn really
produces. In particular the PyTorch bindings compile with ``--use_fast_math``, so the
device's ``exp2f`` may differ in the last bit from the host's; the layout (host) and the
dense stride (device) only depend on it where ``scale_l`` is an exact integer in exact
arithmetic. With ``per_level_scale = 1.5`` and ``base_resolution = 16`` that is the case
at levels 1-4 (scales 23, 35, 53, 80); we reproduce the host's correctly rounded float32
arithmetic (resolutions 24, 36, 54, 81). ``pos`` is computed as a float64 fma rounded to
float32 (equal to ``fmaf`` except at rare double-rounding ties); the corner sum is
accumulated in a different order than the CUDA kernel (differences of a few float32 ulp),
and tiny-cuda-nn usually stores parameters and outputs in float16. The CUDA test
``test_tcnn_matches_torch`` checks all of this where ``tinycudann`` exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from handnerf.errors import ConfigError

# common_device.h coherent_prime_hash: dimension d is multiplied by COHERENT_PRIMES[d].
COHERENT_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
# common_device.h grid_index: the largest resolution per D whose dense stride fits uint32.
_MAX_DENSE_BASES = (0x0, 0xFFFFFFFF, 0xFFFF, 0x659, 0xFF, 0x54, 0x28, 0x17, 0xF, 0xB, 0x9)
_UINT32_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class GridLevel:
    """Geometry of one level of the grid, as tiny-cuda-nn computes it.

    Attributes:
        scale: ``exp2f(l * log2f(per_level_scale)) * base_resolution - 1`` (a float32 value).
        resolution: ``ceilf(scale) + 1`` grid vertices per dimension.
        n_entries: table entries of the level (``params_l``); each holds F features.
        offset: index of the level's first entry in the flat table.
        dense: whether corners index the table densely (else by the prime hash).
    """

    scale: float
    resolution: int
    n_entries: int
    offset: int
    dense: bool


def _next_multiple(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def grid_levels(
    n_levels: int,
    log2_hashmap_size: int,
    base_resolution: int,
    per_level_scale: float,
    n_input_dims: int = 3,
) -> list[GridLevel]:
    """Per-level scale, resolution, table size, offset and indexing mode (tiny-cuda-nn's)."""
    f32 = np.float32
    # tcnn computes these in float32 on the host (log2f, exp2f of a float32 argument);
    # float64 results rounded to float32 reproduce the correctly rounded float32 functions.
    log2_scale = f32(math.log2(float(f32(per_level_scale))))
    max_params = (2**32 - 1) // 2
    max_base = _MAX_DENSE_BASES[n_input_dims] if n_input_dims < len(_MAX_DENSE_BASES) else 0
    levels: list[GridLevel] = []
    offset = 0
    for level in range(n_levels):
        exponent = f32(level) * log2_scale
        scale = f32(f32(2.0 ** float(exponent)) * f32(base_resolution)) - f32(1.0)
        resolution = math.ceil(float(scale)) + 1
        dense_params = (
            max_params
            if float(resolution) ** n_input_dims > float(max_params)
            else resolution**n_input_dims
        )
        n_entries = min(_next_multiple(dense_params, 8), 1 << log2_hashmap_size)
        stride = resolution**n_input_dims if resolution <= max_base else _UINT32_MASK
        levels.append(
            GridLevel(
                scale=float(scale),
                resolution=resolution,
                n_entries=n_entries,
                offset=offset,
                dense=not n_entries < stride,
            )
        )
        offset += n_entries
    return levels


def gather_levels_at_once(device: torch.device) -> bool:
    """Whether the torch grid gathers (and scatters) all levels in one operation.

    On CUDA, yes: there each operation is a kernel launch, and launches, not arithmetic,
    bound the torch path (docs/benchmarks.md, "First run on a GPU"); one level at a time
    was 60 launches a lookup, all at once is 5. On the CPU, one level at a time: its
    (C, N, F) temporaries are recycled by the allocator, where an (L, C, N, F) block
    faults in fresh pages.
    """
    return device.type == "cuda"


class GridFunction(torch.autograd.Function):
    """Multilinear lookup in the flat grid table; backward scatters with ``index_add_``.

    Autograd of a plain gather keeps every per-level, per-corner intermediate alive and
    accumulates into a dense table gradient once per gather; this function keeps only the
    corner rows and weights and scatters once. Internally everything is laid out
    ``(L, C, N)`` (level, corner, point) so elementwise work runs over contiguous points.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, params: torch.Tensor, grid: GridTables
    ) -> torch.Tensor:
        n_features = grid.n_features
        table = params.view(-1, n_features)
        rows, weights, factors = grid.corners(x, params.dtype)  # (L, C, N) each
        n_levels, n_corners, n_points = rows.shape
        if gather_levels_at_once(x.device):
            values = table.index_select(0, rows.view(-1)).view(n_levels, n_corners, n_points, -1)
            out = (weights.unsqueeze(-1) * values).sum(1).permute(1, 0, 2)
            out = out.reshape(n_points, n_levels * n_features)
        else:
            out = torch.empty(n_points, n_levels, n_features, dtype=params.dtype, device=x.device)
            for level in range(n_levels):
                values = table.index_select(0, rows[level].view(-1)).view(n_corners, n_points, -1)
                out[:, level] = (weights[level].unsqueeze(-1) * values).sum(0)
            out = out.view(n_points, n_levels * n_features)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(rows, weights, params, *factors)
        else:
            ctx.save_for_backward(rows, weights)
        ctx.grid = grid
        ctx.n_params = params.numel()
        return out

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        rows, weights = ctx.saved_tensors[:2]
        grid: GridTables = ctx.grid
        n_levels, n_corners, n_points = rows.shape
        n_features = grid.n_features
        # (N, L*F) -> (L, 1, N, F), broadcast against the (L, C, N) corners.
        grad_levels = grad_out.reshape(n_points, n_levels, n_features).permute(1, 0, 2).unsqueeze(1)
        grad_params = None
        if ctx.needs_input_grad[1]:
            grad_table = torch.zeros(
                ctx.n_params // n_features, n_features, dtype=weights.dtype, device=rows.device
            )
            if gather_levels_at_once(rows.device):
                contrib = weights.unsqueeze(-1) * grad_levels  # (L, C, N, F)
                grad_table.index_add_(0, rows.view(-1), contrib.reshape(-1, n_features))
            else:
                for level in range(n_levels):
                    contrib = weights[level].unsqueeze(-1) * grad_levels[level]  # (C, N, F)
                    grad_table.index_add_(0, rows[level].view(-1), contrib.view(-1, n_features))
            grad_params = grad_table.view(-1)
        grad_x = None
        if ctx.needs_input_grad[0]:
            params, *factors = ctx.saved_tensors[2:]
            table = params.view(-1, n_features)
            values = table.index_select(0, rows.view(-1)).view(n_levels, n_corners, n_points, -1)
            grad_w = (values * grad_levels.to(values.dtype)).sum(-1)  # dL/dw: (L, C, N)
            grad_x = grid.input_gradient(grad_w, factors)
        return grad_x, grad_params, None


class GridTables:
    """Per-level constants of the torch backend, as tensors on one device."""

    def __init__(
        self, levels: list[GridLevel], n_input_dims: int, n_features: int, device: torch.device
    ) -> None:
        self.n_input_dims = n_input_dims
        self.n_features = n_features
        self.device = device
        n_levels = len(levels)
        self.n_levels = n_levels
        n_dense = sum(level.dense for level in levels)
        # Resolutions never decrease with the level (per_level_scale >= 1), so the dense
        # levels are a prefix; each group then needs one kind of index arithmetic.
        if any(level.dense for level in levels[n_dense:]):
            raise ConfigError("hash grid: dense levels must precede hashed ones")
        self.n_dense = n_dense
        self.scale64 = torch.tensor([lv.scale for lv in levels], dtype=torch.float64, device=device)
        self.offsets = torch.tensor([lv.offset for lv in levels], dtype=torch.int64, device=device)
        self.n_entries = torch.tensor(
            [lv.n_entries for lv in levels], dtype=torch.int64, device=device
        )
        # Dense strides resolution^d, shape (L_dense, D).
        strides = [[lv.resolution**d for d in range(n_input_dims)] for lv in levels[:n_dense]]
        self.dense_strides = torch.tensor(strides, dtype=torch.int64, device=device).view(
            n_dense, n_input_dims
        )
        hashed = levels[n_dense:]
        # Hashed tables are 2^k entries (k = min(log2_hashmap_size, 31)), so the modulo of
        # the uint32 hash is a mask of its low bits.
        sizes = {lv.n_entries for lv in hashed}
        self.hash_mask = (hashed[0].n_entries - 1) if hashed else 0
        if hashed and (len(sizes) != 1 or self.hash_mask & (self.hash_mask + 1)):
            raise ConfigError("hash grid: hashed levels must share a power-of-two table size")
        self.n_corners = 1 << n_input_dims
        self._levels = levels
        self._kernel_arrays: tuple[Any, ...] | None = None
        self._triton_constants: tuple[Any, ...] | None = None

    def kernel_arrays(self) -> tuple[Any, ...]:
        """The per-level constants as :func:`handnerf.model.grid_kernel.grid_lookup` takes
        them (scales, offsets, entries, dense, strides, primes, hash mask)."""
        if self._kernel_arrays is None:
            levels, n_dims = self._levels, self.n_input_dims
            strides = np.zeros((len(levels), n_dims), dtype=np.int64)
            for i, level in enumerate(levels):
                if level.dense:
                    strides[i] = [level.resolution**d for d in range(n_dims)]
            self._kernel_arrays = (
                np.array([lv.scale for lv in levels], dtype=np.float64),
                np.array([lv.offset for lv in levels], dtype=np.int64),
                np.array([lv.n_entries for lv in levels], dtype=np.int64),
                np.array([lv.dense for lv in levels], dtype=np.bool_),
                strides,
                np.array(COHERENT_PRIMES[:n_dims], dtype=np.int64),
                int(self.hash_mask),
            )
        return self._kernel_arrays

    def triton_constants(self) -> tuple[Any, ...]:
        """:meth:`kernel_arrays` on this device, as :func:`handnerf.model.grid_triton.grid_lookup`
        takes them (made once)."""
        if self._triton_constants is None:
            from handnerf.model import grid_triton  # Triton: imported on first use only

            self._triton_constants = grid_triton.device_constants(self.kernel_arrays(), self.device)
        return self._triton_constants

    def _axis_view(self, pair: torch.Tensor, dim: int) -> torch.Tensor:
        """(L, 2, N) -> (L, 1, .., 2, .., 1, N) with the 2 on dimension ``dim``'s bit axis.

        The ``(2,) * D`` corner block is ordered ``(b_{D-1}, ..., b_0)`` so that its flat
        index is the corner number ``c = sum_d b_d 2^d`` (bit ``d`` set: ``cell + 1`` along
        dimension ``d``), the numbering of tiny-cuda-nn's corner loop.
        """
        shape = [pair.shape[0]] + [1] * self.n_input_dims + [pair.shape[-1]]
        shape[1 + self.n_input_dims - 1 - dim] = 2
        return pair.view(shape)

    def corners(
        self, x: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Flat table rows and weights of every level's corners.

        Args:
            x: (N, D) points, already clamped into [0, 1].
            dtype: the parameters' dtype; float32 reproduces tiny-cuda-nn's arithmetic.
        Returns:
            rows: (L, 2^D, N) int64 entry index in the flat table (``offset_l + index``).
            weights: (L, 2^D, N) interpolation weights.
            factors: D tensors (L, 2, N) of the per-dimension weight pairs (1 - frac, frac).
        """
        n_dims, n_levels = self.n_input_dims, self.n_levels
        xt = x.detach().t().unsqueeze(0)  # (1, D, N)
        if dtype == torch.float32:
            # fmaf(scale, x, 0.5f): the float64 product of two float32 values is exact.
            pos = torch.addcmul(
                torch.full((), 0.5, dtype=torch.float64, device=x.device),
                self.scale64.view(-1, 1, 1),
                xt.to(torch.float32).to(torch.float64),
            ).to(torch.float32)
        else:
            pos = self.scale64.to(dtype).view(-1, 1, 1) * xt.to(dtype) + 0.5
        cell_f = torch.floor(pos)
        frac = pos - cell_f  # (L, D, N)
        cell = cell_f.to(torch.int64)
        factors = [torch.stack((1 - frac[:, d], frac[:, d]), dim=1) for d in range(n_dims)]
        n_points = x.shape[0]
        block = [n_levels] + [2] * n_dims + [n_points]
        # Preallocated outputs filled in place: fresh large temporaries (page faults, memory
        # traffic) cost more than the arithmetic on CPU.
        weights = torch.empty(block, dtype=frac.dtype, device=x.device)
        # Weight products in dimension order 0..D-1, as the CUDA kernel multiplies them.
        weights.copy_(self._axis_view(factors[0], 0).expand(block))
        for d in range(1, n_dims):
            weights.mul_(self._axis_view(factors[d], d))
        rows = torch.empty(block, dtype=torch.int64, device=x.device)
        nd = self.n_dense
        if nd > 0:
            # index = sum_d (cell_d + b_d) * stride_d, in uint32, then % entries.
            dense = rows[:nd]
            base = (cell[:nd] * self.dense_strides.unsqueeze(-1)).sum(1)  # (Ld, N)
            dense.copy_(base.view([nd] + [1] * n_dims + [-1]).expand(dense.shape))
            for d in range(n_dims):
                step = self.dense_strides[:, d].view(nd, 1, 1)
                dense.add_(self._axis_view(torch.cat((torch.zeros_like(step), step), dim=1), d))
            dense.bitwise_and_(_UINT32_MASK)
            dense.copy_(torch.remainder(dense, self.n_entries[:nd].view([nd] + [1] * (n_dims + 1))))
        if nd < n_levels:
            hashed = rows[nd:]
            for d in range(n_dims):
                prime = COHERENT_PRIMES[d]
                low = cell[nd:, d] * prime  # (Lh, N)
                pair = torch.stack((low, low + prime), dim=1).bitwise_and_(self.hash_mask)
                if d == 0:
                    hashed.copy_(self._axis_view(pair, d).expand(hashed.shape))
                else:
                    hashed.bitwise_xor_(self._axis_view(pair, d))
        rows.add_(self.offsets.view([n_levels] + [1] * (n_dims + 1)))
        shape = (n_levels, self.n_corners, n_points)
        return rows.view(shape), weights.view(shape), factors

    def input_gradient(self, grad_w: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
        """dL/dx (N, D) from dL/dweight (L, 2^D, N) and the per-dimension weight pairs."""
        n_dims = self.n_input_dims
        n_levels, n_points = grad_w.shape[0], grad_w.shape[-1]
        block = grad_w.view([n_levels] + [2] * n_dims + [n_points])
        grads = []
        for d in range(n_dims):
            # d weight / d frac_d = (+1 for b_d = 1, -1 for b_d = 0) * the other factors;
            # d frac / d x = scale.
            diff = block.select(1 + n_dims - 1 - d, 1) - block.select(1 + n_dims - 1 - d, 0)
            for other in range(n_dims):
                if other == d:
                    continue
                shape = [n_levels] + [1] * (n_dims - 1) + [n_points]
                # Bit axes left after dropping b_d, still ordered (b_{D-1}, ..., b_0).
                shape[1 + n_dims - 1 - other - (1 if other < d else 0)] = 2
                diff = diff * factors[other].view(shape)
            dfrac = diff.reshape(n_levels, -1, n_points).sum(1)  # (L, N)
            grads.append((dfrac * self.scale64.to(dfrac.dtype).view(-1, 1)).sum(0))
        return torch.stack(grads, dim=-1)
