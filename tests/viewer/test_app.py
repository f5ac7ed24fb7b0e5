"""The viewer's wiring without a browser: GUI handles -> pose / frame / camera -> render.

viser runs a GUI handle's callbacks when Python assigns its value, exactly as when a
browser moves it, so these drive the real server's controls.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import viser.transforms as vtf

from handnerf.data.interhand import load_image
from handnerf.errors import ConfigError
from handnerf.runs.loader import load_run
from handnerf.train.fit_data import open_sequence, sequence_mano
from handnerf.viewer.app import ViewerApp
from handnerf.viewer.cameras import ViewCamera
from handnerf.viewer.sequences import load_sequences
from handnerf.viewer.session import RenderSession

from .conftest import FULL, PREVIEW, WAIT


def _slider(app: ViewerApp, key: str):
    return next(s for s in app.sliders if s.key == key)


def test_a_slider_value_re_renders_with_exactly_that_pose(viewer: ViewerApp) -> None:
    viewer.reset_pose("all")
    before = viewer.renderer.wait_still(WAIT)
    slider = _slider(viewer, "index.MCP.z")
    viewer.sliders[slider].value = 1.1
    frame = viewer.renderer.wait_still(WAIT)
    expected = before.pose.hand_pose.clone()
    expected[0, 2] = 1.1  # MANO joint 1 (index MCP), z
    assert torch.equal(frame.pose.hand_pose, expected)
    assert torch.equal(frame.pose.global_orient, before.pose.global_orient)
    assert frame.full and frame.size == FULL
    # The shown image is that pose's render, and bending the finger changed it.
    again = viewer.session.render_view(frame.pose, frame.camera, FULL)
    np.testing.assert_array_equal(frame.image, again)
    assert np.abs(frame.image.astype(int) - before.image.astype(int)).sum() > 0
    viewer.reset_buttons["index"].value = True  # a click: back to the frame's pose
    reset = viewer.renderer.wait_still(WAIT)
    assert torch.equal(reset.pose.hand_pose, before.pose.hand_pose)
    assert viewer.sliders[slider].value == pytest.approx(float(before.pose.hand_pose[0, 2]))


def test_the_scrubber_selects_that_frames_mano_parameters(
    viewer: ViewerApp, tiny_run: Path
) -> None:
    run = viewer.session.run
    cfg = run.cfg.data
    train = sequence_mano(run.data_root, cfg, cfg.train_seq, cfg.stride)
    frames = sorted(
        {v.frame_idx for v in open_sequence(run.data_root, cfg, cfg.train_seq, cfg.stride).views}
    )
    viewer.sequence_dropdown.value = next(
        s.label for s in viewer.capture.sequences if s.role == "training"
    )
    viewer.frame_slider.value = 2
    frame = viewer.renderer.wait_still(WAIT)
    want = run.frame_mano(cfg.train_seq, frames[2], train.index(2))
    assert torch.equal(frame.pose.hand_pose, want.hand_pose.float())
    assert torch.equal(frame.pose.global_orient, want.global_orient.float())
    assert torch.equal(frame.pose.transl, want.transl.float())
    # The sliders show that frame's values.
    rot_y = _slider(viewer, "global.y")
    assert viewer.sliders[rot_y].value == pytest.approx(float(want.global_orient[0, 1]))

    novel = next(s for s in viewer.capture.sequences if s.role == "novel pose")
    viewer.sequence_dropdown.value = novel.label
    assert viewer.frame_slider.value == 0 and viewer.frame_slider.max == len(novel.frames) - 1
    viewer.frame_slider.value = 1
    frame = viewer.renderer.wait_still(WAIT)
    want = sequence_mano(run.data_root, cfg, cfg.novel_pose_seq, cfg.novel_pose_stride).index(1)
    assert torch.equal(frame.pose.hand_pose, want.hand_pose.float())
    assert torch.equal(frame.pose.global_orient, want.global_orient.float())


def test_play_advances_through_the_frames(viewer: ViewerApp) -> None:
    start = int(viewer.frame_slider.value)
    viewer.play_button.value = True  # a click
    try:
        viewer.renderer.wait_for(lambda f: viewer.frame_index != start, WAIT)
        assert viewer.play_button.label == "Pause"
    finally:
        viewer.toggle_play()
    assert viewer.play_button.label == "Play"


def test_a_camera_update_renders_from_that_viewpoint(viewer: ViewerApp) -> None:
    center = viewer.session.hand_center(viewer.pose.mano())
    R_world_camera = (
        np.linalg.inv(viewer.renderer.camera.R) @ vtf.SO3.exp(np.array([0.0, 0.4, 0.0])).as_matrix()
    )
    position = center - 0.5 * R_world_camera[:, 2]  # half a metre back along the view
    wxyz = vtf.SO3.from_matrix(R_world_camera).wxyz
    viewer.camera_moved(wxyz, position, fov=0.6, aspect=1.5)
    frame = viewer.renderer.wait_still(WAIT)
    np.testing.assert_allclose(frame.camera.R, R_world_camera.T, atol=1e-9)
    np.testing.assert_allclose(frame.camera.center, position)
    assert frame.image.shape == (32, 48, 3)
    # The same picture as the library renders through a camera built here.
    pin = ViewCamera(R_world_camera.T, position, 0.6, 1.5).pinhole(FULL)
    assert pin.width == 48 and pin.K[1, 1] == pytest.approx(16 / np.tan(0.3))
    np.testing.assert_array_equal(
        frame.image, viewer.session.render_view(frame.pose, ViewCamera.from_pinhole(pin), FULL)
    )
    assert frame.image.max() > 0, "the hand is in view"


def test_a_capture_camera_snaps_the_view_and_shows_its_photo(viewer: ViewerApp) -> None:
    seq = next(s for s in viewer.capture.sequences if s.role == "training")
    viewer.sequence_dropdown.value = seq.label
    viewer.frame_slider.value = 1
    name = list(viewer.capture.cameras)[-1]
    viewer.snap_to(name)  # what a click on its frustum does
    frame = viewer.renderer.wait_still(WAIT)
    cam = viewer.capture.cameras[name]
    np.testing.assert_allclose(frame.camera.R, cam.R)
    np.testing.assert_allclose(frame.camera.center, cam.center)
    assert not viewer.frustums[name].visible  # the view sits inside it
    assert viewer.camera_dropdown.value == name
    viewer.ground_truth_checkbox.value = True
    try:
        run = viewer.session.run
        view = next(
            v
            for v in open_sequence(run.data_root, run.cfg.data, seq.name, run.cfg.data.stride).views
            if v.camera_id == name and v.frame_idx == seq.frames[1]
        )
        assert viewer.ground_truth_image.visible
        np.testing.assert_array_equal(viewer.ground_truth_image.image, load_image(view))
    finally:
        viewer.ground_truth_checkbox.value = False
    assert not viewer.ground_truth_image.visible
    with pytest.raises(ConfigError, match="unknown camera"):
        viewer.snap_to("no-such-camera")


def test_previews_are_small_and_stills_full_size(viewer: ViewerApp) -> None:
    version = viewer.renderer.update(pose=viewer.pose.mano())
    preview = viewer.renderer.wait_for(lambda f: f.version == version, WAIT)
    assert not preview.full and preview.size == PREVIEW
    assert viewer.renderer.wait_still(WAIT).size == FULL
    assert "FPS" in viewer.status.content


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_server_starts_and_stops_cleanly_on_a_free_port(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    said: list[str] = []
    app = ViewerApp(RenderSession(run), load_sequences(run), FULL, PREVIEW, say=said.append)
    port = _free_port()
    with app:
        app.start("127.0.0.1", port)
        assert app.port == port and app.url == f"http://127.0.0.1:{port}"
        assert any(app.url in line for line in said)
        with urllib.request.urlopen(app.url, timeout=60) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        app.renderer.wait_still(WAIT)
    assert app.server is None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=10)
    with socket.socket() as s:  # nothing listens there any more (TIME_WAIT aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_a_busy_port_moves_to_the_next_free_one_and_says_so(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    said: list[str] = []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with ViewerApp(
            RenderSession(run), load_sequences(run), FULL, PREVIEW, say=said.append
        ) as app:
            app.start("127.0.0.1", port)
            assert app.port != port
            assert f"port {port} is busy; serving on port {app.port}" in said[0]
