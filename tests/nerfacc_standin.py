"""A pure-PyTorch stand-in for nerfacc 0.5.3's compiled CUDA module, for tests only.

nerfacc looks its compiled module up at every call (``nerfacc/cuda/__init__.py``:
``from ._backend import _C`` inside each wrapper), so putting a module whose ``_C`` is a
:class:`NerfaccStandIn` at ``sys.modules["nerfacc.cuda._backend"]`` reroutes every kernel
call; ``pack_info`` is plain Python that refuses CPU tensors and is replaced where nerfacc
imported it. :func:`install` does both and declares the stand-in to
:func:`handnerf.model.kernels.nerfacc_kernels`, so the project's packed path (the nerfacc
sampler, packed rendering) runs on the CPU.

Written from nerfacc's documented semantics (docstrings of ``grid.py``, ``scan.py``,
``pack.py`` and the comment above ``traverse_grids_kernel``), not from its kernels. Each op
asserts the input contract the kernels rely on (they read raw ``data_ptr<float>`` /
``<int64_t>`` / ``<bool>`` buffers of contiguous tensors, so a wrong dtype or layout is
silently misread on the GPU): float32, int64, bool, contiguous, shapes.

Stood in: ``ray_aabb_intersect``, ``traverse_grids`` (fixed step, ``cone_angle=0``, at
most one grid segment per ray, no step limit), ``exclusive_sum`` / ``inclusive_sum``
(forward and backward, no ``normalize``), ``pack_info``. Anything else raises
``NotImplementedError`` rather than guessing. Stricter than 0.5.3 on purpose:
``traverse_grids`` rejects a ``rays_mask`` with false entries when ``over_allocate`` is
off, because 0.5.3 then ignores the mask (it passes ``nullptr`` to the kernel), and the
outputs a kernel leaves unwritten (elements outside every chunk) are NaN here.
"""

from __future__ import annotations

import sys
import types
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from handnerf.model.kernels import kernels_stood_in


def _contract(name: str, tensor: Tensor, dtype: torch.dtype, ndim: int | None = None) -> None:
    assert isinstance(tensor, Tensor), f"{name}: expected a tensor, got {type(tensor)}"
    assert tensor.dtype == dtype, f"{name}: the kernel reads {dtype}, got {tensor.dtype}"
    assert tensor.is_contiguous(), f"{name}: the kernel reads a contiguous buffer"
    if ndim is not None:
        assert tensor.ndim == ndim, f"{name}: expected {ndim} dims, got {tuple(tensor.shape)}"


class RaySegmentsSpec:
    """The C++ ``RaySegmentsSpec``: packed segments, every field optional."""

    def __init__(self) -> None:
        self.vals: Tensor | None = None
        self.is_left: Tensor | None = None
        self.is_right: Tensor | None = None
        self.is_valid: Tensor | None = None
        self.chunk_starts: Tensor | None = None
        self.chunk_cnts: Tensor | None = None
        self.ray_indices: Tensor | None = None


def _chunk_layout(chunk_starts: Tensor, chunk_cnts: Tensor) -> tuple[Tensor, Tensor]:
    """Element index (E,) of every chunk member, chunk after chunk, and its chunk (E,)."""
    chunk = torch.repeat_interleave(torch.arange(len(chunk_cnts)), chunk_cnts)
    first = torch.cumsum(chunk_cnts, 0) - chunk_cnts
    offset = torch.arange(int(chunk_cnts.sum())) - first[chunk]
    return chunk_starts[chunk] + offset, chunk


def _segmented_scan(
    chunk_starts: Tensor, chunk_cnts: Tensor, inputs: Tensor, inclusive: bool, backward: bool
) -> Tensor:
    _contract("chunk_starts", chunk_starts, torch.int64, 1)
    _contract("chunk_cnts", chunk_cnts, torch.int64, 1)
    _contract("inputs", inputs, torch.float32, 1)
    assert chunk_starts.shape == chunk_cnts.shape, "chunk_starts and chunk_cnts differ in size"
    index, chunk = _chunk_layout(chunk_starts, chunk_cnts)
    x = inputs[index].double()
    total = torch.zeros(len(chunk_cnts), dtype=torch.float64).index_add_(0, chunk, x)
    running = torch.cumsum(x, 0)
    before = (running - x) - torch.cat([running.new_zeros(1), running])[
        (torch.cumsum(chunk_cnts, 0) - chunk_cnts)[chunk]
    ]
    # forward: sum of the chunk's elements before (exclusive) or up to (inclusive) each;
    # backward: the gradient of that, the sum after (exclusive) or from (inclusive) each.
    if backward:
        scanned = total[chunk] - before - (x if not inclusive else 0.0)
    else:
        scanned = before + (x if inclusive else 0.0)
    out = torch.full_like(inputs, float("nan"))  # the kernel leaves these unwritten
    out[index] = scanned.float()
    return out


def pack_info(ray_indices: Tensor, n_rays: int | None = None) -> Tensor:
    """``nerfacc.pack_info`` on any device: (n_rays, 2) start and count of each ray's
    samples in ``ray_indices`` (M,) int64, sorted by ray."""
    _contract("ray_indices", ray_indices, torch.int64, 1)
    if ray_indices.numel() > 1:
        assert bool((ray_indices[1:] >= ray_indices[:-1]).all()), "ray_indices must be sorted"
    if n_rays is None:
        n_rays = int(ray_indices.max()) + 1 if ray_indices.numel() else 0
    counts = torch.bincount(ray_indices, minlength=n_rays)
    assert len(counts) == n_rays, "ray_indices holds ids >= n_rays"
    return torch.stack([torch.cumsum(counts, 0) - counts, counts], dim=-1)


class NerfaccStandIn:
    """Stands in for nerfacc's compiled ``_C`` module; ``calls`` counts each op's uses."""

    RaySegmentsSpec = RaySegmentsSpec

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> object:
        raise NotImplementedError(f"nerfacc stand-in: _C.{name} is not stood in")

    # -- scans -----------------------------------------------------------------------------
    def exclusive_sum(
        self,
        chunk_starts: Tensor,
        chunk_cnts: Tensor,
        inputs: Tensor,
        normalize: bool,
        backward: bool,
    ) -> Tensor:
        self.calls["exclusive_sum"] += 1
        if normalize:
            raise NotImplementedError("nerfacc stand-in: normalize=True is not stood in")
        return _segmented_scan(chunk_starts, chunk_cnts, inputs, inclusive=False, backward=backward)

    def inclusive_sum(
        self,
        chunk_starts: Tensor,
        chunk_cnts: Tensor,
        inputs: Tensor,
        normalize: bool,
        backward: bool,
    ) -> Tensor:
        self.calls["inclusive_sum"] += 1
        if normalize:
            raise NotImplementedError("nerfacc stand-in: normalize=True is not stood in")
        return _segmented_scan(chunk_starts, chunk_cnts, inputs, inclusive=True, backward=backward)

    # -- grids -----------------------------------------------------------------------------
    def ray_aabb_intersect(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        aabbs: Tensor,
        near_plane: float,
        far_plane: float,
        miss_value: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """t_mins, t_maxs (n_rays, m) and hits (n_rays, m): slab test of each ray against
        each box, clipped to [near_plane, far_plane]; a box entirely behind the origin is
        missed; misses get ``miss_value``."""
        self.calls["ray_aabb_intersect"] += 1
        _contract("rays_o", rays_o, torch.float32, 2)
        _contract("rays_d", rays_d, torch.float32, 2)
        _contract("aabbs", aabbs, torch.float32, 2)
        assert rays_o.shape == rays_d.shape and rays_o.shape[-1] == 3 and aabbs.shape[-1] == 6
        inv = 1.0 / rays_d[:, None, :]
        lo = (aabbs[None, :, :3] - rays_o[:, None, :]) * inv
        hi = (aabbs[None, :, 3:] - rays_o[:, None, :]) * inv
        t_min = torch.minimum(lo, hi).amax(-1)
        t_max = torch.maximum(lo, hi).amin(-1)
        hits = (t_min <= t_max) & (t_max > 0)
        t_min = t_min.clamp(min=near_plane)
        t_max = t_max.clamp(max=far_plane)
        miss = torch.full_like(t_min, miss_value)
        return torch.where(hits, t_min, miss), torch.where(hits, t_max, miss), hits

    def traverse_grids(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        rays_mask: Tensor,
        binaries: Tensor,
        aabbs: Tensor,
        t_sorted: Tensor,
        t_indices: Tensor,
        hits: Tensor,
        near_planes: Tensor,
        far_planes: Tensor,
        step_size: float,
        cone_angle: float,
        compute_intervals: bool,
        compute_samples: bool,
        compute_terminate_planes: bool,
        traverse_steps_limit: int,
        over_allocate: bool,
    ) -> tuple[RaySegmentsSpec, RaySegmentsSpec, Tensor]:
        """March each ray from its near plane on the lattice ``near + k * step_size``; step
        ``k`` becomes a sample (interval ``[t_k, t_k+1]``, sample at its middle) when its
        middle lies in the ray's stretch of a grid, within [near, far), in an occupied cell.
        Consecutive samples share their edge (``is_left`` and ``is_right`` both set)."""
        self.calls["traverse_grids"] += 1
        n_rays = rays_o.shape[0]
        for name, tensor, dtype, ndim in (
            ("rays_o", rays_o, torch.float32, 2),
            ("rays_d", rays_d, torch.float32, 2),
            ("rays_mask", rays_mask, torch.bool, 1),
            ("binaries", binaries, torch.bool, 4),
            ("aabbs", aabbs, torch.float32, 2),
            ("t_sorted", t_sorted, torch.float32, 2),
            ("t_indices", t_indices, torch.int64, 2),
            ("hits", hits, torch.bool, 2),
            ("near_planes", near_planes, torch.float32, 1),
            ("far_planes", far_planes, torch.float32, 1),
        ):
            _contract(name, tensor, dtype, ndim)
            assert tensor.shape[0] == (n_rays if name not in ("binaries", "aabbs") else len(aabbs))
        n_grids = len(aabbs)
        assert t_sorted.shape == t_indices.shape == (n_rays, 2 * n_grids)
        assert hits.shape == (n_rays, n_grids)
        if over_allocate or traverse_steps_limit > 0:
            raise NotImplementedError("nerfacc stand-in: traverse_steps_limit is not stood in")
        assert bool(rays_mask.all()), (
            "rays_mask has no effect in nerfacc 0.5.3 unless over_allocate=True: the rays it "
            "masks out are marched anyway (give them an empty [near, far) instead)"
        )
        if step_size <= 0 or cone_angle != 0:
            raise NotImplementedError("nerfacc stand-in: only a fixed step_size > 0 is stood in")
        assert compute_intervals and compute_samples and compute_terminate_planes

        # Each ray's stretches [t_sorted[i], t_sorted[i+1]) inside a grid: entering grid g
        # at i, or leaving g at i while still inside the grid left at i + 1 (nested grids).
        entering = t_indices < n_grids
        level = torch.where(entering[:, :-1], t_indices[:, :-1], t_indices[:, 1:]) % n_grids
        inside = entering[:, :-1] | ~entering[:, 1:]
        inside &= torch.gather(hits, 1, level)
        seg_min = torch.maximum(t_sorted[:, :-1], near_planes[:, None])
        seg_max = torch.minimum(t_sorted[:, 1:], far_planes[:, None])
        valid = inside & (seg_min < seg_max)
        if bool((valid.sum(1) > 1).any()):
            raise NotImplementedError("nerfacc stand-in: several grid stretches per ray")
        has = valid.any(1)
        seg = valid.float().argmax(1)
        rows = torch.arange(n_rays)
        lo, hi, grid = seg_min[rows, seg], seg_max[rows, seg], level[rows, seg]

        # Lattice steps whose middle is in [lo, hi): k from ceil((lo-near)/dt - 1/2) on.
        near = near_planes.double()
        first = torch.ceil((lo.double() - near) / step_size - 0.5).clamp(min=0)
        last = torch.ceil((hi.double() - near) / step_size - 0.5)  # exclusive
        count = torch.where(has, (last - first).clamp(min=0), torch.zeros_like(first)).long()
        ray = torch.repeat_interleave(rows, count)
        k = first[ray] + (torch.arange(int(count.sum())) - (torch.cumsum(count, 0) - count)[ray])
        t0 = (near[ray] + k * step_size).float()
        t1 = (near[ray] + (k + 1) * step_size).float()
        mid = 0.5 * (t0 + t1)
        box = aabbs[grid[ray]]
        res = torch.tensor(binaries.shape[1:])
        rel = (rays_o[ray] + rays_d[ray] * mid[:, None] - box[:, :3]) / (box[:, 3:] - box[:, :3])
        cell = torch.minimum((rel * res).floor().long().clamp(min=0), res - 1)
        occupied = binaries[grid[ray], cell[:, 0], cell[:, 1], cell[:, 2]]
        ray, k, t0, t1, mid = ray[occupied], k[occupied], t0[occupied], t1[occupied], mid[occupied]

        sample_cnts = torch.bincount(ray, minlength=n_rays)
        samples = RaySegmentsSpec()
        samples.vals = mid
        samples.ray_indices = ray
        samples.is_valid = torch.ones_like(ray, dtype=torch.bool)
        samples.chunk_cnts = sample_cnts
        samples.chunk_starts = torch.cumsum(sample_cnts, 0) - sample_cnts

        # A run of consecutive steps shares edges: n samples -> n + 1 edges.
        run_start = torch.ones_like(ray, dtype=torch.bool)
        run_start[1:] = (ray[1:] != ray[:-1]) | (k[1:] != k[:-1] + 1)
        right = torch.cumsum(1 + run_start.long(), 0) - 1  # each sample's right edge
        n_edges = int(right[-1]) + 1 if len(right) else 0
        intervals = RaySegmentsSpec()
        intervals.vals = torch.zeros(n_edges)
        intervals.vals[right] = t1
        intervals.vals[right[run_start] - 1] = t0[run_start]
        intervals.is_left = torch.zeros(n_edges, dtype=torch.bool)
        intervals.is_left[right - 1] = True
        intervals.is_right = torch.zeros(n_edges, dtype=torch.bool)
        intervals.is_right[right] = True
        intervals.ray_indices = torch.zeros(n_edges, dtype=torch.long)
        intervals.ray_indices[right] = ray
        intervals.ray_indices[right - 1] = ray
        edge_cnts = (
            torch.bincount(intervals.ray_indices, minlength=n_rays) if n_edges else sample_cnts
        )
        intervals.chunk_cnts = edge_cnts
        intervals.chunk_starts = torch.cumsum(edge_cnts, 0) - edge_cnts
        # Where marching stopped: the first lattice point whose step's middle is past hi.
        terminate = torch.where(has, (near + last.clamp(min=0) * step_size).float(), near_planes)
        return intervals, samples, terminate


@contextmanager
def install() -> Iterator[NerfaccStandIn]:
    """Within the block, nerfacc's kernel calls on CPU tensors run on a fresh stand-in."""
    import nerfacc
    import nerfacc.pack
    import nerfacc.volrend

    standin = NerfaccStandIn()
    backend = types.ModuleType("nerfacc.cuda._backend")
    backend._C = standin  # type: ignore[attr-defined]
    saved_module = sys.modules.get("nerfacc.cuda._backend")
    saved_pack = (nerfacc.pack.pack_info, nerfacc.volrend.pack_info, nerfacc.pack_info)
    sys.modules["nerfacc.cuda._backend"] = backend
    nerfacc.pack.pack_info = nerfacc.volrend.pack_info = nerfacc.pack_info = pack_info
    try:
        with kernels_stood_in("cpu"):
            yield standin
    finally:
        if saved_module is None:
            sys.modules.pop("nerfacc.cuda._backend", None)
        else:
            sys.modules["nerfacc.cuda._backend"] = saved_module
        nerfacc.pack.pack_info, nerfacc.volrend.pack_info, nerfacc.pack_info = saved_pack
