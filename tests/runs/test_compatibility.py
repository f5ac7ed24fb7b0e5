"""A single-hand run made before two-hand avatars (commit 0154207; fitted 6 steps on the
``tiny_capture`` fixture, optimizer state dropped) still loads, renders and evaluates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from handnerf.evaluation.evaluate import evaluate_run
from handnerf.evaluation.protocols import get_protocol
from handnerf.model.avatar import HandAvatar
from handnerf.model.renderer import render_camera
from handnerf.render.jobs import render_orbit
from handnerf.runs.loader import load_run
from handnerf.train.checkpoint import LATEST, load_checkpoint
from handnerf.train.fit_data import sequence_mano

FIXTURE = Path(__file__).parent / "fixtures" / "single_hand_run"


def _old_run(tmp_path: Path, data_root: Path) -> Path:
    run = tmp_path / "old_run"
    shutil.copytree(FIXTURE, run)
    info = json.loads((run / "run.json").read_text())
    info["data_root"] = str(data_root)
    (run / "run.json").write_text(json.dumps(info))
    return run


def test_a_single_hand_run_from_before_loads_renders_and_evaluates(
    tiny_capture: Path, tmp_path: Path
) -> None:
    run_dir = _old_run(tmp_path, tiny_capture)
    run = load_run(run_dir)
    assert isinstance(run.avatar, HandAvatar) and not run.fit_hands.both
    assert run.cfg.data.hand == "right" and run.step == 6
    saved = load_checkpoint(run_dir / "checkpoints" / LATEST)["model"]
    for key, value in run.avatar.state_dict().items():
        assert torch.equal(value.cpu(), saved[key]), key

    cfg = run.cfg.data
    mano = sequence_mano(run.data_root, cfg, cfg.train_seq, cfg.stride)
    frames = run.avatar.pose_frames(mano.index(0))
    from handnerf.data.interhand import InterHandCapture

    view = InterHandCapture(tiny_capture, seqs=[cfg.train_seq]).views[0]
    image = render_camera(run.avatar, frames, view.camera.resized(40, 60), 0, 0)
    assert image.shape == (60, 40, 3) and float(image.max()) > 0.0
    assert len(render_orbit(run, mano.index(0), 2, 24, progress=False)) == 2

    report = evaluate_run(
        run, get_protocol("handavatar"), tmp_path / "eval", max_views=1, progress=False
    )
    assert report["n_images"] >= 1 and np.isfinite(report["psnr"])


def test_a_single_hand_run_from_before_keeps_its_data_fingerprint(tiny_capture: Path) -> None:
    """Today's fit computes the fingerprint the old run saved for its data, so ``--resume``
    of runs from before (e.g. before data.extra_train_seqs) finds the same data. It also
    fails when the tiny capture's annotation files change size (they are fingerprinted):
    the fixture's fingerprint was last set when the synthesised joints and boxes were
    rounded (before that their last bits, and sizes, followed the CPU and thread count)."""
    from handnerf.train.config import saved_fit_config
    from handnerf.train.fit_data import load_fit_data

    state = load_checkpoint(FIXTURE / "checkpoints" / LATEST)
    cfg = saved_fit_config(state, FIXTURE)
    saved = json.loads((FIXTURE / "run.json").read_text())["data_fingerprint"]
    assert state["data_fingerprint"] == saved
    assert load_fit_data(tiny_capture, cfg.data, progress=False).fingerprint == saved
