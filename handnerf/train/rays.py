"""Ray batches drawn from training views, biased towards the hand.

Most pixels of a hand capture are background; drawing every ray uniformly would spend the
step on black. A fixed share of each batch is drawn from inside the (dilated) hand mask,
the rest uniformly so the background stays empty.

With ``jitter`` each ray goes through a random point of its pixel instead of the centre:
its colour is the image interpolated there and its mask, when a ``silhouette`` function
is given, whether that exact ray hits the hand mesh. Rays through pixel centres pin the
silhouette down only to a pixel of the training resolution, and the field is free to
leave a soft halo between them that shows once it is rendered at a finer one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from handnerf.errors import ParameterError
from handnerf.model.rays import RayBundle, fields_to, pixel_rays
from handnerf.model.renderer import CameraTensors

#: (origins (R,3), unit dirs (R,3), frame_ids (R,)) -> (R,) bool: the ray hits the hand.
SilhouetteFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class ViewStack:
    """All training views of a fit, cropped to one size and stacked.

    images (N,H,W,3) float in [0,1]; masks (N,H,W) bool; K (N,3,3); R (N,3,3); t (N,3) world->camera
    in metres; frame_ids (N,) index into the fit's frames; camera_ids (N,) index into its cameras.
    valid (N,H,W) bool or None (all): the pixels that come from the photograph, not from the
    padding of a crop that reaches past the image's border (a hand cut by the border).
    """

    images: Tensor
    masks: Tensor
    K: Tensor
    R: Tensor
    t: Tensor
    frame_ids: Tensor
    camera_ids: Tensor
    valid: Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def height(self) -> int:
        return int(self.images.shape[1])

    @property
    def width(self) -> int:
        return int(self.images.shape[2])

    def camera(self, i: int) -> CameraTensors:
        """The camera of view ``i`` (for rendering its whole image)."""
        return CameraTensors(
            K=self.K[i], R=self.R[i], t=self.t[i], height=self.height, width=self.width
        )


@dataclass
class RayBatch:
    """Training rays with what they should render.

    rays: the :class:`RayBundle` (R rays, with camera ids); rgb (R,3) target colours in
    [0,1]; mask (R,) bool, whether the ray sees the hand; uncertain (R,) bool or None,
    whether the ray's pixel lies in the band around the given silhouette where the mask
    is not trusted (pose refinement, :func:`handnerf.train.pose_refinement.silhouette_band`).
    """

    rays: RayBundle
    rgb: Tensor
    mask: Tensor
    uncertain: Tensor | None = None

    def __len__(self) -> int:
        return len(self.rays)

    def cat(self, other: RayBatch) -> RayBatch:
        """These rays followed by ``other``'s."""
        uncertain = None
        if self.uncertain is not None and other.uncertain is not None:
            uncertain = torch.cat([self.uncertain, other.uncertain])
        return RayBatch(
            rays=self.rays.cat(other.rays),
            rgb=torch.cat([self.rgb, other.rgb]),
            mask=torch.cat([self.mask, other.mask]),
            uncertain=uncertain,
        )

    def to(self, device: torch.device, non_blocking: bool = False) -> RayBatch:
        """The same batch on ``device``."""
        return fields_to(self, device, non_blocking)


class RaySampler:
    """Draws :class:`RayBatch` es from a :class:`ViewStack` (``fg_fraction`` from the hand).

    In a data-parallel fit each of ``world_size`` ranks holds a sampler with the same
    ``seed``: every one draws the global batch's pixels (and jitter offsets) and keeps the
    ``rank``-th of every ``world_size`` rays, so the ranks' rays together are exactly the
    batch one process would draw, and the generator stays the same on every rank.

    ``uncertain`` (N,H,W) bool, or None: pixels whose mask is not trusted; each batch
    then carries the flag of its rays' pixels (:attr:`RayBatch.uncertain`). With
    ``band_coverage`` (N,H,W) float in [0,1] as well (how much of each pixel the hand
    covers, read from the image), a ray there is instead held to the image's silhouette:
    its mask is whether the coverage at its point (interpolated) exceeds 1/2, and the
    batches carry no flags.
    """

    def __init__(
        self,
        views: ViewStack,
        fg_fraction: float = 0.7,
        dilate: int = 4,
        seed: int = 0,
        jitter: bool = False,
        silhouette: SilhouetteFn | None = None,
        rank: int = 0,
        world_size: int = 1,
        uncertain: Tensor | None = None,
        band_coverage: Tensor | None = None,
    ):
        if band_coverage is not None and band_coverage.shape != views.masks.shape:
            raise ParameterError(
                f"RaySampler: band_coverage {tuple(band_coverage.shape)} must match the "
                f"views' masks {tuple(views.masks.shape)}"
            )
        self.views = views
        self.uncertain = uncertain
        self.band_coverage = band_coverage
        self.rank = rank
        self.world_size = world_size
        self.fg_fraction = fg_fraction
        self.jitter = jitter
        self.silhouette = silhouette
        self.generator = torch.Generator().manual_seed(seed)
        masks = views.masks.float().unsqueeze(1)
        if dilate > 0:
            masks = torch.nn.functional.max_pool2d(masks, 2 * dilate + 1, stride=1, padding=dilate)
        near_hand = masks.reshape(-1) > 0.5
        # A crop's padding is black, but the hand may go on there: it is not drawn from.
        self.valid_index: Tensor | None = None
        if views.valid is not None and not bool(views.valid.all()):
            valid = views.valid.reshape(-1)
            near_hand = near_hand & valid
            self.valid_index = torch.nonzero(valid).squeeze(1)
        # Flat indices (view * H * W + pixel) of every pixel near the hand.
        self.fg_index = torch.nonzero(near_hand).squeeze(1)

    def sample(self, n_rays: int) -> RayBatch:
        """This rank's share (``n_rays / world_size`` rays) of a global batch of ``n_rays``."""
        views, g = self.views, self.generator
        hw = views.height * views.width
        n_fg = round(n_rays * self.fg_fraction) if self.fg_index.numel() else 0
        fg = (
            self.fg_index[torch.randint(self.fg_index.numel(), (n_fg,), generator=g)]
            if n_fg
            else None
        )
        if self.valid_index is None:
            uni = torch.randint(len(views) * hw, (n_rays - n_fg,), generator=g)
        else:
            pick = torch.randint(self.valid_index.numel(), (n_rays - n_fg,), generator=g)
            uni = self.valid_index[pick]
        flat = uni if fg is None else torch.cat([fg, uni])
        offset = torch.rand(len(flat), 2, generator=g) if self.jitter else None
        mine = slice(self.rank, None, self.world_size)
        return self.rays_at(flat[mine], None if offset is None else offset[mine])

    def gather(self, flat: Tensor, jitter: bool = False) -> RayBatch:
        """Rays of the given flat pixel indices (view * H * W + row * W + col), through
        the pixel centres or (``jitter``) a random point of each pixel."""
        offset = torch.rand(len(flat), 2, generator=self.generator) if jitter else None
        return self.rays_at(flat, offset)

    def rays_at(self, flat: Tensor, offset: Tensor | None) -> RayBatch:
        """Rays of flat pixel indices (R,) through the pixel centres, or with ``offset``
        (R,2) in [0,1) through that point of each pixel."""
        views = self.views
        hw = views.height * views.width
        view = flat // hw
        pix = flat % hw
        v, u = pix // views.width, pix % views.width
        if offset is None:
            origins, dirs = pixel_rays(views.K[view], views.R[view], views.t[view], u, v)
            rgb, mask = views.images[view, v, u], views.masks[view, v, u]
            coverage = None if self.band_coverage is None else self.band_coverage[view, v, u]
        else:
            origins, dirs = pixel_rays(views.K[view], views.R[view], views.t[view], u, v, offset)
            # Pixel centres sit at +0.5: the sample point relative to the centre grid.
            x = u.to(offset.dtype) + offset[:, 0] - 0.5
            y = v.to(offset.dtype) + offset[:, 1] - 0.5
            rgb = _bilinear(views.images, view, x, y)
            coverage = None
            if self.band_coverage is not None:
                coverage = _bilinear(self.band_coverage.unsqueeze(-1), view, x, y)[:, 0]
            if self.silhouette is not None:
                mask = self.silhouette(origins, dirs, views.frame_ids[view]).to(torch.bool)
            else:
                mask = _bilinear(views.masks.unsqueeze(-1), view, x, y)[:, 0] > 0.5
        rays = RayBundle(
            origins=origins,
            directions=dirs,
            frame_ids=views.frame_ids[view],
            camera_ids=views.camera_ids[view],
        )
        uncertain = None if self.uncertain is None else self.uncertain[view, v, u]
        if uncertain is not None and coverage is not None:
            mask = torch.where(uncertain, coverage > 0.5, mask)
            uncertain = None
        return RayBatch(rays=rays, rgb=rgb, mask=mask, uncertain=uncertain)

    def sample_patches(self, n_patches: int, size: int) -> tuple[RayBatch, int]:
        """``n_patches`` square patches of ``size`` px centred on hand pixels (for LPIPS),
        of which this rank keeps every ``world_size``-th.

        Returns rays ordered patch-major then row-major, and the patch size.
        """
        views, g = self.views, self.generator
        hw = views.height * views.width
        centre = self.fg_index[torch.randint(self.fg_index.numel(), (n_patches,), generator=g)]
        centre = centre[self.rank :: self.world_size]
        view = centre // hw
        cy = ((centre % hw) // views.width).clamp(size // 2, views.height - size + size // 2)
        cx = ((centre % hw) % views.width).clamp(size // 2, views.width - size + size // 2)
        dy, dx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        rows = (cy - size // 2)[:, None, None] + dy
        cols = (cx - size // 2)[:, None, None] + dx
        flat = view[:, None, None] * hw + rows * views.width + cols
        return self.gather(flat.reshape(-1)), size


def _bilinear(images: Tensor, view: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """images (N,H,W,C) (any dtype: only the four corners are converted) sampled at
    continuous (x, y) (R,) of views ``view`` (R,) -> float (R,C); integer coordinates are
    pixel centres, borders are clamped."""
    height, width = images.shape[1], images.shape[2]
    x = x.clamp(0, width - 1)
    y = y.clamp(0, height - 1)
    x0 = x.floor().long().clamp(max=width - 2) if width > 1 else x.floor().long()
    y0 = y.floor().long().clamp(max=height - 2) if height > 1 else y.floor().long()
    x1 = (x0 + 1).clamp(max=width - 1)
    y1 = (y0 + 1).clamp(max=height - 1)
    fx = (x - x0.to(x.dtype))[:, None]
    fy = (y - y0.to(y.dtype))[:, None]

    def corner(rows: Tensor, cols: Tensor) -> Tensor:
        return images[view, rows, cols].to(x.dtype)

    top = corner(y0, x0) * (1 - fx) + corner(y0, x1) * fx
    bottom = corner(y1, x0) * (1 - fx) + corner(y1, x1) * fx
    return top * (1 - fy) + bottom * fy
