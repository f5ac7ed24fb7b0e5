"""MANO parameters written in ``MANO_NeuralAnnot.json``'s schema.

``{capture: {frame: {"right": {"pose": 48, "shape": 10, "trans": 3}, "left": null}}}``,
keys as strings, the other hand null: what :class:`handnerf.data.interhand.InterHandCapture`
and other InterHand2.6M tools read. Used to hand refined fits back to other tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from handnerf.errors import ParameterError
from handnerf.files import atomic_write_json
from handnerf.hand.hand_model import ManoParams

HANDS = ("right", "left")


def mano_annotations(capture: int, hand: str, frames: Mapping[int, ManoParams]) -> dict[str, Any]:
    """The annotation dict of one hand's ``frames`` (frame index -> a 1-row ManoParams)."""
    if hand not in HANDS:
        raise ParameterError(f"hand must be one of {HANDS}, got {hand!r}")
    other = "left" if hand == "right" else "right"
    entries = {
        str(int(frame)): {hand: params.to_interhand(), other: None}
        for frame, params in sorted(frames.items())
    }
    return {str(int(capture)): entries}


def write_mano_annotations(
    path: Path, capture: int, hand: str, frames: Mapping[int, ManoParams]
) -> Path:
    """Write :func:`mano_annotations` to ``path`` atomically; returns ``path``."""
    atomic_write_json(Path(path), mano_annotations(capture, hand, frames))
    return Path(path)
