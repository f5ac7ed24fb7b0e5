"""Evaluation protocols of the published hand-avatar systems, and our own.

Papers disagree on how they crop, where they measure and which LPIPS network they use
(crop vs full frame, masked vs not, AlexNet vs VGG), so their numbers are
only comparable under the same protocol. A report always names the protocol it used.

Every protocol composites renders and ground truth on black. ``metric_region`` says
where PSNR and SSIM are measured; LPIPS always sees the whole evaluated image (a
convolutional network has no notion of a pixel mask), with the background black.

Padding is never scored. A hand crop can reach past the camera image; those pixels hold
black padding, not a photograph, so a render there must not be compared against them.
Every protocol excludes them (see :mod:`handnerf.evaluation.scoring`); a protocol whose
paper drops such frames instead (HandAvatar's border filter) also drops them, with
``border_filter_px``. Full-frame protocols have no padding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from handnerf.errors import ConfigError

ImageMode = Literal["crop", "full"]
MetricRegion = Literal["crop", "image", "mask"]
LpipsNet = Literal["alex", "vgg"]


@dataclass(frozen=True)
class EvalProtocol:
    """How images are prepared and where metrics are measured.

    Attributes:
        name: preset name (``get_protocol`` key).
        description: one line for reports.
        image_mode: ``"crop"``: a square crop around the hand's bounding box, resized
            to ``crop_size``; ``"full"``: the whole camera frame, scaled by
            ``image_scale``.
        crop_scale: side of the square crop as a multiple of the bbox's longer side
            (``"crop"`` only).
        crop_size: output side of the crop in pixels (``"crop"`` only).
        image_scale: resize factor of the full frame (``"full"`` only; 1 = native, e.g.
            334x512 for InterHand2.6M).
        metric_region: where PSNR and SSIM are averaged: ``"crop"`` the whole crop,
            ``"image"`` the whole frame, ``"mask"`` only the hand mask's pixels.
        lpips_net: backbone of the LPIPS score (``"alex"`` or ``"vgg"``).
        background: RGB in [0, 1] that renders and ground truth are composited on.
        source: where the protocol comes from.
        border_filter_px: drop a view when the hand's bbox (from its mask) comes within
            this many pixels of the image border, as the protocol's paper does (HandAvatar:
            10); None keeps every view and only masks the crop's padding out.
    """

    name: str
    description: str
    image_mode: ImageMode
    metric_region: MetricRegion
    lpips_net: LpipsNet
    crop_scale: float | None = None
    crop_size: int | None = None
    image_scale: float = 1.0
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    source: str = ""
    border_filter_px: float | None = None

    def __post_init__(self) -> None:
        if self.image_mode == "crop":
            if self.crop_scale is None or self.crop_size is None:
                raise ConfigError(f"protocol {self.name}: a crop needs crop_scale and crop_size")
            if self.metric_region == "image":
                raise ConfigError(
                    f"protocol {self.name}: metric_region 'image' is for full frames; "
                    "use 'crop' or 'mask'"
                )
        elif self.image_mode == "full":
            if self.metric_region == "crop":
                raise ConfigError(
                    f"protocol {self.name}: metric_region 'crop' needs image_mode 'crop'"
                )
            if not 0.0 < self.image_scale <= 1.0:
                raise ConfigError(
                    f"protocol {self.name}: image_scale must be in (0, 1], got {self.image_scale}"
                )
        else:
            raise ConfigError(f"protocol {self.name}: unknown image_mode {self.image_mode!r}")
        if self.lpips_net not in ("alex", "vgg"):
            raise ConfigError(f"protocol {self.name}: unknown lpips_net {self.lpips_net!r}")
        if self.border_filter_px is not None and self.border_filter_px < 0:
            raise ConfigError(
                f"protocol {self.name}: border_filter_px must be >= 0, got {self.border_filter_px}"
            )

    @property
    def uses_mask(self) -> bool:
        """Whether PSNR and SSIM are restricted to the hand mask."""
        return self.metric_region == "mask"

    @property
    def region_text(self) -> str:
        """Human-readable metric region for reports."""
        return {
            "crop": f"whole {self.crop_size}x{self.crop_size} crop less any padding past the "
            "image border, black background",
            "image": "whole image, black background",
            "mask": "inside the hand mask (LPIPS on the whole image, black background)",
        }[self.metric_region]

    @property
    def padding_text(self) -> str:
        """Human-readable handling of crop pixels outside the camera image."""
        if self.image_mode == "full":
            return "full frames have no padding"
        masked = "crop pixels outside the camera image are excluded from every metric"
        if self.border_filter_px is None:
            return f"{masked}; no view is dropped"
        return (
            f"views whose hand bbox is within {self.border_filter_px:g} px of the image border "
            f"are dropped (the paper's filter); in the views kept, {masked}"
        )

    @property
    def image_text(self) -> str:
        """Human-readable image handling for reports."""
        if self.image_mode == "crop":
            return (
                f"square crop {self.crop_scale:g}x the hand bbox, resized to "
                f"{self.crop_size}x{self.crop_size}"
            )
        if self.image_scale == 1.0:
            return "full frame at native resolution"
        return f"full frame scaled by {self.image_scale:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields, plus the readable region and image texts."""
        data = dataclasses.asdict(self)
        data["background"] = list(self.background)
        data["region_text"] = self.region_text
        data["image_text"] = self.image_text
        data["padding_text"] = self.padding_text
        return data


PROTOCOLS: dict[str, EvalProtocol] = {
    protocol.name: protocol
    for protocol in (
        EvalProtocol(
            name="handavatar",
            description="HandAvatar (CVPR'23): 256x256 hand crop (bbox x1.3), "
            "metrics over the whole crop, LPIPS-VGG; drops views whose hand bbox is within "
            "10 px of the image border (its frame filter), and excludes any crop padding "
            "left in the views kept",
            image_mode="crop",
            crop_scale=1.3,
            crop_size=256,
            metric_region="crop",
            lpips_net="vgg",
            source="HandAvatar, Chen et al. CVPR 2023",
            border_filter_px=10.0,
        ),
        EvalProtocol(
            name="livehand",
            description="LiveHand (ICCV'23): full 512x334 frame, black background, LPIPS-Alex; "
            "full frames have no padding",
            image_mode="full",
            image_scale=1.0,
            metric_region="image",
            lpips_net="alex",
            source="LiveHand, Mundra et al. ICCV 2023",
        ),
        EvalProtocol(
            name="handnerf",
            description="HandNeRF (CVPR'23): full frame at half resolution, black outside "
            "the hand, LPIPS-Alex; full frames have no padding",
            image_mode="full",
            image_scale=0.5,
            metric_region="image",
            lpips_net="alex",
            source="HandNeRF, Guo et al. CVPR 2023",
        ),
        EvalProtocol(
            name="xhand",
            description="XHand (2024): full 334x512 frame, PSNR/SSIM inside the hand mask, "
            "LPIPS-Alex; full frames have no padding",
            image_mode="full",
            image_scale=1.0,
            metric_region="mask",
            lpips_net="alex",
            source="XHand, Gan et al. 2024",
        ),
        EvalProtocol(
            name="handnerf-default",
            description="handnerf default: 256x256 hand crop (bbox x1.3), PSNR/SSIM inside "
            "the hand mask, LPIPS-Alex on the black-background crop; crop pixels outside the "
            "camera image are excluded from every metric (no view dropped)",
            image_mode="crop",
            crop_scale=1.3,
            crop_size=256,
            metric_region="mask",
            lpips_net="alex",
            source="this toolkit",
        ),
    )
}

DEFAULT_PROTOCOL = "handnerf-default"


def get_protocol(name: str) -> EvalProtocol:
    """The preset called ``name``; raises :class:`ConfigError` listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ConfigError(
            f"unknown evaluation protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}"
        ) from None
