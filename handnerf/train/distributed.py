"""Data-parallel fits: one process per device under ``torchrun``, gradients averaged.

``torchrun --nproc_per_node=N -m handnerf fit ...`` starts N copies of the fit with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`process_group`
joins them into one ``torch.distributed`` group (gloo on the CPU, nccl on CUDA, one GPU
per local rank). Without those variables it yields a one-process :class:`DataParallel`
whose collectives are no-ops, so the trainer has one code path.

How a step is shared (the trainer calls these; see ``docs/scale.md``):

* **Rays.** Every rank draws the whole global batch's pixel indices from the same seeded
  generator and keeps every ``world_size``-th one (:class:`~handnerf.train.rays.RaySampler`
  ``rank``/``world_size``): the union of the ranks' rays *is* a one-process fit's batch.
  Drawing a few thousand integers costs microseconds; the costly part of a ray (its
  rendering, its silhouette test) happens on one rank only. The generator's state is
  then the same on every rank, so one checkpoint resumes any number of ranks.
* **Noise.** Stratified samples and random backgrounds come from torch's global
  generator, which rank ``r > 0`` reseeds from ``(seed, rank, step)`` when a fit starts
  (rank 0 keeps the one-process stream).
* **Gradients.** After ``backward`` one all-reduce of every optimised parameter's
  gradient, flattened into one buffer, divided by the world size: the mean of per-rank
  means over equal shares is the global batch's mean. Explicit rather than
  ``DistributedDataParallel`` because the optimised parameters are not one module's (the
  pose refinement has its own), the trainer renders through ``render_rays`` rather than
  ``forward``, and a parameter without a gradient must stay without one on every rank
  (Adam skips it; a zero would still move it by momentum).
* **Decisions.** Whether a loss is finite and whether to stop (a signal or the time
  budget reached one rank) are agreed by an all-reduce, so no rank leaves a collective
  the others are waiting in.
* **Occupancy.** nerfacc's grid update draws random cells and points, so rank 0
  updates and broadcasts ``occs`` and ``binaries``; every rank's grid stays identical.
* **Files.** Only rank 0 logs, validates and writes checkpoints.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from handnerf.errors import ConfigError
from handnerf.files import pick_device
from handnerf.model.occupancy import CanonicalOccupancyGrid

#: Environment torchrun sets in every worker.
ENV_KEYS: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: Agreed stop reasons, in increasing priority (the largest any rank saw wins).
STOP_REASONS: tuple[str | None, ...] = (None, "time", "signal")
#: How long a collective waits for a rank that stopped answering (a dead peer usually
#: fails it at once; this bounds a hung one).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Ranks:
    """A worker's place in the group: global ``rank`` of ``world_size``, ``local_rank``
    on its machine (its GPU index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def environment_ranks(env: Mapping[str, str] | None = None) -> Ranks | None:
    """The torchrun worker's :class:`Ranks`, or None outside torchrun (no ``WORLD_SIZE``)."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    values: dict[str, int] = {}
    for key in ENV_KEYS:
        raw = env.get(key, "0" if key != "WORLD_SIZE" else "")
        try:
            values[key] = int(raw)
        except ValueError as exc:
            raise ConfigError(
                f"environment variable {key}={raw!r} is not an integer (torchrun sets "
                "RANK, WORLD_SIZE and LOCAL_RANK)"
            ) from exc
    ranks = Ranks(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
    if ranks.world_size < 1 or not 0 <= ranks.rank < ranks.world_size or ranks.local_rank < 0:
        raise ConfigError(
            f"environment: RANK={ranks.rank} must lie in [0, WORLD_SIZE={ranks.world_size}) "
            f"and LOCAL_RANK={ranks.local_rank} must be >= 0"
        )
    return ranks


def is_main_process() -> bool:
    """Whether this process is rank 0 (or not under torchrun): the one that prints."""
    ranks = environment_ranks()
    return ranks is None or ranks.rank == 0


class DataParallel:
    """The collectives a data-parallel fit needs; with ``world_size == 1`` all are no-ops."""

    def __init__(self, ranks: Ranks, device: torch.device) -> None:
        self.rank = ranks.rank
        self.world_size = ranks.world_size
        self.local_rank = ranks.local_rank
        self.device = device

    @classmethod
    def single(cls, device: torch.device) -> DataParallel:
        return cls(Ranks(), device)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes logs, validation images and checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # ------------------------------------------------------------------ batch shares
    def check_shares(self, batch_rays: int, lpips_patches: int) -> None:
        """Every rank must get an equal share of rays and patches (the mean of per-rank
        means is then the global batch's mean)."""
        for key, n in (("train.batch_rays", batch_rays), ("train.lpips_patches", lpips_patches)):
            if n % self.world_size:
                raise ConfigError(
                    f"{key}={n} does not split evenly over {self.world_size} ranks; it is the "
                    f"global count, so give a multiple of {self.world_size}"
                )

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (collective)."""
        if not self.active:
            return flag
        import torch.distributed as dist

        value = torch.tensor([0 if flag else 1], device=self.device, dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item()) == 0

    def agree_stop(self, local: str | None) -> str | None:
        """The stop reason of the whole group: the strongest of every rank's ``local``
        (None: go on) in :data:`STOP_REASONS` order (collective)."""
        if not self.active:
            return local
        import torch.distributed as dist

        value = torch.tensor([STOP_REASONS.index(local)], device=self.device, dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return STOP_REASONS[int(value.item())]

    def average_gradients(self, params: Iterable[Tensor]) -> None:
        """Replace each parameter's gradient by its mean over the ranks (collective).

        One all-reduce of a flat buffer (every gradient's values) plus one of a has-grad
        mask: a parameter that no rank gave a gradient keeps ``grad=None``; one that some
        rank did gets the mean with zeros for the others.
        """
        if not self.active:
            return
        import torch.distributed as dist

        params = [p for p in params if p.requires_grad]
        has = torch.tensor(
            [p.grad is not None for p in params], device=self.device, dtype=torch.int32
        )
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        live = [p for p, h in zip(params, has.tolist(), strict=True) if h]
        if not live:
            return
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                for p in live
            ]
        )
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in live:
            mean = flat[offset : offset + p.numel()].view_as(p)
            if p.grad is None:  # no gradient here, some on another rank
                p.grad = mean.to(p.dtype).clone()
            else:
                p.grad.copy_(mean)
            offset += p.numel()

    def broadcast_from_main(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite ``tensors`` in place with rank 0's values (collective)."""
        if not self.active:
            return
        import torch.distributed as dist

        for tensor in tensors:
            # gloo and nccl move bytes; a bool tensor travels as its uint8 view.
            payload = tensor.detach()  # in place, outside autograd (parameters too)
            if payload.dtype == torch.bool:
                payload = payload.view(torch.uint8)
            dist.broadcast(payload, src=0)

    def share_occupancy(self, grid: CanonicalOccupancyGrid) -> None:
        """Give every rank rank 0's occupancy grid (after rank 0 alone updated it)."""
        if not self.active:
            return
        self.broadcast_from_main([grid.estimator.occs, grid.estimator.binaries])
        if not self.is_main:
            grid.version += 1  # posed-space caches keyed on it rebuild

    def mean_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Per-rank step statistics averaged over the ranks (collective); PSNR as the PSNR
        of the mean squared error, not the mean of PSNRs."""
        if not self.active:
            return stats
        import torch.distributed as dist

        keys = sorted(stats)
        values = [
            10.0 ** (-stats[k] / 10.0) if k == "psnr" else stats[k]  # back to the MSE
            for k in keys
        ]
        tensor = torch.tensor(values, device=self.device, dtype=torch.float64)
        dist.all_reduce(tensor)
        tensor /= self.world_size
        out = dict(zip(keys, tensor.tolist(), strict=True))
        if "psnr" in out:
            out["psnr"] = -10.0 * math.log10(max(out["psnr"], 1e-12))
        return out

    def seed_rank_noise(self, seed: int, step: int) -> None:
        """Give rank ``r > 0`` its own stream of torch's global generator (stratified
        samples, random backgrounds); rank 0 keeps the one-process fit's stream."""
        if self.rank > 0:
            torch.manual_seed(seed + 1_000_003 * self.rank + 7919 * step)


def rank_device(device_name: str, local_rank: int) -> torch.device:
    """The device of the worker with ``local_rank``: its own GPU on CUDA."""
    device = pick_device(device_name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device={device_name}: LOCAL_RANK={local_rank} has no GPU "
            f"({torch.cuda.device_count()} visible); start at most that many processes per node"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(device_name: str) -> Iterator[DataParallel]:
    """Join torchrun's process group (gloo on the CPU, nccl on CUDA) for the block, or
    yield a one-process :class:`DataParallel` outside torchrun."""
    ranks = environment_ranks()
    if ranks is None or ranks.world_size == 1:
        device = pick_device(device_name) if ranks is None else rank_device(device_name, 0)
        yield DataParallel(ranks or Ranks(), device)
        return
    import torch.distributed as dist

    device = rank_device(device_name, ranks.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # MASTER_ADDR/MASTER_PORT come from torchrun (env:// rendezvous).
    dist.init_process_group(
        backend=backend,
        rank=ranks.rank,
        world_size=ranks.world_size,
        timeout=COLLECTIVE_TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )
    try:
        yield DataParallel(ranks, device)
    finally:
        dist.destroy_process_group()
