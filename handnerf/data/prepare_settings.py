"""``handnerf prepare``'s settings: a protocol file's ``prepare:`` section -> a PrepareSpec.

Shared by the ``prepare`` command (flags over a protocol file) and ``handnerf batch``
(a plan's ``prepare:`` section plus each entry's selection), so both read the same keys
with the same defaults and errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from handnerf.data.crops import CropConfig
from handnerf.data.filters import FrameFilterConfig
from handnerf.data.prepare import PrepareSpec
from handnerf.errors import ConfigError

#: Keys a protocol file's ``prepare:`` section may set (the flags' names).
PROTOCOL_KEYS: tuple[str, ...] = (
    "split",
    "capture",
    "seqs",
    "hand",
    "cameras",
    "exclude_cameras",
    "stride",
    "crop",
    "scale",
    "filters",
    "refine_masks",
    "drop_grayscale_cameras",
)
#: The keys that select what to prepare (the rest say how).
SELECTION_KEYS: tuple[str, ...] = ("split", "capture", "seqs", "hand")


def parse_crop(text: str) -> tuple[float, int]:
    """``'1.3:256'`` -> ``(1.3, 256)``; ConfigError otherwise."""
    try:
        scale_text, size_text = str(text).split(":")
        scale, size = float(scale_text), int(size_text)
    except ValueError as exc:
        raise ConfigError(f"--crop must look like SCALE:SIZE (e.g. 1.3:256), got {text!r}") from exc
    if scale <= 0 or size < 1:
        raise ConfigError(f"--crop scale and size must be positive, got {text!r}")
    return scale, size


def load_protocol(path: Path) -> dict[str, Any]:
    """The ``prepare:`` section of a protocol YAML, checked against :data:`PROTOCOL_KEYS`."""
    import yaml

    try:
        content = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"protocol file not found: {path}") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    section = content.get("prepare") if isinstance(content, dict) else None
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: no 'prepare:' section")
    check_keys(section, str(path))
    return section


def check_keys(
    settings: Mapping[str, Any], where: str, keys: tuple[str, ...] = PROTOCOL_KEYS
) -> None:
    """ConfigError naming ``where`` when ``settings`` has a key outside ``keys``."""
    unknown = sorted(set(settings) - set(keys))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) prepare.{', prepare.'.join(unknown)}; "
            f"known: {', '.join(keys)}"
        )


def spec_from_settings(settings: Mapping[str, Any], mano_dir: str | None) -> PrepareSpec:
    """The :class:`PrepareSpec` of ``settings`` (keys of :data:`PROTOCOL_KEYS`, defaults for
    the rest: test split, capture 0, every sequence, right hand, ``1.3:256`` crops, filters on).
    ``scale`` (a full-frame factor) wins over ``crop`` when both are set."""

    def strings(value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        return (str(value),) if isinstance(value, str | int) else tuple(str(v) for v in value)

    if settings.get("scale") is not None:
        crop = CropConfig(mode="full", full_scale=float(settings["scale"]))
    else:
        scale, size = parse_crop(settings.get("crop", "1.3:256"))
        crop = CropConfig(mode="crop", scale=scale, out_size=size)
    return PrepareSpec(
        split=str(settings.get("split", "test")),
        capture=int(settings.get("capture", 0)),
        seqs=strings(settings.get("seqs")),
        hand=str(settings.get("hand", "right")),
        cameras=strings(settings.get("cameras")),
        exclude_cameras=strings(settings.get("exclude_cameras")),
        stride=int(settings.get("stride", 1)),
        drop_grayscale_cameras=bool(settings.get("drop_grayscale_cameras", False)),
        crop=crop,
        filters=FrameFilterConfig() if settings.get("filters", True) else None,
        refine_masks=bool(settings.get("refine_masks", False)),
        mano_dir=mano_dir,
    )
