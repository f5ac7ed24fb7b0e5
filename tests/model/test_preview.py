"""PreviewRenderer: a pose and a camera at a requested size, posed frames cached per pose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.errors import ConfigError, ParameterError
from handnerf.hand.hand_model import ManoParams
from handnerf.model.preview import PreviewRenderer
from handnerf.model.renderer import CameraTensors, camera_rays, render_camera, resized_camera
from handnerf.render.jobs import framing_camera, hand_sphere
from handnerf.runs.loader import load_run
from handnerf.train.fit_data import sequence_mano


def fresh(run, mano: ManoParams, cam) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The image of ``mano`` rendered from scratch: posed now, no cache involved."""
    frames = run.avatar.pose_frames(mano)
    return render_camera(run.avatar, frames, cam, 0, None)


def test_cached_poses_render_what_fresh_poses_render(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    seq = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 1)
    pose_a = seq.index(0)
    # Pose B: the same frame with the fingers bent further (a slider moved).
    pose_b = seq.index(0)
    pose_b.hand_pose = pose_b.hand_pose + 0.3
    frames_a = run.avatar.pose_frames(pose_a)
    center, radius = hand_sphere(frames_a.vertices[0])
    cam = framing_camera(center + np.array([0.0, -0.3, 0.3]), center, radius, size=16)

    preview = PreviewRenderer(run.avatar, max_poses=4)
    first_a = preview.render(pose_a, cam)
    b = preview.render(pose_b, cam)
    again_a = preview.render(pose_a, cam)
    assert (preview.misses, preview.hits) == (2, 1)
    assert torch.equal(first_a, fresh(run, pose_a, cam))
    assert torch.equal(b, fresh(run, pose_b, cam))
    assert torch.equal(again_a, first_a)
    assert not torch.equal(first_a, b), "the pose changes the image"
    assert float(first_a.amax(-1).gt(0.05).float().mean()) > 0.02, "the hand is visible"

    # With room for one pose, A is posed again after B, and still renders the same.
    single = PreviewRenderer(run.avatar, max_poses=1)
    for pose in (pose_a, pose_b, pose_a):
        single.render(pose, cam)
    assert (single.misses, single.hits) == (3, 0)
    assert torch.equal(single.render(pose_a, cam), first_a) and single.hits == 1


def test_preview_renders_at_the_requested_size(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    mano = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 1).index(0)
    frames = run.avatar.pose_frames(mano)
    center, radius = hand_sphere(frames.vertices[0])
    square = framing_camera(center + np.array([0.0, -0.3, 0.3]), center, radius, size=30)
    # A landscape camera: 30x20 pixels, the same focal length.
    wide = CameraTensors.of(square)
    wide = CameraTensors(K=wide.K.clone(), R=wide.R, t=wide.t, height=20, width=30)
    wide.K[1, 2] = 10.0

    preview = PreviewRenderer(run.avatar)
    small = preview.render(mano, wide, size=12)
    assert small.shape == (8, 12, 3)
    expected = render_camera(run.avatar, frames, resized_camera(wide, 12, 8), 0, None)
    assert torch.equal(small, expected)
    assert preview.render(mano, wide).shape == (20, 30, 3)
    # The resized camera sees the same field of view: its corner rays are the original's.
    o_full, d_full = camera_rays(wide, torch.device("cpu"))
    o_half, d_half = camera_rays(resized_camera(wide, 15, 10), torch.device("cpu"))
    corner_full = d_full.reshape(20, 30, 3)[:2, :2].mean(dim=(0, 1))
    torch.testing.assert_close(
        torch.nn.functional.normalize(corner_full, dim=0), d_half[0], atol=2e-3, rtol=0
    )
    torch.testing.assert_close(o_full[0], o_half[0])


def test_preview_refuses_bad_requests(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    seq = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 1)
    cam = framing_camera(np.array([0.0, -0.3, 0.3]), np.zeros(3), 0.1, size=8)
    preview = PreviewRenderer(run.avatar)
    with pytest.raises(ParameterError, match="one pose at a time, got 2 frames"):
        preview.render(ManoParams.stack([seq.index(0), seq.index(0)]), cam)
    with pytest.raises(ParameterError, match="size must be >= 1 pixel, got 0"):
        preview.render(seq.index(0), cam, size=0)
    with pytest.raises(ParameterError, match="max_poses must be >= 1"):
        PreviewRenderer(run.avatar, max_poses=0)
    with pytest.raises(ConfigError, match="needs >= 1 pixel a side, got 0x4"):
        resized_camera(cam, 0, 4)
