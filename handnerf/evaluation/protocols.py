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

Each published protocol is done the way its released code does it (see
docs/data.md, "What each protocol computes"): HandNeRF zeroes both images outside the
projected 3D box of the posed hand and scores the whole frame; LiveHand's LPIPS is also
given x1000 (its paper's scale); HandAvatar drops views with its frame filters; XHand's
code computes ``28*log10(1/sqrt(MSE))`` over its predicted mask, which a report gives next
to the correct ``20*log10`` value, labelled as such. Every report also gives the
inside-the-hand-mask numbers, whatever the protocol.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from handnerf.config import lookup
from handnerf.data.filters import FrameFilterConfig
from handnerf.errors import ConfigError

ImageMode = Literal["crop", "full"]
MetricRegion = Literal["crop", "image", "mask"]
LpipsNet = Literal["alex", "vgg"]

#: What :class:`~handnerf.metrics.perceptual.PerceptualMetric` feeds LPIPS (it calls
#: the network with ``normalize=True`` on images in [0, 1]).
LPIPS_INPUT_TEXT = "[0, 1] with normalize=True (LPIPS maps it to [-1, 1])"
#: Where the inside-mask numbers every report carries are measured.
INSIDE_MASK_TEXT = (
    "inside the ground-truth hand mask: PSNR/SSIM over its pixels, LPIPS on both images "
    "set to 0 outside it"
)


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
        frame_filters: also drop views with the paper's other frame filters (HandAvatar:
            hand bbox under 80 px, image too dark, grayscale, mask under 3000 px; the
            thresholds of :class:`~handnerf.data.filters.FrameFilterConfig`).
        zero_outside_box: set render and ground truth to 0 outside the projected 3D
            bounding box of the posed hand before scoring (HandNeRF's code).
        box_padding_m: margin added to each side of that 3D box, metres.
        lpips_scale: also report LPIPS multiplied by this (LiveHand's tables: 1000).
        xhand_code_psnr: also report XHand's code value: ``28*log10(1/sqrt(MSE))`` with
            both images zeroed outside the predicted mask and the MSE over its pixels.
        paper_lpips_input: what the paper's released code feeds LPIPS, for the report.
        cameras_note: which cameras the protocol evaluates, when the paper leaves it open.
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
    frame_filters: bool = False
    zero_outside_box: bool = False
    box_padding_m: float = 0.0
    lpips_scale: float | None = None
    xhand_code_psnr: bool = False
    paper_lpips_input: str = ""
    cameras_note: str = ""

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
        if self.box_padding_m < 0:
            raise ConfigError(
                f"protocol {self.name}: box_padding_m must be >= 0, got {self.box_padding_m}"
            )
        if self.lpips_scale is not None and self.lpips_scale <= 0:
            raise ConfigError(
                f"protocol {self.name}: lpips_scale must be > 0, got {self.lpips_scale}"
            )

    @property
    def uses_mask(self) -> bool:
        """Whether PSNR and SSIM are restricted to the hand mask."""
        return self.metric_region == "mask"

    @property
    def region_text(self) -> str:
        """Human-readable metric region for reports."""
        if self.zero_outside_box:
            return (
                "whole image, black background, with render and ground truth both set to 0 "
                f"outside the projected 3D box of the posed hand (padded {self.box_padding_m:g} m)"
            )
        return {
            "crop": f"whole {self.crop_size}x{self.crop_size} crop less any padding past the "
            "image border, black background",
            "image": "whole image, black background",
            "mask": "inside the hand mask (LPIPS on the whole image, black background)",
        }[self.metric_region]

    @property
    def formula_text(self) -> str:
        """Human-readable formulas of the protocol's numbers."""
        text = (
            "PSNR = 20*log10(1/sqrt(MSE)) (= 10*log10(1/MSE)), MSE over the RGB values of the "
            "region's pixels; SSIM: Gaussian window 11, sigma 1.5, averaged over the region; "
            "LPIPS: the whole evaluated image"
        )
        if self.lpips_scale is not None:
            text += f"; LPIPS also given x{self.lpips_scale:g} (the paper's scale)"
        if self.xhand_code_psnr:
            text += (
                "; also XHand-code-compatible PSNR = 28*log10(1/sqrt(MSE)) with both images "
                "set to 0 outside the predicted mask (render non-black) and the MSE over that "
                "mask's pixels (hand pixels the render misses are not counted; 28/20 = 1.4x "
                "the correct dB value)"
            )
        return text

    @property
    def lpips_input_text(self) -> str:
        """The LPIPS input range we use, and the paper code's when it differs."""
        if not self.paper_lpips_input:
            return LPIPS_INPUT_TEXT
        return f"{LPIPS_INPUT_TEXT}; the paper's code: {self.paper_lpips_input}"

    def frame_filter_config(self) -> FrameFilterConfig | None:
        """The filters that drop views under this protocol, or None when none do."""
        if not self.frame_filters:
            if self.border_filter_px is None:
                return None
            return FrameFilterConfig(
                min_bbox_px=None,
                border_margin_px=self.border_filter_px,
                min_max_intensity=None,
                drop_grayscale=False,
                min_mask_px=None,
            )
        return FrameFilterConfig(border_margin_px=self.border_filter_px)

    @property
    def padding_text(self) -> str:
        """Human-readable handling of crop pixels outside the camera image."""
        if self.image_mode == "full":
            return "full frames have no padding"
        masked = "crop pixels outside the camera image are excluded from every metric"
        if self.border_filter_px is None:
            return f"{masked}; no view is dropped"
        others = (
            " or that fail its other frame filters (bbox under 80 px, too dark, grayscale, "
            "mask under 3000 px)"
            if self.frame_filters
            else ""
        )
        return (
            f"views whose hand bbox is within {self.border_filter_px:g} px of the image border"
            f"{others} are dropped (the paper's filters); in the views kept, {masked}"
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
        data["formula_text"] = self.formula_text
        data["lpips_input_text"] = self.lpips_input_text
        return data


def _hand_crop(**fields: Any) -> EvalProtocol:
    """A protocol on HandAvatar's hand crop: 256x256, the bbox's longer side x1.3."""
    return EvalProtocol(image_mode="crop", crop_scale=1.3, crop_size=256, **fields)


def _full_frame(**fields: Any) -> EvalProtocol:
    """A protocol on the whole camera frame (scaled by ``image_scale``)."""
    return EvalProtocol(image_mode="full", **fields)


PROTOCOLS: dict[str, EvalProtocol] = {
    protocol.name: protocol
    for protocol in (
        _hand_crop(
            name="handavatar",
            description="HandAvatar (CVPR'23): 256x256 hand crop (bbox x1.3), "
            "metrics over the whole crop, LPIPS-VGG; drops views whose hand bbox is within "
            "10 px of the image border or that fail its other frame filters (bbox under "
            "80 px, too dark, grayscale, mask under 3000 px), and excludes any crop padding "
            "left in the views kept",
            metric_region="crop",
            lpips_net="vgg",
            source="HandAvatar, Chen et al. CVPR 2023",
            border_filter_px=10.0,
            frame_filters=True,
            paper_lpips_input="rescaled to [-1, 1]",
        ),
        _full_frame(
            name="livehand",
            description="LiveHand (ICCV'23): full 512x334 frame, black background, LPIPS-Alex "
            "(also x1000, its paper's scale); full frames have no padding",
            image_scale=1.0,
            metric_region="image",
            lpips_net="alex",
            source="LiveHand, Mundra et al. ICCV 2023",
            lpips_scale=1000.0,
            paper_lpips_input="[0, 1] without normalize=True",
        ),
        _full_frame(
            name="handnerf",
            description="HandNeRF (CVPR'23): full frame at half resolution, black background, "
            "both images set to 0 outside the projected 3D box of the posed hand, PSNR over "
            "the whole frame, LPIPS-Alex; full frames have no padding",
            image_scale=0.5,
            metric_region="image",
            lpips_net="alex",
            source="HandNeRF, Guo et al. CVPR 2023",
            zero_outside_box=True,
            # Animatable NeRF's default box_padding, which HandNeRF's code base inherits.
            box_padding_m=0.05,
            paper_lpips_input="[0, 1] with normalize=True",
            cameras_note="HandNeRF's 10 training / 18 test camera ids are not public; "
            "novel_view uses this run's held-out cameras (listed under cameras)",
        ),
        _full_frame(
            name="xhand",
            description="XHand (2024): full 334x512 frame, PSNR/SSIM inside the hand mask "
            "(correct 20*log10 PSNR; XHand's 28*log10 code value given apart, labelled), "
            "LPIPS-Alex; full frames have no padding",
            image_scale=1.0,
            metric_region="mask",
            lpips_net="alex",
            source="XHand, Gan et al. 2024",
            xhand_code_psnr=True,
            paper_lpips_input="[0, 1] without normalize=True",
        ),
        _hand_crop(
            name="handnerf-default",
            description="handnerf default: 256x256 hand crop (bbox x1.3), PSNR/SSIM inside "
            "the hand mask, LPIPS-Alex on the black-background crop; crop pixels outside the "
            "camera image are excluded from every metric (no view dropped)",
            metric_region="mask",
            lpips_net="alex",
            source="this toolkit",
        ),
    )
}

DEFAULT_PROTOCOL = "handnerf-default"


def get_protocol(name: str) -> EvalProtocol:
    """The preset called ``name``; raises :class:`ConfigError` listing the known ones."""
    return lookup(PROTOCOLS, name, "evaluation protocol")
