"""The fit end to end on the tiny synthetic capture: steps, checkpoints, resume, bad files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from handnerf.cli import main
from handnerf.config import load_config
from handnerf.errors import CheckpointError, ConfigError, SelectionError
from handnerf.train.checkpoint import LATEST, load_checkpoint, save_checkpoint
from handnerf.train.config import FitConfig
from handnerf.train.fit_data import load_fit_data
from handnerf.train.fit_job import run_fit
from handnerf.train.trainer import Trainer


@pytest.fixture(scope="module")
def small_data(tiny_capture: Path, small_fit: list[str]):
    cfg = load_config(FitConfig, None, small_fit)
    return cfg, load_fit_data(tiny_capture, cfg.data, progress=False)


def test_fit_data_splits_cameras_and_frames(small_data) -> None:
    _, data = small_data
    assert set(data.train_cameras).isdisjoint(data.holdout_cameras)
    assert sorted(data.train_cameras + data.holdout_cameras) == data.camera_names
    stack = data.train_views
    assert stack.images.shape[1:] == (48, 48, 3)
    assert stack.masks.shape == stack.images.shape[:3]
    assert stack.masks.any(dim=(1, 2)).all(), "every crop must contain the hand"
    assert len(data.train.frame_keys) == len(data.train.mano)
    assert data.novel_pose is not None and len(data.novel_pose.frame_keys) > 0
    # Held-out views share the training frames (novel views, not novel poses).
    assert data.val is not None and data.val.frame_keys == data.train.frame_keys


def test_unknown_holdout_camera_lists_cameras(tiny_capture: Path, small_fit: list[str]) -> None:
    cfg = load_config(FitConfig, None, [*small_fit, "data.holdout_cameras=[999999]"])
    with pytest.raises(SelectionError, match="400002"):
        load_fit_data(tiny_capture, cfg.data, progress=False)


def test_training_step_reaches_every_parameter_group(small_data, tmp_path: Path) -> None:
    cfg, data = small_data
    trainer = Trainer(cfg, data, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.avatar.named_parameters()}
    stats = trainer.training_step()
    assert "psnr" in stats and stats["loss"] > 0
    changed = {n for n, p in trainer.avatar.named_parameters() if not torch.equal(p, before[n])}
    groups = trainer.avatar.param_groups()
    for name, params in groups.items():
        ids = {id(p) for p in params}
        names = {n for n, p in trainer.avatar.named_parameters() if id(p) in ids}
        assert names & changed, f"no parameter of group {name!r} was updated"


def test_self_shadow_visibility_reaches_the_colour_mlp(small_data, tmp_path: Path) -> None:
    cfg, data = small_data
    trainer = Trainer(cfg, data, tmp_path)
    k = cfg.model.visibility.n_directions
    assert k > 0, "self-shadowing is on by default"
    deformation = trainer.train_frames.deformation
    n_frames, n_vertices = deformation.posed_vertices.shape[:2]
    vis = deformation.vertex_attributes
    assert vis is not None and vis.shape == (n_frames * n_vertices, k)
    per_frame = vis.reshape(n_frames, n_vertices, k)
    # The tiny capture's frames have different poses, so some vertex is lit in one and
    # shadowed in another.
    assert not torch.equal(per_frame[0], per_frame[1])
    trainer.training_step()
    field = trainer.avatar.field
    first = field.color_mlp[0]
    # The colour sees the directions through its learnt lights (each a mix of all k).
    lights = cfg.model.field.visibility_lights
    assert lights > 0 and field.light_logits is not None
    assert field.light_logits.shape == (k, lights)
    assert field.light_logits.grad is not None and field.light_logits.grad.abs().sum() > 0
    # The lights are the colour MLP's columns just before the view SH terms.
    sh = cfg.model.field.view_sh_degree**2
    columns = first.weight.grad[:, first.in_features - sh - lights : first.in_features - sh]
    assert columns.abs().sum() > 0


def test_loss_decreases_over_a_short_fit(small_data, tmp_path: Path) -> None:
    cfg, data = small_data
    trainer = Trainer(cfg, data, tmp_path)
    losses = []
    for _ in range(40):
        losses.append(trainer.training_step()["loss"])
        trainer.step += 1
    first, last = sum(losses[:5]), sum(losses[-5:])
    assert last < 0.7 * first, (first, last)


def test_resume_continues_from_saved_step_with_same_state(
    tiny_capture: Path, tmp_path: Path, small_fit: list[str]
) -> None:
    run = tmp_path / "run"
    a = run_fit(tiny_capture, run, overrides=[*small_fit, "train.steps=4"], progress=False)
    assert a.step == 4 and (run / "checkpoints" / LATEST).is_file()
    saved = load_checkpoint(run / "checkpoints" / LATEST)
    assert saved["step"] == 4

    # Same config, more steps: the config differs, so resume must refuse ...
    with pytest.raises(CheckpointError, match=r"train\.steps"):
        run_fit(
            tiny_capture, run, overrides=[*small_fit, "train.steps=6"], resume=True, progress=False
        )
    # ... a fresh fit into a used folder must refuse too.
    with pytest.raises(CheckpointError, match="--resume"):
        run_fit(tiny_capture, run, overrides=[*small_fit, "train.steps=4"], progress=False)

    # Interrupted fit: an uninterrupted 6-step fit vs a 3-step fit resumed to 6 steps.
    full = run_fit(
        tiny_capture, tmp_path / "full", overrides=[*small_fit, "train.steps=6"], progress=False
    )
    cfg_half = [*small_fit, "train.steps=6", "train.checkpoint_every=3"]
    half_dir = tmp_path / "half"
    # Simulate the interruption: stop after 3 steps by training with a stop at step 3.
    cfg = load_config(FitConfig, None, cfg_half)
    data = load_fit_data(tiny_capture, cfg.data, progress=False)
    trainer = Trainer(cfg, data, half_dir)
    for _ in range(3):
        trainer.training_step()
        trainer.step += 1
    trainer.save()
    resumed = run_fit(tiny_capture, half_dir, overrides=cfg_half, resume=True, progress=False)
    assert resumed.step == 6
    a_state = load_checkpoint(full.checkpoint)["model"]
    b_state = load_checkpoint(resumed.checkpoint)["model"]
    for key in a_state:
        assert torch.allclose(a_state[key].float(), b_state[key].float(), atol=1e-5), key


def test_corrupted_and_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"step": 1, "model": {"w": torch.ones(2)}})
    assert load_checkpoint(good)["step"] == 1

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a handnerf checkpoint"):
        load_checkpoint(foreign)

    class RunsCode:
        def __reduce__(self):
            return (print, ("owned",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"format": "handnerf-checkpoint", "x": RunsCode()}, handle)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)

    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bad_config_override_names_the_key(tiny_capture: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no_such_key"):
        load_config(FitConfig, None, ["train.no_such_key=3"])
    status = main(
        [
            "fit",
            "--data",
            str(tiny_capture),
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "train.steps=notanumber",
        ]
    )
    assert status == 2


def test_fit_cli_writes_run_folder(
    tiny_capture: Path, tmp_path: Path, small_fit: list[str]
) -> None:
    run = tmp_path / "cli_run"
    status = main(
        [
            "fit",
            "--data",
            str(tiny_capture),
            "--out",
            str(run),
            "--no-progress",
            *small_fit,
            "train.steps=2",
        ]
    )
    assert status == 0
    info = json.loads((run / "run.json").read_text())
    assert info["backends"]["encoding"] == "torch" and info["backends"]["sampler"] == "torch"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_psnr" in r for r in records)
    assert (run / "config.yaml").is_file()
