"""What a checkpoint or prepared cache records of its hand model, and how it is matched."""

from __future__ import annotations

import pytest

from handnerf.hand.hand_model import HandModel
from handnerf.hand.identity import hand_identity, hands_identity, same_hand


@pytest.fixture(scope="module")
def procedural() -> dict[str, str]:
    return hand_identity(HandModel.from_folder(None, "right", procedural="mano"))


def test_procedural_hand_is_matched_by_its_generator_not_its_bytes(
    procedural: dict[str, str],
) -> None:
    assert procedural["kind"] == "procedural" and procedural["side"] == "right"
    assert procedural["generator"].endswith(" seed 0 mano")
    # The same generator on a machine whose numpy rounds the rig differently: other bytes.
    elsewhere = {**procedural, "sha256": "0" * 64}
    assert same_hand(elsewhere, procedural)
    assert not same_hand({**elsewhere, "generator": procedural["generator"] + "x"}, procedural)
    assert not same_hand({**elsewhere, "side": "left"}, procedural)
    dense = hand_identity(HandModel.from_folder(None, "right", procedural="dense"))
    assert dense["generator"].endswith(" seed 0 dense") and not same_hand(dense, procedural)
    # Checkpoints from before the generator was recorded: by sha256, as before.
    old = {key: procedural[key] for key in ("side", "sha256", "kind")}
    assert same_hand(old, procedural)
    assert not same_hand({**old, "sha256": "0" * 64}, procedural)
    assert not same_hand(None, procedural) and not same_hand("right", procedural)


def test_mano_files_are_matched_by_their_bytes(procedural: dict[str, str]) -> None:
    mano = {"side": "right", "sha256": "a" * 64, "kind": "mano"}
    assert same_hand(dict(mano), mano)
    assert not same_hand({**mano, "sha256": "b" * 64}, mano)
    # A generator field does not make a MANO file's bytes irrelevant.
    assert not same_hand({**mano, "sha256": "b" * 64, "generator": "x"}, mano)
    assert not same_hand(procedural, mano) and not same_hand(mano, procedural)


def test_two_hands_are_recorded_right_then_left() -> None:
    models = {
        side: HandModel.from_folder(None, side, procedural="mano") for side in ("right", "left")
    }
    both = hands_identity(models, "both")
    right, left = hand_identity(models["right"]), hand_identity(models["left"])
    assert both["side"] == "both" and both["kind"] == "procedural"
    assert both["sha256"] == f"{right['sha256']},{left['sha256']}"
    assert both["generator"] == f"{right['generator']},{left['generator']}"
    assert hands_identity(models, "left") == left
    assert same_hand({**both, "sha256": "x,y"}, both)
