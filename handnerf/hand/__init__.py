"""MANO-format hand models: safe file loading, posing, procedural hand, poses.

Names are imported lazily so that ``import handnerf.hand.mano_file`` (or the procedural
generator) does not pull in torch and smplx.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ManoModelData": "handnerf.hand.mano_file",
    "SafeManoUnpickler": "handnerf.hand.mano_file",
    "load_mano_file": "handnerf.hand.mano_file",
    "load_mano_folder": "handnerf.hand.mano_file",
    "fix_left_shapedirs": "handnerf.hand.mano_file",
    "CANONICAL_POSE": "handnerf.hand.hand_model",
    "ManoParams": "handnerf.hand.hand_model",
    "HandOutput": "handnerf.hand.hand_model",
    "HandModel": "handnerf.hand.hand_model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'handnerf.hand' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
