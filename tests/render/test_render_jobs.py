"""Rendering a trained avatar to videos: frame count, size, chunking, CLI errors."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from handnerf.cli import main
from handnerf.render.jobs import interpolate_mano, orbit_cameras, render_orbit
from handnerf.runs.loader import load_run
from handnerf.train.fit_data import sequence_mano


def test_orbit_cameras_look_at_the_centre() -> None:
    center = np.array([0.1, -0.2, 0.05])
    cams = orbit_cameras(center, radius=0.1, n=8, size=64)
    assert len(cams) == 8
    for cam in cams:
        x_cam = cam.R @ center + cam.t
        assert x_cam[2] > 0  # in front
        uv = cam.K @ (x_cam / x_cam[2])
        np.testing.assert_allclose(uv[:2], [32, 32], atol=1e-6)  # at the image centre
        np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-9)


def test_interpolate_mano_hits_the_keyframes(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    mano = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.novel_pose_seq or "", 1)
    seq = interpolate_mano(mano, 2 * len(mano) - 1)
    assert len(seq) == 2 * len(mano) - 1
    torch.testing.assert_close(seq.hand_pose[0], mano.hand_pose[0])
    torch.testing.assert_close(seq.hand_pose[-1], mano.hand_pose[-1])
    torch.testing.assert_close(seq.hand_pose[1], 0.5 * (mano.hand_pose[0] + mano.hand_pose[1]))


def test_chunked_rendering_equals_one_chunk(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    mano = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 1).index(0)
    a = render_orbit(run, mano, n_frames=1, size=24, chunk=64, progress=False)[0]
    b = render_orbit(run, mano, n_frames=1, size=24, chunk=4096, progress=False)[0]
    assert a.shape == (24, 24, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


@pytest.mark.parametrize("mode", ["orbit", "pose"])
def test_render_cli_writes_gif_with_requested_frames(
    tiny_run: Path, tmp_path: Path, mode: str
) -> None:
    out = tmp_path / f"{mode}.gif"
    status = main(
        [
            "render",
            "--run",
            str(tiny_run),
            "--out",
            str(out),
            "--mode",
            mode,
            "--frames",
            "4",
            "--size",
            "20",
            "--no-progress",
        ]
    )
    assert status == 0
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 4 and frames.shape[1:3] == (20, 20)


def test_render_cli_errors_are_clear(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "a.gif")]) == 2
    assert "run.json" in capsys.readouterr().err
    assert (
        main(
            [
                "render",
                "--run",
                str(tiny_run),
                "--out",
                str(tmp_path / "a.gif"),
                "--frame",
                "99",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "frames" in capsys.readouterr().err


def test_run_saved_before_newer_config_keys_still_loads_and_resumes(
    tiny_capture: Path, tmp_path: Path, small_fit: list[str]
) -> None:
    """A checkpoint written before ``model.visibility``, ``train.jitter_rays`` and the
    colour model existed renders as it was trained (visibility off, centre rays)."""
    from handnerf.errors import CheckpointError
    from handnerf.train.checkpoint import LATEST, load_checkpoint, save_checkpoint
    from handnerf.train.fit_job import run_fit

    run_dir = tmp_path / "old_run"
    overrides = [
        *small_fit,
        "train.steps=2",
        "train.jitter_rays=false",
        "model.visibility.n_directions=0",
    ]
    run_fit(tiny_capture, run_dir, overrides=overrides, progress=False)
    path = run_dir / "checkpoints" / LATEST
    state = load_checkpoint(path)
    # What an older handnerf wrote: none of the keys added since.
    del state["config"]["model"]["visibility"]
    del state["config"]["model"]["field"]["color_model"]
    del state["config"]["model"]["field"]["shading_hidden_dim"]
    del state["config"]["train"]["jitter_rays"]
    save_checkpoint(path, state)
    run = load_run(run_dir, device="cpu")
    assert run.cfg.model.visibility.n_directions == 0
    assert run.cfg.train.jitter_rays is False and run.cfg.model.field.color_model == "mlp"
    assert run.avatar.field.n_visibility == 0
    mano = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 1).index(0)
    frame = render_orbit(run, mano, n_frames=1, size=16, progress=False)[0]
    assert frame.shape == (16, 16, 3)
    # --resume accepts it with visibility off, and names the key otherwise.
    assert (
        run_fit(tiny_capture, run_dir, overrides=overrides, resume=True, progress=False).step == 2
    )
    with pytest.raises(CheckpointError, match=r"model\.visibility\.n_directions"):
        run_fit(tiny_capture, run_dir, overrides=overrides[:-1], resume=True, progress=False)
    without_jitter_override = [o for o in overrides if not o.startswith("train.jitter_rays")]
    with pytest.raises(CheckpointError, match=r"train\.jitter_rays") as refused:
        run_fit(
            tiny_capture, run_dir, overrides=without_jitter_override, resume=True, progress=False
        )
    # The error says how to continue: the saved values as overrides, which do resume.
    hint = str(refused.value).split("add the saved values: ")[1].split(";")[0].split()
    assert hint == ["train.jitter_rays=false"]
    resumed = run_fit(
        tiny_capture,
        run_dir,
        overrides=[*without_jitter_override, *hint],
        resume=True,
        progress=False,
    )
    assert resumed.step == 2
