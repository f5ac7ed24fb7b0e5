"""A fitted run is loaded only with the hand model it was fitted with (by generator for the
procedural hand, whose files' bytes differ across machines)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from handnerf.errors import CheckpointError
from handnerf.runs.loader import load_run
from handnerf.train.checkpoint import LATEST, load_checkpoint, save_checkpoint


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
