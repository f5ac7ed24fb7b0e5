"""Volume rendering of samples: batched ``(R,S)`` (any device) and packed (nerfacc layout).

Both use nerfacc's ``render_weight_from_density`` (``w_i = T_i (1 - exp(-sigma_i dt_i))``)
and ``accumulate_along_rays``. nerfacc's packed scans are compiled kernels; where they do
not run (:func:`~handnerf.model.kernels.nerfacc_kernels`), the packed path uses an exact
segmented cumulative sum instead.

Early ray termination (:func:`visible_samples`): samples behind an opaque part of their
ray (transmittance below ``early_stop_eps``) add nothing visible; their density is known
before the colour, so the colour need not be computed for them.

Colour correction (e.g. :class:`~handnerf.model.field.CameraColorAffine`) acts on the
premultiplied colour before the background is composited:
``rgb = correct(sum w_i c_i, opacity) + (1 - opacity) * background``.
"""

from __future__ import annotations

from collections.abc import Callable

import nerfacc
import torch
from torch import Tensor

from handnerf.errors import ParameterError
from handnerf.model.kernels import nerfacc_kernels
from handnerf.model.sampler import SampleBatch

#: (premultiplied rgb (R,3), opacity (R,)) -> corrected premultiplied rgb (R,3).
ColorCorrection = Callable[[Tensor, Tensor], Tensor]
#: (rows (K,) of the evaluated samples) -> their rgb (K,3): a colour computed on demand.
DeferredColor = Callable[[Tensor], Tensor]
#: (points (M,3) posed metres, ray_ids (M,)) -> sigma (M,) and rgb (M,3), or sigma and a
#: :data:`DeferredColor` (see :func:`render_samples`).
RadianceFn = Callable[[Tensor, Tensor], tuple[Tensor, "Tensor | DeferredColor"]]


def _finish(
    rgb_premult: Tensor,
    opacity: Tensor,
    depth_sum: Tensor,
    weights: Tensor,
    background: Tensor | None,
    color_correction: ColorCorrection | None,
) -> dict[str, Tensor]:
    n_rays = rgb_premult.shape[0]
    if color_correction is not None:
        rgb_premult = color_correction(rgb_premult, opacity)
    rgb = rgb_premult
    if background is not None:
        if background.shape not in ((3,), (n_rays, 3)):
            raise ParameterError(
                f"render: background must have shape (3,) or ({n_rays},3), got {tuple(background.shape)}"
            )
        rgb = rgb + (1.0 - opacity)[:, None] * background.to(rgb.dtype)
    depth = depth_sum / opacity.clamp_min(torch.finfo(opacity.dtype).eps)
    return {"rgb": rgb, "opacity": opacity, "depth": depth, "weights": weights}


def _composite(
    weights: Tensor,
    rgbs: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    background: Tensor | None,
    color_correction: ColorCorrection | None,
    ray_indices: Tensor | None = None,
    n_rays: int | None = None,
) -> dict[str, Tensor]:
    """Accumulate colour, opacity and depth of the samples' ``weights`` along their rays
    and finish them: batched (weights (R,S), rgbs (R,S,3)) or, with ``ray_indices`` (M,)
    and ``n_rays``, packed (weights (M,), rgbs (M,3))."""

    def along_rays(values: Tensor | None) -> Tensor:
        return nerfacc.accumulate_along_rays(
            weights, values=values, ray_indices=ray_indices, n_rays=n_rays
        )

    mid = 0.5 * (t_starts + t_ends)
    rgb = along_rays(rgbs)
    opacity = along_rays(None)[:, 0]
    depth_sum = along_rays(mid[..., None])[:, 0]
    return _finish(rgb, opacity, depth_sum, weights, background, color_correction)


def render_batched(
    sigmas: Tensor,
    rgbs: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    background: Tensor | None = None,
    color_correction: ColorCorrection | None = None,
) -> dict[str, Tensor]:
    """sigmas (R,S), rgbs (R,S,3), t_starts/t_ends (R,S), background (R,3)|(3,)|None (black).

    Returns rgb (R,3) composited, opacity (R,), depth (R,) (expected depth of the hit part,
    0 for empty rays), weights (R,S).
    """
    if sigmas.ndim != 2 or rgbs.shape != (*sigmas.shape, 3):
        raise ParameterError(
            f"render_batched: sigmas (R,S) and rgbs (R,S,3) expected, got {tuple(sigmas.shape)}, {tuple(rgbs.shape)}"
        )
    if t_starts.shape != sigmas.shape or t_ends.shape != sigmas.shape:
        raise ParameterError("render_batched: t_starts, t_ends must have the shape of sigmas (R,S)")
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    return _composite(weights, rgbs, t_starts, t_ends, background, color_correction)


def _packed_transmittance_cpu(sigmas_dt: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """exp(-exclusive per-ray cumsum) of samples sorted by ray, in float64 for exactness."""
    total = torch.cumsum(sigmas_dt.double(), dim=0)
    counts = torch.bincount(ray_indices, minlength=n_rays)
    ends = torch.cumsum(counts, dim=0)
    # Sum of everything before each ray's first sample, subtracted per sample.
    before_ray = torch.cat([total.new_zeros(1), total])[ends - counts]
    exclusive = total - sigmas_dt.double() - before_ray[ray_indices]
    return torch.exp(-exclusive).to(sigmas_dt.dtype)


def packed_transmittance(
    sigmas: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, n_rays: int
) -> tuple[Tensor, Tensor]:
    """Transmittance and alpha (M,) of packed samples sorted by ray (all (M,)), with
    nerfacc's kernels where they run, else the exact segmented sum; differentiable."""
    if nerfacc_kernels(sigmas.device):
        # The kernels read float32 (an fp16 density under autocast would be misread).
        trans, alphas = nerfacc.render_transmittance_from_density(
            t_starts.float(), t_ends.float(), sigmas.float(), ray_indices=ray_indices, n_rays=n_rays
        )
        return trans, alphas
    sigmas_dt = sigmas * (t_ends - t_starts)
    return _packed_transmittance_cpu(sigmas_dt, ray_indices, n_rays), 1.0 - torch.exp(-sigmas_dt)


@torch.no_grad()
def visible_samples(samples: SampleBatch, sigmas: Tensor, early_stop_eps: float) -> Tensor:
    """(M,) bool over the evaluated samples of ``samples`` (in ``eval_points`` order):
    those whose transmittance, from the densities ``sigmas`` (M,) of all of them, is at
    least ``early_stop_eps``. The samples behind them carry weights below it."""
    if samples.ray_indices is not None:
        trans, _ = packed_transmittance(
            sigmas, samples.t_starts, samples.t_ends, samples.ray_indices.long(), samples.n_rays
        )
        return trans >= early_stop_eps
    assert samples.mask is not None
    dense = torch.zeros(samples.mask.shape, dtype=torch.float32, device=sigmas.device)
    dense = dense.masked_scatter(samples.mask, sigmas.float())
    trans, _ = nerfacc.render_transmittance_from_density(samples.t_starts, samples.t_ends, dense)
    return trans[samples.mask] >= early_stop_eps


def render_packed(
    sigmas: Tensor,
    rgbs: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    background: Tensor | None = None,
    color_correction: ColorCorrection | None = None,
) -> dict[str, Tensor]:
    """Packed samples sorted by ray: sigmas, t_starts, t_ends, ray_indices (M,), rgbs (M,3).

    Returns rgb (R,3), opacity (R,), depth (R,), weights (M,).
    """
    m = sigmas.shape[0]
    if sigmas.shape != (m,) or rgbs.shape != (m, 3) or ray_indices.shape != (m,):
        raise ParameterError(
            "render_packed: sigmas (M,), rgbs (M,3), ray_indices (M,) expected, got "
            f"{tuple(sigmas.shape)}, {tuple(rgbs.shape)}, {tuple(ray_indices.shape)}"
        )
    ray_indices = ray_indices.long()
    trans, alphas = packed_transmittance(sigmas, t_starts, t_ends, ray_indices, n_rays)
    weights = trans * alphas
    return _composite(
        weights, rgbs, t_starts, t_ends, background, color_correction, ray_indices, n_rays
    )


def render_samples(
    samples: SampleBatch,
    origins: Tensor,
    dirs: Tensor,
    radiance_fn: RadianceFn,
    background: Tensor | None = None,
    color_correction: ColorCorrection | None = None,
    color_min_weight: float = 0.0,
) -> dict[str, Tensor]:
    """Evaluate ``radiance_fn`` where ``samples`` need it and render, whatever the layout.

    origins, dirs (R,3). In the batched layout unevaluated samples have sigma 0. Returns
    the dict of :func:`render_batched` / :func:`render_packed`, plus "n_evaluated".

    When ``radiance_fn`` returns a :data:`DeferredColor` instead of the colours, the
    weights come first and only the samples whose weight exceeds ``color_min_weight`` get
    a colour (the others count as black: each would have changed its pixel by at most
    that weight). Gradients are exact but for those dropped terms.
    """
    points, ray_ids = samples.eval_points(origins, dirs)
    if points.shape[0]:
        sigma, rgb = radiance_fn(points, ray_ids)
    else:
        # No sample to evaluate: skip the field (an empty forward can trip some backends).
        sigma = points.new_zeros(0)
        rgb = points.new_zeros(0, 3)
    if not isinstance(rgb, Tensor):
        out = _render_deferred(samples, sigma, rgb, color_min_weight, background, color_correction)
    elif samples.ray_indices is not None:
        out = render_packed(
            sigma,
            rgb,
            samples.t_starts,
            samples.t_ends,
            samples.ray_indices,
            samples.n_rays,
            background,
            color_correction,
        )
    else:
        assert samples.mask is not None
        sigmas = torch.zeros(samples.mask.shape, dtype=sigma.dtype, device=sigma.device)
        rgbs = torch.zeros((*samples.mask.shape, 3), dtype=rgb.dtype, device=rgb.device)
        sigmas = sigmas.masked_scatter(samples.mask, sigma)
        rgbs = rgbs.masked_scatter(samples.mask[..., None].expand_as(rgbs), rgb)
        out = render_batched(
            sigmas, rgbs, samples.t_starts, samples.t_ends, background, color_correction
        )
    out["n_evaluated"] = torch.tensor(points.shape[0])
    return out


def _render_deferred(
    samples: SampleBatch,
    sigma: Tensor,
    color_of: DeferredColor,
    min_weight: float,
    background: Tensor | None,
    color_correction: ColorCorrection | None,
) -> dict[str, Tensor]:
    """:func:`render_samples` for a deferred colour: the weights of the (M,) evaluated
    samples' densities ``sigma``, then the colour of those above ``min_weight`` only."""
    if samples.ray_indices is not None:
        ray_indices = samples.ray_indices.long()
        trans, alphas = packed_transmittance(
            sigma, samples.t_starts, samples.t_ends, ray_indices, samples.n_rays
        )
        weights = trans * alphas
        seen_weights = weights
    else:
        assert samples.mask is not None
        sigmas = torch.zeros(samples.mask.shape, dtype=sigma.dtype, device=sigma.device)
        sigmas = sigmas.masked_scatter(samples.mask, sigma)
        weights, _, _ = nerfacc.render_weight_from_density(samples.t_starts, samples.t_ends, sigmas)
        seen_weights = weights[samples.mask]
    rows = torch.nonzero(seen_weights.detach() > min_weight).squeeze(1)
    colours = color_of(rows)
    rgb = colours.new_zeros(sigma.shape[0], 3).index_put((rows,), colours)
    if samples.ray_indices is not None:
        return _composite(
            weights,
            rgb,
            samples.t_starts,
            samples.t_ends,
            background,
            color_correction,
            ray_indices,
            samples.n_rays,
        )
    assert samples.mask is not None
    rgbs = rgb.new_zeros((*samples.mask.shape, 3))
    rgbs = rgbs.masked_scatter(samples.mask[..., None].expand_as(rgbs), rgb)
    return _composite(weights, rgbs, samples.t_starts, samples.t_ends, background, color_correction)
