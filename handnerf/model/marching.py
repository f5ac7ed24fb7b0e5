"""Front-to-back inference marching with early ray termination (the fast render path).

:meth:`HandAvatar.render_rays` tests every sample of every ray that lies in the posed
shell grid: it deforms them all (a closest-point query on the posed mesh each) and runs
the field on every occupied one, though most lie behind an opaque surface, or farther
from the mesh than the deformer's reach, and cannot change the image. :func:`march_rays`
visits the same samples (the torch sampler's bin centres, the same shell grid, occupancy
test and field) front to back in rounds, each taking every live ray's next few shell
samples, and skips work that cannot change the image:

- **Early termination.** A ray whose transmittance is below ``min_transmittance`` takes no
  more samples: what remains behind can change its pixel by at most that much.
- **Distance skipping.** The distance to the posed mesh is 1-Lipschitz: a sample at depth
  ``t`` and distance ``d > max_distance`` proves every sample of the ray before depth
  ``t + d - max_distance`` out of reach, so those are skipped without a query (exact:
  they would be empty). Only with the whole-mesh closest point (``near="mesh"``), whose
  distances are exact or, beyond the reach grid's limit, lower bounds (which skip less).
- **Colour where it shows.** Density comes first; the colour inputs (rotation, normal,
  self-shadow visibility) and MLP run only for samples whose weight exceeds
  ``min_weight``; each of the others changes its pixel by at most that much.

So with the defaults the image is the reference one within about 1e-4 per channel (float
rounding aside), far below an 8-bit step and the 0.1 dB issue #18 allows. The compositing
is the reference's (``w_i = T_i (1 - exp(-sigma_i dt_i))``, ``T_i = exp(-sum_{j<i} sigma_j
dt_j)``), the optical depth carried in float64 between rounds, and the per-camera colour
affine acts on the premultiplied colour as in :mod:`handnerf.model.volume`.

On the CPU, where numba imports, the per-sample work runs in compiled kernels: the bins
and shell test, each round's pick and compositing (:mod:`handnerf.model.march_kernel`),
the closest triangle and the deformation within reach (:mod:`handnerf.model.reach_grid`),
and the hash grids' lookups (:mod:`handnerf.model.grid_kernel`); each has a torch twin,
which tests compare it with (docs/benchmarks.md: 1.02 s -> 0.38 s -> 0.23 s a 256x256
crop of the demo avatar).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from handnerf.errors import ParameterError
from handnerf.model import march_kernel
from handnerf.model.avatar import HandAvatar, PosedFrames
from handnerf.model.frame_deformation import fp32_geometry
from handnerf.model.rays import RayBundle
from handnerf.model.sampler import TorchSampler, ray_aabb_intersect

#: Default transmittance below which a ray stops: the skipped rest changes a pixel by at
#: most this much per channel (an 8-bit step is 4e-3).
MIN_TRANSMITTANCE = 1e-4
#: Samples whose compositing weight is at most this get no colour (the colour inputs and
#: MLP are most of the field's cost): each changes its pixel by at most this much.
MIN_WEIGHT = 1e-5
#: Shell samples each live ray takes per round. Fewer: less wasted behind a surface and
#: more skipped by distance, but more rounds (measured on the demo avatar: 4).
ROUND_SAMPLES = 4
#: Slack (metres) of the distance skip, for float rounding of depths and distances.
SKIP_SLACK = 1e-6


def can_march(avatar: object) -> bool:
    """Whether :func:`march_rays` reproduces ``avatar``'s samples: a one-hand avatar whose
    sampler is the torch one (nerfacc's marching, on CUDA, places others; a two-hand
    avatar assigns each sample to a hand first and renders through its own path)."""
    return isinstance(avatar, HandAvatar) and isinstance(avatar.sampler, TorchSampler)


@torch.no_grad()
def march_rays(
    avatar: HandAvatar,
    frames: PosedFrames,
    rays: RayBundle,
    background: Tensor,
    min_transmittance: float = MIN_TRANSMITTANCE,
    min_weight: float = MIN_WEIGHT,
    round_samples: int = ROUND_SAMPLES,
    n_samples: int | None = None,
) -> dict[str, Tensor]:
    """Render R ``rays`` of ``frames`` front to back (see the module docstring).

    ``background`` (R,3) or (3,); ``min_transmittance`` 0 and ``min_weight`` 0 visit every
    sample the reference does. ``n_samples``: bins per ray instead of the avatar's sampler's
    (fewer: a coarser, faster preview; None: the avatar's, the reference image). Returns rgb (R,3) composited, opacity (R,), depth (R,)
    (expected depth of the hit part, 0 for empty rays) and, as 0-d tensors, the work done:
    n_deformed (samples deformed), n_evaluated (densities), n_colored (colours).
    Inference only: evaluation bins (no jitter), no gradients.
    """
    if not can_march(avatar):
        raise ParameterError("march_rays needs the torch sampler (model.sampler.kind=torch)")
    if not 0.0 <= min_transmittance < 1.0:
        raise ParameterError(f"min_transmittance must lie in [0, 1), got {min_transmittance}")
    if min_weight < 0 or round_samples < 1:
        raise ParameterError(
            f"min_weight must be >= 0 and round_samples >= 1, got {min_weight}, {round_samples}"
        )
    origins, dirs, frame_ids = rays.origins, rays.directions, rays.frame_ids.long()
    n_rays = origins.shape[0]
    device = origins.device
    # The reference's samples: bin centres between the ray's entry and exit of its box.
    sampler = avatar.sampler if n_samples is None else TorchSampler(n_samples)
    assert isinstance(sampler, TorchSampler)
    # Only rays with a shell sample do any work: carry those (L of them) through the rounds.
    live, shell, mid, widths = live_samples(avatar, sampler, frames, origins, dirs, frame_ids)
    live_origins, live_dirs, live_frames = origins[live], dirs[live], frame_ids[live]
    skip_by_distance = frames.deformation.triangle_trees is not None
    max_distance = avatar.cfg.deformer.max_distance

    # Per live ray: optical depth so far (float64: sums of many terms), premultiplied
    # colour, opacity, depth sum, and where its next sample may start.
    optical = torch.zeros(len(live), dtype=torch.float64, device=device)
    rgb = origins.new_zeros(len(live), 3)
    opacity = origins.new_zeros(len(live))
    depth_sum = origins.new_zeros(len(live))
    # Where each ray's next sample lies: at or beyond ``skip_to``, and from column
    # ``cursor`` on (the compiled pick) or strictly beyond depth ``after`` (the torch pick).
    skip_to = torch.full((len(live),), -math.inf, device=device)
    compiled = march_kernel.available(device)
    if compiled:
        cursor = torch.zeros(len(live), dtype=torch.int64)
    else:
        after = torch.full((len(live),), -math.inf, device=device)
    max_optical = math.inf if min_transmittance == 0 else -math.log(min_transmittance)
    n_deformed = n_evaluated = n_colored = 0
    # The rays still marching (A of them, indices into the live rays) and their shell
    # samples and depths (A,S): a ray leaves once it is opaque or has nothing left to
    # take (its limits only ever move forward), so each round works on fewer rows.
    active = torch.arange(len(live), device=device)
    active_shell, active_mid = shell, mid
    while active.numel():
        if compiled:
            rows, t, dt, points, active = march_kernel.take_round(
                active,
                shell,
                mid,
                widths,
                cursor,
                skip_to,
                optical,
                max_optical,
                round_samples,
                live_origins,
                live_dirs,
            )
            if rows.numel() == 0:
                break
        else:
            eligible = active_shell & (active_mid > after[active, None])
            eligible &= active_mid >= skip_to[active, None]
            eligible &= (optical[active] < max_optical)[:, None]
            count = eligible.cumsum(dim=1)
            take = eligible & (count <= round_samples)
            local, cols = torch.nonzero(take, as_tuple=True)  # sorted by ray, then depth
            if local.numel() == 0:
                break
            # Rays with more than this round's samples stay for the next round.
            stay = torch.nonzero(count[:, -1] > round_samples).squeeze(1)
            rows = active[local]
            t = active_mid[local, cols]
            dt = widths[rows, cols]
            active, active_shell, active_mid = active[stay], active_shell[stay], active_mid[stay]
            after.scatter_reduce_(0, rows, t, reduce="amax")
            points = live_origins[rows] + live_dirs[rows] * t[:, None]
        n_deformed += int(rows.numel())
        occupied, result = avatar.deform_occupied(
            frames, points, live_frames.index_select(0, rows), orient=False
        )
        if skip_by_distance:
            reach = t + result.distance.to(t.dtype) - max_distance - SKIP_SLACK
            skip_to.scatter_reduce_(0, rows, reach, reduce="amax")
        kept = torch.nonzero(occupied).squeeze(1)
        if kept.numel() == 0:
            continue
        # index_select: the same rows as indexing, several times faster on the CPU.
        points, rows, t, dt = (x.index_select(0, kept) for x in (points, rows, t, dt))
        with fp32_geometry(device):
            result = frames.deformation.refine_to_surface(points, result.subset(kept))
        sigma, geo = avatar.sample_density(frames, points, result)
        n_evaluated += int(kept.numel())
        composite = march_kernel.composite_round if compiled else composite_round
        weights, seen = composite(
            rows, sigma.float() * dt, t, optical, opacity, depth_sum, min_weight
        )
        if seen.numel():
            seen_rows = rows.index_select(0, seen)
            color = avatar.sample_color(
                frames,
                result.subset(seen),
                geo.index_select(0, seen),
                live_dirs.index_select(0, seen_rows),
            )
            rgb.index_add_(0, seen_rows, weights.index_select(0, seen)[:, None] * color.float())
        n_colored += int(seen.numel())
    out_rgb = origins.new_zeros(n_rays, 3).index_copy_(0, live, rgb)
    out_opacity = origins.new_zeros(n_rays).index_copy_(0, live, opacity)
    out_depth = origins.new_zeros(n_rays).index_copy_(0, live, depth_sum)
    out_rgb = avatar.field.apply_camera_affine(out_rgb, out_opacity, rays.camera_ids)
    out_rgb = out_rgb + (1.0 - out_opacity)[:, None] * background.to(out_rgb.dtype)
    return {
        "rgb": out_rgb,
        "opacity": out_opacity,
        "depth": out_depth / out_opacity.clamp_min(torch.finfo(out_opacity.dtype).eps),
        "n_deformed": torch.tensor(n_deformed),
        "n_evaluated": torch.tensor(n_evaluated),
        "n_colored": torch.tensor(n_colored),
    }


def live_samples(
    avatar: HandAvatar,
    sampler: TorchSampler,
    frames: PosedFrames,
    origins: Tensor,
    dirs: Tensor,
    frame_ids: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rays (R of them: ``origins``, ``dirs`` (R,3), ``frame_ids`` (R,)) with a sample
    in their frame's shell grid, ``live`` (L,) in order, and their ``sampler``'s
    evaluation bins (L,S): which lie in the shell, their centres and their widths."""
    if march_kernel.available(origins.device):
        near, far, hit = ray_aabb_intersect(origins, dirs, frames.aabbs[frame_ids])
        start, step = _grid_units(avatar, frames, origins, dirs, frame_ids)
        fractions = sampler.edge_fractions(origins.device, origins.dtype)
        return march_kernel.live_samples(
            near, far, hit, fractions, start, step, frame_ids, frames.shell
        )
    samples = sampler.sample(
        origins, dirs, frame_ids, frames.aabbs, occupied_fn=None, stratified=False
    )
    assert samples.mask is not None
    mid = 0.5 * (samples.t_starts + samples.t_ends)  # (R,S), as SampleBatch.eval_points
    shell = shell_mask(avatar, frames, origins, dirs, frame_ids, mid, samples.mask)
    live = torch.nonzero(shell.any(dim=1)).squeeze(1)
    return live, shell[live], mid[live], (samples.t_ends - samples.t_starts)[live]


def _grid_units(
    avatar: HandAvatar, frames: PosedFrames, origins: Tensor, dirs: Tensor, frame_ids: Tensor
) -> tuple[Tensor, Tensor]:
    """The rays' origins in their frame's shell grid units and their directions in grid
    units per metre (R,3) each: a sample at depth t lies in cell floor(start + t * step)."""
    res = avatar.cfg.shell_resolution
    box = frames.aabbs[frame_ids]  # (R,6)
    scale = res / (box[:, 3:] - box[:, :3])
    return (origins - box[:, :3]) * scale, dirs * scale


def shell_mask(
    avatar: HandAvatar,
    frames: PosedFrames,
    origins: Tensor,
    dirs: Tensor,
    frame_ids: Tensor,
    mid: Tensor,
    mask: Tensor,
) -> Tensor:
    """(R,S) bool: the samples at depths ``mid`` (R,S) along the rays (only where ``mask``
    (R,S)) that lie in their frame's shell grid.

    :meth:`HandAvatar.in_shell` of every sample, without making every sample's point: the
    rays are carried into grid units once (per ray, not per sample), so each sample
    costs a multiply-add per axis and one lookup in the flattened grid.
    """
    res = avatar.cfg.shell_resolution
    start, step = _grid_units(avatar, frames, origins, dirs, frame_ids)
    # Only rays that cross their box (H of them) have samples to test; indices in int32
    # (half the memory traffic of int64; a frame's grid has far fewer than 2^31 cells).
    hit = torch.nonzero(mask.any(dim=1)).squeeze(1)
    cell = torch.addcmul(start[hit, None, :], mid[hit, :, None], step[hit, None, :]).floor_()
    inside = ((cell >= 0) & (cell < res)).all(-1) & mask[hit]  # (H,S)
    cell = cell.clamp_(0, res - 1).to(torch.int32)
    flat = (frame_ids[hit, None].to(torch.int32) * res + cell[..., 0]) * res + cell[..., 1]
    flat = flat * res + cell[..., 2]
    shell = torch.zeros_like(mask)
    shell[hit] = inside & frames.shell.reshape(-1)[flat]
    return shell


def composite_round(
    rows: Tensor,
    sigma_dt: Tensor,
    depths: Tensor,
    optical: Tensor,
    opacity: Tensor,
    depth_sum: Tensor,
    min_weight: float,
) -> tuple[Tensor, Tensor]:
    """Composite one round's n evaluated samples into their rays, in place.

    ``rows`` (n,) their rays (sorted: each ray's samples contiguous, front to back),
    ``sigma_dt`` (n,) float32 optical thickness and ``depths`` (n,); per ray: ``optical``
    float64 optical depth so far, ``opacity`` and ``depth_sum`` float32, all three updated.
    Returns the samples' weights ``T_i (1 - exp(-sigma_i dt_i))`` (n,) float32 and which of
    them exceed ``min_weight`` (k,) int64: those that get a colour.
    """
    before = optical[rows] + _exclusive_segment_sum(sigma_dt.double(), rows)
    weights = torch.exp(-before).to(sigma_dt.dtype) * (1.0 - torch.exp(-sigma_dt))
    opacity.index_add_(0, rows, weights)
    depth_sum.index_add_(0, rows, weights * depths)
    optical.index_add_(0, rows, sigma_dt.double())
    # Colour only where it shows: the rest adds at most min_weight each.
    return weights, torch.nonzero(weights > min_weight).squeeze(1)


def _exclusive_segment_sum(values: Tensor, segments: Tensor) -> Tensor:
    """Per row of ``values`` (M,), the sum of the earlier rows of its segment (``segments``
    (M,) sorted: each segment's rows contiguous)."""
    total = torch.cumsum(values, 0)
    inclusive_before = torch.cat([total.new_zeros(1), total[:-1]])
    new_segment = torch.ones_like(segments, dtype=torch.bool)
    new_segment[1:] = segments[1:] != segments[:-1]
    starts = torch.nonzero(new_segment).squeeze(1)
    # The running total just before each segment's first row, spread over the segment.
    offset = inclusive_before[starts]
    seg_index = torch.cumsum(new_segment.long(), 0) - 1
    return inclusive_before - offset[seg_index]
