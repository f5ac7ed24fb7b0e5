"""RenderSession: the viewer's one call into rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from handnerf.model.renderer import render_camera
from handnerf.runs.loader import load_run
from handnerf.viewer.cameras import ViewCamera
from handnerf.viewer.sequences import load_sequences
from handnerf.viewer.session import RenderSession, row_band


def test_a_view_renders_as_render_camera_does_whole_or_in_bands(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    capture = load_sequences(run)
    pose = capture.sequences[0].frame_mano(1)
    view = ViewCamera.from_pinhole(next(iter(capture.cameras.values())))
    session = RenderSession(run)
    whole = session.render_view(pose, view, 40)
    assert whole is not None and whole.dtype == np.uint8 and max(whole.shape[:2]) == 40
    with torch.no_grad():
        frames = run.avatar.pose_frames(pose)
    direct = render_camera(run.avatar, frames, view.pinhole(40), 0, None, run.device)
    np.testing.assert_array_equal(whole, (direct.numpy() * 255).round().astype(np.uint8))
    assert whole.max() > 0, "the hand is in view"
    bands = session.render_view(pose, view, 40, cancelled=lambda: False)
    assert bands is not None
    assert np.abs(bands.astype(int) - whole.astype(int)).max() <= 1
    assert session.render_view(pose, view, 40, cancelled=lambda: True) is None


def test_a_row_band_sees_the_same_rays() -> None:
    view = ViewCamera(R=np.eye(3), center=np.zeros(3), fov_y=1.0, aspect=1.25)
    cam = view.pinhole(50)
    band = row_band(cam, 10, 25)
    assert (band.width, band.height) == (cam.width, 15)
    _, dirs = cam.world_rays()
    _, band_dirs = band.world_rays()
    np.testing.assert_allclose(
        band_dirs, dirs.reshape(cam.height, cam.width, 3)[10:25].reshape(-1, 3)
    )


def test_previews_take_fewer_samples_and_still_views_match_the_reference(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    capture = load_sequences(run)
    pose = capture.sequences[0].frame_mano(1)
    view = ViewCamera.from_pinhole(next(iter(capture.cameras.values())))
    session = RenderSession(run)
    n = run.avatar.sampler.n_samples
    assert session.coarse_samples == max(8, n // 2)
    with torch.no_grad():
        frames = run.avatar.pose_frames(pose)
    cam = view.pinhole(40)

    def as_uint8(image: torch.Tensor) -> np.ndarray:
        return (image.numpy() * 255).round().astype(np.uint8)

    # A preview while moving: the fast path with half the samples per ray.
    coarse = session.render_view(pose, view, 40, coarse=True)
    half = render_camera(run.avatar, frames, cam, 0, None, n_samples=session.coarse_samples)
    np.testing.assert_array_equal(coarse, as_uint8(half))
    # A still view: the fast path at full quality, the reference path's image within an
    # 8-bit step (early termination leaves out at most ~1e-4 of a pixel).
    still = session.render_view(pose, view, 40)
    reference = as_uint8(render_camera(run.avatar, frames, cam, 0, None, marching=False))
    assert np.abs(still.astype(int) - reference.astype(int)).max() <= 1
    assert still.max() > 0, "the hand is in view"


def test_a_changed_pose_is_posed_again_and_a_revisited_one_is_not(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    sequence = load_sequences(run).sequences[0]
    first, second = sequence.frame_mano(0), sequence.frame_mano(1)
    session = RenderSession(run)
    frames_first = session.posed(first)
    frames_second = session.posed(second)
    assert frames_second is not frames_first
    assert not torch.equal(frames_second.vertices, frames_first.vertices)
    assert session.posed(first) is frames_first, "scrubbing back reuses the posed frame"
