"""Placing samples along posed-space rays, skipping space the canonical hand does not fill.

Two samplers share one interface, :meth:`Sampler.sample`, and one result type,
:class:`SampleBatch`; :func:`make_sampler` picks one:

- :class:`TorchSampler` (CPU and CUDA): near/far from the ray's intersection with its
  frame's posed AABB, ``n_samples`` stratified samples per ray in a dense ``(R,S)`` layout
  and a mask of the samples worth evaluating (``occupied_fn``). The field runs only
  under the mask; the others count as empty.
- :class:`NerfaccSampler` (nerfacc's compiled kernels, CUDA; see
  :func:`~handnerf.model.kernels.nerfacc_kernels`): the canonical occupancy is carried into
  each frame's posed space on a coarse grid (cached per frame), then
  ``nerfacc.traverse_grids`` marches every ray through it with a fixed step, giving packed
  samples ``(ray_indices, t_starts, t_ends)`` in occupied cells only.

``occupied_fn(points (M,3) posed metres, ray_ids (M,) long) -> (M,) bool`` is given by the
caller (deform the points with the ray's frame, then query the canonical occupancy grid);
``ray_ids`` index the batch, so the caller finds each point's frame as ``frame_ids[ray_ids]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

from handnerf.config import choice
from handnerf.errors import ConfigError, ParameterError
from handnerf.model.kernels import nerfacc_kernels

OccupiedFn = Callable[[Tensor, Tensor], Tensor]

#: Points per occupied_fn call when filling a posed grid (bounds peak memory).
_OCCUPIED_CHUNK = 1 << 18


@dataclass
class SampleBatch:
    """Samples along R rays, either batched or packed.

    Batched (torch sampler): t_starts, t_ends, mask (R,S); ``mask`` marks the samples to
    evaluate. Packed (nerfacc sampler): t_starts, t_ends, ray_indices (M,), sorted by ray,
    every sample to be evaluated. Distances are metres along unit directions.
    """

    t_starts: Tensor
    t_ends: Tensor
    n_rays: int
    mask: Tensor | None = None
    ray_indices: Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.ray_indices is not None

    @property
    def n_evaluated(self) -> int:
        """How many samples the field will be asked about."""
        if self.mask is not None:
            return int(self.mask.sum())
        return int(self.t_starts.shape[0])

    def select(self, keep: Tensor) -> SampleBatch:
        """The samples to evaluate, less those where ``keep`` (one bool per evaluated
        sample, in :meth:`eval_points` order) is false."""
        if self.ray_indices is not None:
            return SampleBatch(
                self.t_starts[keep],
                self.t_ends[keep],
                self.n_rays,
                ray_indices=self.ray_indices[keep],
            )
        assert self.mask is not None
        mask = self.mask.clone()
        mask[self.mask] = keep
        return SampleBatch(self.t_starts, self.t_ends, self.n_rays, mask=mask)

    def eval_points(self, origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        """Midpoints of the samples to evaluate (M,3) posed metres and their ray ids (M,)."""
        mid = 0.5 * (self.t_starts + self.t_ends)
        if self.ray_indices is not None:
            ray_ids = self.ray_indices.long()
            return origins[ray_ids] + dirs[ray_ids] * mid[:, None], ray_ids
        assert self.mask is not None
        ray_ids, sample_ids = torch.nonzero(self.mask, as_tuple=True)
        return origins[ray_ids] + dirs[ray_ids] * mid[ray_ids, sample_ids, None], ray_ids


def ray_aabb_intersect(
    origins: Tensor, dirs: Tensor, aabbs: Tensor, near_plane: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of rays against boxes.

    origins, dirs (R,3); aabbs (R,6) or (6,) ``[min xyz, max xyz]``. Returns t_near, t_far
    (R,) (t_near clamped to ``near_plane``; both 0 for a miss) and hit (R,) bool. A
    direction component of 0 is treated as a tiny one of the same sign, which keeps rays
    parallel to a slab well defined (inside: unbounded, outside: miss).
    """
    eps = 1e-12
    safe = torch.where(dirs >= 0, dirs.clamp(min=eps), dirs.clamp(max=-eps))
    lo = (aabbs[..., :3] - origins) / safe
    hi = (aabbs[..., 3:] - origins) / safe
    t_near = torch.minimum(lo, hi).amax(dim=-1).clamp(min=near_plane)
    t_far = torch.maximum(lo, hi).amin(dim=-1)
    hit = t_far > t_near
    zero = torch.zeros_like(t_near)
    return torch.where(hit, t_near, zero), torch.where(hit, t_far, zero), hit


def _check_rays(origins: Tensor, dirs: Tensor, frame_ids: Tensor, frame_aabbs: Tensor) -> None:
    n = origins.shape[0]
    if origins.ndim != 2 or origins.shape[-1] != 3 or dirs.shape != origins.shape:
        raise ParameterError(
            f"sampler: origins and dirs must both have shape (R,3), got {tuple(origins.shape)}, {tuple(dirs.shape)}"
        )
    if frame_ids.shape != (n,):
        raise ParameterError(
            f"sampler: frame_ids must have shape ({n},), got {tuple(frame_ids.shape)}"
        )
    if frame_aabbs.ndim != 2 or frame_aabbs.shape[-1] != 6:
        raise ParameterError(
            f"sampler: frame_aabbs must have shape (F,6), got {tuple(frame_aabbs.shape)}"
        )
    if n and (int(frame_ids.min()) < 0 or int(frame_ids.max()) >= frame_aabbs.shape[0]):
        raise ParameterError(
            f"sampler: frame_ids must lie in [0, {frame_aabbs.shape[0]}) (rows of frame_aabbs)"
        )


def _call_occupied(occupied_fn: OccupiedFn, points: Tensor, ray_ids: Tensor) -> Tensor:
    occupied = occupied_fn(points, ray_ids)
    if occupied.shape != (points.shape[0],):
        raise ParameterError(
            f"sampler: occupied_fn must return shape ({points.shape[0]},), got {tuple(occupied.shape)}"
        )
    return occupied.to(torch.bool)


@dataclass
class RayQuery:
    """The rays of one :meth:`Sampler.sample` call, checked (see there)."""

    origins: Tensor
    dirs: Tensor
    frame_ids: Tensor
    frame_aabbs: Tensor
    occupied_fn: OccupiedFn | None
    stratified: bool
    cache_key: Hashable | None


class Sampler(ABC):
    """The interface of both samplers: :meth:`sample` checks the rays, :meth:`place` (each
    sampler's own) places the samples."""

    @torch.no_grad()
    def sample(
        self,
        origins: Tensor,
        dirs: Tensor,
        frame_ids: Tensor,
        frame_aabbs: Tensor,
        occupied_fn: OccupiedFn | None = None,
        stratified: bool = True,
        cache_key: Hashable | None = None,
    ) -> SampleBatch:
        """origins, dirs (R,3) posed world (unit dirs); frame_ids (R,) long; frame_aabbs (F,6).

        ``occupied_fn`` (see the module) marks the samples worth evaluating; ``stratified``
        jitters them (training) instead of the fixed ones of rendering; ``cache_key``
        names the occupancy state the sampler may cache grids of (the occupancy grid's
        ``version``). Returns the samples of each ray (:class:`SampleBatch`).
        """
        _check_rays(origins, dirs, frame_ids, frame_aabbs)
        query = RayQuery(origins, dirs, frame_ids, frame_aabbs, occupied_fn, stratified, cache_key)
        return self.place(query)

    @abstractmethod
    def place(self, query: RayQuery) -> SampleBatch:
        """The samples of the checked rays of ``query`` (called under ``torch.no_grad``)."""


class TorchSampler(Sampler):
    """Stratified samples between each ray's entry and exit of its frame's posed AABB."""

    def __init__(self, n_samples: int = 64) -> None:
        if n_samples < 1:
            raise ConfigError(f"sampler.n_samples must be >= 1, got {n_samples}")
        self.n_samples = n_samples

    def edge_fractions(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(S+1,) the evaluation bins' edges as fractions of [near, far]: bin ``s`` spans
        ``near + (far - near) * f[s]`` to ``... * f[s + 1]``."""
        return torch.linspace(0.0, 1.0, self.n_samples + 1, device=device, dtype=dtype)

    def place(self, query: RayQuery) -> SampleBatch:
        """Training (``stratified``): each interior bin edge jitters within half a bin, so
        the samples cover [near, far] without gaps; evaluation: bin centres. Rays missing
        their box get zero-length intervals and an all-false mask. ``cache_key`` is unused."""
        origins, dirs, occupied_fn = query.origins, query.dirs, query.occupied_fn
        n_rays, n_samples = origins.shape[0], self.n_samples
        near, far, hit = ray_aabb_intersect(
            origins, dirs, query.frame_aabbs[query.frame_ids.long()]
        )
        u = self.edge_fractions(origins.device, origins.dtype).expand(n_rays, n_samples + 1)
        if query.stratified and n_samples > 1:
            jitter = (
                torch.rand(n_rays, n_samples - 1, device=u.device, dtype=u.dtype) - 0.5
            ) / n_samples
            u = torch.cat([u[:, :1], u[:, 1:-1] + jitter, u[:, -1:]], dim=1)
        edges = near[:, None] + (far - near)[:, None] * u
        t_starts, t_ends = edges[:, :-1].contiguous(), edges[:, 1:].contiguous()
        mask = hit[:, None].expand(n_rays, n_samples).clone()
        if occupied_fn is not None and bool(mask.any()):
            batch = SampleBatch(t_starts, t_ends, n_rays, mask=mask)
            points, ray_ids = batch.eval_points(origins, dirs)
            mask[mask.clone()] = _call_occupied(occupied_fn, points, ray_ids)
        return SampleBatch(t_starts, t_ends, n_rays, mask=mask)


class NerfaccSampler(Sampler):
    """Occupancy-guided ray marching with ``nerfacc.traverse_grids`` (nerfacc's kernels).

    Per frame, a ``posed_resolution**3`` binary grid over the frame's posed AABB marks the
    cells whose centre ``occupied_fn`` accepts (dilated by one cell, so thin parts between
    centres are not lost). It is cached per frame id until ``cache_key`` or the frames'
    boxes change (pass the occupancy grid's ``version``). With ``refine`` the packed samples
    are filtered once more by ``occupied_fn`` itself, so both samplers evaluate the field
    on the same set.

    A batch mixing frames is marched by one ``traverse_grids`` call: each frame's grid and
    rays are moved along x into a region of their own (translation changes no distance
    along a ray), and each ray's near/far planes are its own box's entry and exit, so it
    never marches another frame's grid. Per-frame calls would each wait on the GPU.
    """

    def __init__(
        self,
        step_size: float = 2e-3,
        posed_resolution: int = 64,
        dilate: bool = True,
        refine: bool = True,
        near_plane: float = 0.0,
    ) -> None:
        if step_size <= 0:
            raise ConfigError(f"sampler.step_size must be > 0, got {step_size}")
        if posed_resolution < 2:
            raise ConfigError(f"sampler.posed_resolution must be >= 2, got {posed_resolution}")
        self.step_size = step_size
        self.posed_resolution = posed_resolution
        self.dilate = dilate
        self.refine = refine
        self.near_plane = near_plane
        self._cache: dict[int, Tensor] = {}
        self._cache_key: Hashable | None = None
        self._cache_aabbs: Tensor | None = None

    def clear_cache(self) -> None:
        self._cache.clear()

    def _check_cache(self, cache_key: Hashable | None, frame_aabbs: Tensor) -> None:
        """Forget the cached grids when the key or the frames' boxes (F,6) change; the
        boxes are compared once per call (one host sync), not once per frame."""
        same_boxes = self._cache_aabbs is not None and (
            self._cache_aabbs is frame_aabbs
            or (
                self._cache_aabbs.shape == frame_aabbs.shape
                and self._cache_aabbs.device == frame_aabbs.device
                and torch.equal(self._cache_aabbs, frame_aabbs)
            )
        )
        if cache_key != self._cache_key or not same_boxes:
            self._cache.clear()
            self._cache_key = cache_key
            self._cache_aabbs = frame_aabbs

    @torch.no_grad()
    def posed_binaries(
        self,
        frames: list[int],
        aabbs: Tensor,
        occupied_fn: OccupiedFn,
        proxy_rays: Tensor,
    ) -> None:
        """Build and cache the (res,res,res) bool grids, indexed [x,y,z] like nerfacc's, of
        ``frames`` over their ``aabbs`` (n,6), together (``occupied_fn`` in chunks).

        ``occupied_fn`` is called with ``ray_ids = proxy_rays[i]`` (n,) (a ray of frame
        ``frames[i]`` in the current batch) so the caller's frame lookup still works for
        cell centres.
        """
        res, n = self.posed_resolution, len(frames)
        device = aabbs.device
        axis = torch.arange(res, device=device, dtype=aabbs.dtype)
        coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        cell = (aabbs[:, 3:] - aabbs[:, :3]) / res  # (n,3)
        centres = (aabbs[:, None, :3] + (coords[None] + 0.5) * cell[:, None]).reshape(-1, 3)
        owners = proxy_rays.long().repeat_interleave(res**3)
        occupied = torch.cat(
            [
                _call_occupied(occupied_fn, chunk, ids)
                for chunk, ids in zip(
                    centres.split(_OCCUPIED_CHUNK), owners.split(_OCCUPIED_CHUNK), strict=True
                )
            ]
        ).reshape(n, res, res, res)
        if self.dilate:
            occupied = (
                torch.nn.functional.max_pool3d(occupied[:, None].float(), 3, stride=1, padding=1)[
                    :, 0
                ]
                > 0
            )
        for i, frame in enumerate(frames):
            self._cache[frame] = occupied[i]

    def place(self, query: RayQuery) -> SampleBatch:
        """Packed samples sorted by ray."""
        import nerfacc

        origins, dirs, occupied_fn = query.origins, query.dirs, query.occupied_fn
        if not nerfacc_kernels(origins.device):
            raise ParameterError(
                f"NerfaccSampler needs nerfacc's kernels, which do not run on {origins.device}; "
                "use TorchSampler there"
            )
        # nerfacc's kernels read float32 and int64 buffers, contiguous.
        origins, dirs = origins.float().contiguous(), dirs.float().contiguous()
        frame_aabbs = query.frame_aabbs.float()
        frame_ids = query.frame_ids.long()
        n_rays, res = origins.shape[0], self.posed_resolution
        self._check_cache(query.cache_key, frame_aabbs)
        # The frames in this batch and each ray's slot among them: one host sync.
        present_t, slot = torch.unique(frame_ids, return_inverse=True)
        present = present_t.tolist()
        boxes = frame_aabbs[present_t]  # (m,6)
        if occupied_fn is None:
            binaries = torch.ones(
                (len(present), res, res, res), dtype=torch.bool, device=origins.device
            )
        else:
            missing = [i for i, frame in enumerate(present) if frame not in self._cache]
            if missing:
                first_ray = torch.full(
                    (len(present),), n_rays, dtype=torch.long, device=origins.device
                ).scatter_reduce(
                    0, slot, torch.arange(n_rays, device=origins.device), reduce="amin"
                )
                # As many frames per pass as fit in one occupied_fn chunk (bounded memory).
                per_pass = max(1, _OCCUPIED_CHUNK // res**3)
                for start in range(0, len(missing), per_pass):
                    part = missing[start : start + per_pass]
                    index = torch.tensor(part, device=origins.device)
                    self.posed_binaries(
                        [present[i] for i in part], boxes[index], occupied_fn, first_ray[index]
                    )
            binaries = torch.stack([self._cache[frame] for frame in present])
        # March from the box entry rather than the camera: nerfacc steps its lattice from
        # the near plane one step at a time, even through empty space. A ray that misses
        # its box gets near = far = 0 and no interval (rays_mask does nothing in 0.5.3
        # unless over_allocate=True, so it is not relied on).
        near, far, _ = ray_aabb_intersect(
            origins, dirs, frame_aabbs[frame_ids], near_plane=self.near_plane
        )
        if query.stratified:
            near = near + torch.rand_like(near) * self.step_size
        # Disjoint regions: slot s's box starts at x = s * pitch.
        pitch = (boxes[:, 3] - boxes[:, 0]).amax() + 1.0
        shift = torch.zeros_like(boxes[:, :3])
        shift[:, 0] = torch.arange(len(present), device=boxes.device) * pitch - boxes[:, 0]
        intervals, samples, _ = nerfacc.traverse_grids(
            (origins + shift[slot]).contiguous(),
            dirs,
            binaries.contiguous(),
            (boxes + shift.repeat(1, 2)).contiguous(),
            near_planes=near.contiguous(),
            far_planes=far.contiguous(),
            step_size=self.step_size,
            cone_angle=0.0,
        )
        # The kernel packs samples ray after ray, each ray's in marching order.
        t_starts = intervals.vals[intervals.is_left]
        t_ends = intervals.vals[intervals.is_right]
        ray_ids = samples.ray_indices.long()
        batch = SampleBatch(t_starts, t_ends, n_rays, ray_indices=ray_ids)
        if self.refine and occupied_fn is not None and ray_ids.numel():
            points, ids = batch.eval_points(origins, dirs)
            keep = _call_occupied(occupied_fn, points, ids)
            batch = batch.select(keep)
        return batch


@dataclass
class SamplerConfig:
    #: auto: nerfacc on CUDA when its kernels work, else torch.
    kind: str = choice("auto", ("auto", "torch", "nerfacc"))
    #: TorchSampler: samples per ray across the posed AABB.
    n_samples: int = 64
    #: Training rays jitter their samples (stratified); false: the fixed samples of
    #: rendering, so a fit draws no random numbers along its rays.
    stratified: bool = True
    #: NerfaccSampler: marching step (m) and posed-space grid resolution.
    step_size: float = 2e-3
    posed_resolution: int = 64


def make_sampler(cfg: SamplerConfig, device: torch.device | str) -> Sampler:
    """The sampler ``cfg.kind`` asks for; "auto" prefers nerfacc where it can run."""
    if cfg.kind not in ("auto", "torch", "nerfacc"):
        raise ConfigError(f"sampler.kind must be auto, torch or nerfacc, got {cfg.kind!r}")
    kernels = nerfacc_kernels(device)
    if cfg.kind == "nerfacc" and not kernels:
        raise ConfigError(
            f"sampler.kind=nerfacc needs nerfacc's compiled kernels, which do not run on {device} "
            "(they need CUDA); use auto or torch"
        )
    if cfg.kind == "nerfacc" or (cfg.kind == "auto" and kernels):
        return NerfaccSampler(step_size=cfg.step_size, posed_resolution=cfg.posed_resolution)
    return TorchSampler(n_samples=cfg.n_samples)
