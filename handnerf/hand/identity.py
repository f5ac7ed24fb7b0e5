"""What a checkpoint or a prepared cache records of its hand model(s), and whether a
recorded hand is the one loaded now.

A MANO file is identified by its bytes (sha256). The procedural hand is generated on each
machine and its files' bytes are not the same everywhere: numpy/LAPACK builds round its rig
differently (1e-14) and pick other bases for its unused pose-PCA components (seen on
2026-12-04: one commit gave one sha256 on the development VM and another on a lent H200).
So it is identified by its generator: name, version, seed and resolution.
"""

from __future__ import annotations

from collections.abc import Mapping

from handnerf.hand.hand_model import HandModel
from handnerf.hand.sides import SIDES


def hand_identity(model: HandModel) -> dict[str, str]:
    """``{"side", "sha256", "kind"}`` of one hand model, plus ``"generator"`` for the
    procedural hand."""
    data = model.data
    identity = {
        "side": str(data.side),
        "sha256": str(data.sha256),
        "kind": "procedural" if data.procedural else "mano",
    }
    if data.procedural:
        marker = data.procedural
        identity["generator"] = (
            f"{marker.get('generator')} v{marker.get('version')} seed {marker.get('seed')} "
            f"{marker.get('resolution', 'dense')}"
        )
    return identity


def hands_identity(models: Mapping[str, HandModel], hand: str) -> dict[str, str]:
    """The identity of ``models[hand]``; for ``hand="both"`` the two sides' joined
    right,left (side "both")."""
    if hand != "both":
        return hand_identity(models[hand])
    ids = [hand_identity(models[side]) for side in SIDES]
    both = {
        "side": "both",
        "sha256": ",".join(i["sha256"] for i in ids),
        "kind": ids[0]["kind"],
    }
    if all("generator" in i for i in ids):
        both["generator"] = ",".join(i["generator"] for i in ids)
    return both


def same_hand(saved: object, current: Mapping[str, str]) -> bool:
    """Whether the recorded hand ``saved`` is the hand model ``current`` identifies.

    Two procedural hands are the same when their generators are; anything else (MANO
    files, and records written before the generator was recorded) when side, kind and
    sha256 are.
    """
    if not isinstance(saved, dict):
        return False
    if saved.get("kind") == current.get("kind") == "procedural" and "generator" in saved:
        return saved.get("side") == current.get("side") and saved["generator"] == current.get(
            "generator"
        )
    return all(saved.get(key) == current.get(key) for key in ("side", "sha256", "kind"))
