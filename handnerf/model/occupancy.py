"""The canonical occupancy grid: which cells of the canonical hand's box hold density.

A thin wrapper around :class:`nerfacc.OccGridEstimator` (one level over the canonical AABB),
whose EMA update runs on CPU as well as on CUDA: ``occs`` holds an exponential moving
maximum of ``density * step_size`` per cell, and ``binaries = occs > min(mean(occs),
occ_thresh)``. During warm-up every cell is re-evaluated, afterwards a quarter of the
cells drawn uniformly plus (up to as many) occupied ones, each at a random point inside
its cell.

:meth:`CanonicalOccupancyGrid.init_from_points` seeds the grid from the canonical hand
mesh so the first steps already skip empty space, and can exclude cells far from the
mesh for good (nerfacc's "invisible" cells, ``occs = -1``): they are never evaluated nor
marked occupied, which keeps updates cheap on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from nerfacc import OccGridEstimator
from torch import Tensor, nn

from handnerf.errors import ConfigError, ParameterError
from handnerf.model import march_kernel


@dataclass
class OccupancyConfig:
    """Settings of :class:`CanonicalOccupancyGrid`."""

    #: Cells per axis over the canonical AABB.
    resolution: int = 64
    #: A cell is occupied while its (EMA of) ``sigma * step`` exceeds this.
    occ_thresh: float = 0.01
    #: Each update keeps ``ema_decay`` of a cell's old density estimate.
    ema_decay: float = 0.95
    #: Updates before this step evaluate every cell; later ones a random quarter
    #: (nerfacc's schedule).
    warmup_steps: int = 256
    #: Steps between updates when :meth:`CanonicalOccupancyGrid.update` is not given ``n``
    #: (a fit passes ``n=1`` and schedules updates with ``train.occupancy_every``).
    update_every: int = 16
    #: Interval length turning density into the occupancy ``sigma * step`` that the
    #: threshold applies to; None: the cell's edge length.
    step_size: float | None = None
    #: init_from_points: cells whose centre lies within this distance (m) of the mesh
    #: start occupied; cells farther than ``keep_radius`` are excluded (None: none).
    init_radius: float = 0.006
    keep_radius: float | None = 0.03


class CanonicalOccupancyGrid(nn.Module):
    """Binary occupancy over the canonical AABB with nerfacc's EMA update.

    ``aabb`` (6,) ``[min xyz, max xyz]`` in metres. ``version`` increases each time the
    binary grid may have changed, so posed-space caches know when to rebuild.
    """

    def __init__(self, aabb: Tensor | Sequence[float], cfg: OccupancyConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else OccupancyConfig()
        if cfg.resolution < 2:
            raise ConfigError(f"occupancy.resolution must be >= 2, got {cfg.resolution}")
        if not 0.0 <= cfg.ema_decay <= 1.0:
            raise ConfigError(f"occupancy.ema_decay must lie in [0, 1], got {cfg.ema_decay}")
        if cfg.update_every < 1:
            raise ConfigError(f"occupancy.update_every must be >= 1, got {cfg.update_every}")
        box = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        if box.shape != (6,) or not torch.isfinite(box).all() or not (box[3:] > box[:3]).all():
            raise ParameterError(
                f"occupancy aabb must be 6 finite numbers [min xyz, max xyz], got {box.tolist()}"
            )
        self.estimator = OccGridEstimator(roi_aabb=box, resolution=cfg.resolution, levels=1)
        self.version = 0

    # -- geometry ---------------------------------------------------------------------
    @property
    def aabb(self) -> Tensor:
        """(6,) canonical box in metres."""
        return self.estimator.aabbs[0]

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    @property
    def cell_size(self) -> Tensor:
        """(3,) edge lengths of a cell in metres."""
        return (self.aabb[3:] - self.aabb[:3]) / self.cfg.resolution

    @property
    def binaries(self) -> Tensor:
        """(res, res, res) bool, indexed [x, y, z]."""
        return self.estimator.binaries[0]

    @property
    def occs(self) -> Tensor:
        """(res**3,) float EMA occupancy (-1: excluded cell), x-major like ``binaries``."""
        return self.estimator.occs

    def cell_centers(self) -> Tensor:
        """(res**3, 3) centres of all cells in metres, in the flattened order of ``occs``."""
        coords = self.estimator.grid_coords.to(self.aabb.dtype)
        return self.aabb[:3] + (coords + 0.5) * self.cell_size

    def occupied_fraction(self) -> float:
        return float(self.binaries.float().mean())

    # -- queries ----------------------------------------------------------------------
    @torch.no_grad()
    def query(self, x_canon: Tensor) -> Tensor:
        """x_canon (N,3) metres -> (N,) bool: inside the box and in an occupied cell."""
        if x_canon.ndim != 2 or x_canon.shape[-1] != 3:
            raise ParameterError(
                f"occupancy query: points must have shape (N,3), got {tuple(x_canon.shape)}"
            )
        if self.aabb.dtype == torch.float32 and march_kernel.available(x_canon.device):
            # One compiled pass (the same float32 arithmetic): the fast render path asks
            # this of every sample it deforms.
            return march_kernel.cells_occupied(
                x_canon, self.aabb[:3], self.cell_size, self.binaries
            )
        res = self.cfg.resolution
        rel = (x_canon.to(self.aabb.dtype) - self.aabb[:3]) / self.cell_size
        idx = torch.floor(rel).long()
        inside = ((idx >= 0) & (idx < res)).all(dim=-1)
        idx = idx.clamp(0, res - 1)
        occupied = self.binaries[idx[:, 0], idx[:, 1], idx[:, 2]]
        return occupied & inside

    # -- updates ----------------------------------------------------------------------
    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: Callable[[Tensor], Tensor],
        occ_thresh: float | None = None,
        ema_decay: float | None = None,
        warmup_steps: int | None = None,
        n: int | None = None,
    ) -> bool:
        """Every ``n`` steps, refresh the EMA grid from ``density_fn(x (M,3) m) -> sigma (M,)``.

        Defaults come from the config. Returns whether an update happened. Works in
        train and eval mode (nerfacc refuses eval mode only to guard against accidents).
        """
        cfg = self.cfg
        n = cfg.update_every if n is None else n
        if step % n != 0:
            return False
        step_size = float(self.cell_size.min()) if cfg.step_size is None else cfg.step_size

        def occ_eval_fn(x: Tensor) -> Tensor:
            return density_fn(x).reshape(-1) * step_size

        self.estimator._update(
            step=step,
            occ_eval_fn=occ_eval_fn,
            occ_thre=cfg.occ_thresh if occ_thresh is None else occ_thresh,
            ema_decay=cfg.ema_decay if ema_decay is None else ema_decay,
            warmup_steps=cfg.warmup_steps if warmup_steps is None else warmup_steps,
        )
        self.version += 1
        return True

    @torch.no_grad()
    def init_from_points(
        self,
        points: Tensor,
        init_radius: float | None = None,
        keep_radius: float | None = -1.0,
        init_value: float = 1.0,
    ) -> None:
        """Seed the grid from canonical mesh vertices ``points`` (V,3) metres.

        Cells whose centre is within ``init_radius`` of a point get ``occs = init_value``
        (occupied; the EMA lets them fade if the field finds them empty); cells farther
        than ``keep_radius`` are excluded forever (``occs = -1``); the rest start empty.
        ``keep_radius=-1`` means "from the config"; None keeps every cell.
        """
        from scipy.spatial import cKDTree

        if points.ndim != 2 or points.shape[-1] != 3 or points.shape[0] == 0:
            raise ParameterError(
                f"occupancy init: points must have shape (V,3), V>0, got {tuple(points.shape)}"
            )
        init_radius = self.cfg.init_radius if init_radius is None else init_radius
        if keep_radius is not None and keep_radius < 0:
            keep_radius = self.cfg.keep_radius
        if keep_radius is not None and keep_radius < init_radius:
            raise ConfigError(
                f"occupancy.keep_radius ({keep_radius}) must be >= init_radius ({init_radius})"
            )
        tree = cKDTree(points.detach().cpu().double().numpy())
        centers = self.cell_centers().cpu().double().numpy()
        dist, _ = tree.query(centers, k=1)
        dist_t = torch.from_numpy(np.asarray(dist)).to(self.occs.device)
        occs = torch.zeros_like(self.occs)
        occs[dist_t <= init_radius] = init_value
        if keep_radius is not None:
            occs[dist_t > keep_radius] = -1.0
        self.estimator.occs.copy_(occs)
        self.estimator.binaries.copy_((occs > 0).view(self.estimator.binaries.shape))
        self.version += 1

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]
        self.version += 1
