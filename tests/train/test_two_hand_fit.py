"""``fit data.hand=both``: a two-hand run fits, its checkpoint carries both hands, it
reopens as a two-hand avatar, renders both hands or each alone, and evaluates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handnerf.errors import ConfigError
from handnerf.evaluation.evaluate import evaluate_run
from handnerf.evaluation.protocols import get_protocol
from handnerf.model.renderer import render_camera
from handnerf.model.two_hands import TwoHandAvatar
from handnerf.render.jobs import render_orbit, render_pose_sequence
from handnerf.runs.loader import load_run
from handnerf.synth.two_hands import NOVEL_SEQ, TRAIN_SEQS
from handnerf.train.checkpoint import LATEST, load_checkpoint
from handnerf.train.fit_data import sequence_mano
from handnerf.train.fit_hands import mano_length, map_mano
from handnerf.train.fit_job import run_fit

TWO_HANDS = [
    "data.hand=both",
    f"data.train_seq={TRAIN_SEQS['interlock']}",
    f"data.novel_pose_seq={NOVEL_SEQ}",
    "train.refine_pose=false",
]


@pytest.fixture(scope="module")
def two_hand_run(
    tiny_two_hand_capture: Path, small_fit: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    run = tmp_path_factory.mktemp("runs") / "two_hands"
    run_fit(
        tiny_two_hand_capture,
        run,
        overrides=[*small_fit, *TWO_HANDS, "train.steps=4"],
        progress=False,
    )
    return run


def test_checkpoint_carries_both_hands(two_hand_run: Path) -> None:
    state = load_checkpoint(two_hand_run / "checkpoints" / LATEST)
    assert state["hand_identity"]["side"] == "both"
    assert len(state["hand_identity"]["sha256"].split(",")) == 2
    assert tuple(state["betas"].shape) == (2, 10)
    for side in ("right", "left"):
        keys = [k for k in state["model"] if k.startswith(f"hands.{side}.")]
        assert any(".field." in k for k in keys) and any(".occupancy." in k for k in keys)


def test_run_reopens_and_renders_each_hand(two_hand_run: Path, tiny_two_hand_capture: Path) -> None:
    run = load_run(two_hand_run)
    assert isinstance(run.avatar, TwoHandAvatar) and run.fit_hands.both
    cfg = run.cfg.data
    mano = sequence_mano(run.data_root, cfg, cfg.train_seq, cfg.stride)
    assert mano_length(mano) == 2
    frames = run.avatar.pose_frames(map_mano(mano, lambda _, p: p.index(0)))
    from handnerf.data.interhand import InterHandCapture

    view = InterHandCapture(tiny_two_hand_capture, hand="both", seqs=[cfg.train_seq]).views[0]
    camera = view.camera.resized(48, 72)
    both = render_camera(run.avatar, frames, camera, 0, 0)
    right = render_camera(run.avatar.alone("right"), frames, camera, 0, 0)
    left = render_camera(run.avatar.alone("left"), frames, camera, 0, 0)
    assert both.shape == right.shape == left.shape == (72, 48, 3)
    assert not torch.equal(right, left)
    # novel views and novel poses of the pair
    assert (
        len(render_orbit(run, map_mano(mano, lambda _, p: p.index(1)), 2, 24, progress=False)) == 2
    )
    novel = sequence_mano(run.data_root, cfg, NOVEL_SEQ, 1)
    assert len(render_pose_sequence(run, novel, 3, 24, progress=False)) == 3


def test_run_evaluates(two_hand_run: Path, tmp_path: Path) -> None:
    run = load_run(two_hand_run)
    report = evaluate_run(run, get_protocol("handavatar"), tmp_path, max_views=1, progress=False)
    assert report["n_images"] >= 1
    assert 0.0 < report["psnr"] < 60.0
    # each hand scored inside its own visible mask
    overall = report["overall"]
    assert 0.0 < overall["right_psnr"] < 60.0 and 0.0 < overall["left_psnr"] < 60.0
    assert all(row["right_psnr"] is not None for row in report["images"])


def test_pose_refinement_is_one_hand_only(
    tiny_two_hand_capture: Path, small_fit: list[str], tmp_path: Path
) -> None:
    overrides = [*small_fit, *TWO_HANDS[:-1], "train.refine_pose=true", "train.steps=1"]
    with pytest.raises(ConfigError, match="one-hand only"):
        run_fit(tiny_two_hand_capture, tmp_path / "run", overrides=overrides, progress=False)


def test_two_hand_run_resumes_and_a_one_hand_config_is_refused(
    two_hand_run: Path, tiny_two_hand_capture: Path, small_fit: list[str], tmp_path: Path
) -> None:
    import shutil

    from handnerf.errors import CheckpointError

    run = tmp_path / "run"
    shutil.copytree(two_hand_run, run)
    same = [*small_fit, *TWO_HANDS, "train.steps=4"]
    resumed = run_fit(tiny_two_hand_capture, run, overrides=same, resume=True, progress=False)
    assert resumed.step == 4
    before = load_checkpoint(two_hand_run / "checkpoints" / LATEST)["model"]
    after = load_checkpoint(run / "checkpoints" / LATEST)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(CheckpointError, match=r"data\.hand: saved 'both', now 'right'"):
        run_fit(
            tiny_two_hand_capture,
            run,
            overrides=[*same, "data.hand=right"],
            resume=True,
            progress=False,
        )


def test_a_two_hand_run_saved_before_other_hand_shadows_renders_as_it_was_trained(
    two_hand_run: Path, tiny_two_hand_capture: Path, small_fit: list[str], tmp_path: Path
) -> None:
    """Its checkpoint lacks ``model.visibility.other_hand``: it loads with each hand's
    visibility cast against itself alone, and resumes only with that setting."""
    import shutil

    from handnerf.errors import CheckpointError
    from handnerf.train.checkpoint import save_checkpoint

    run_dir = tmp_path / "old_run"
    shutil.copytree(two_hand_run, run_dir)
    path = run_dir / "checkpoints" / LATEST
    state = load_checkpoint(path)
    assert state["config"]["model"]["visibility"]["n_directions"] > 0
    del state["config"]["model"]["visibility"]["other_hand"]
    save_checkpoint(path, state)

    old, new = load_run(run_dir, device="cpu"), load_run(two_hand_run, device="cpu")
    assert old.cfg.model.visibility.other_hand is False
    assert new.cfg.model.visibility.other_hand is True
    cfg = old.cfg.data
    mano = sequence_mano(old.data_root, cfg, cfg.train_seq, cfg.stride)
    old_frames, new_frames = old.avatar.pose_frames(mano), new.avatar.pose_frames(mano)
    for side in ("right", "left"):
        alone = old.avatar.hand(side).pose_frames(mano[side]).deformation.vertex_attributes
        shadowed = new_frames.hands[side].deformation.vertex_attributes
        assert torch.equal(old_frames.hands[side].deformation.vertex_attributes, alone)
        assert not torch.equal(alone, shadowed)

    same = [*small_fit, *TWO_HANDS, "train.steps=4"]
    with pytest.raises(CheckpointError, match=r"model\.visibility\.other_hand"):
        run_fit(tiny_two_hand_capture, run_dir, overrides=same, resume=True, progress=False)
    kept = [*same, "model.visibility.other_hand=false"]
    resumed = run_fit(tiny_two_hand_capture, run_dir, overrides=kept, resume=True, progress=False)
    assert resumed.step == 4
