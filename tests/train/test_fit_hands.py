"""The hand model a checkpoint records (``hand_identity``) and how a run is matched to it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from handnerf.errors import CheckpointError
from handnerf.hand.hand_model import HandModel
from handnerf.runs.loader import load_run
from handnerf.train.checkpoint import LATEST, load_checkpoint, save_checkpoint
from handnerf.train.fit_hands import hand_identity, same_hand


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


def _with_hand(run: Path, tmp_path: Path, **changes: str) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    path = copy / "checkpoints" / LATEST
    state = load_checkpoint(path)
    state["hand_identity"] = {**state["hand_identity"], **changes}
    save_checkpoint(path, state)
    return copy


def test_a_run_fitted_on_another_machine_loads(tiny_run: Path, tmp_path: Path) -> None:
    """The procedural hand generated there had other bytes (another sha256) but the same
    generator: the run loads here."""
    run = load_run(_with_hand(tiny_run, tmp_path, sha256="0" * 64), device="cpu")
    assert run.avatar is not None


def test_a_run_of_another_procedural_hand_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    changed = _with_hand(tiny_run, tmp_path, generator="handnerf-procedural v0 seed 7 mano")
    with pytest.raises(CheckpointError, match="trained with hand model"):
        load_run(changed, device="cpu")
