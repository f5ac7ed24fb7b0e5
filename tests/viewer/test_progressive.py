"""Progressive rendering: a preview for every change, the full image once nothing changed."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from handnerf.errors import ConfigError
from handnerf.hand.hand_model import ManoParams
from handnerf.viewer.cameras import ViewCamera
from handnerf.viewer.progressive import ProgressiveRenderer, ViewFrame

WAIT = 60.0
CAMERA = ViewCamera(R=np.eye(3), center=np.zeros(3), fov_y=1.0, aspect=1.0)


class Recorder:
    """A stand-in renderer that records each call and can hold one until released."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.shown: list[ViewFrame] = []
        self.cancellable: list[bool] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.full_entered = threading.Event()
        self.release_full = threading.Event()
        self.release_full.set()

    def render(
        self, pose: ManoParams, camera: ViewCamera, size: int, cancelled: Callable[[], bool] | None
    ) -> np.ndarray | None:
        self.calls.append(size)
        self.cancellable.append(cancelled is not None)
        self.entered.set()
        assert self.release.wait(WAIT)
        if size == 64:  # a full image
            self.full_entered.set()
            assert self.release_full.wait(WAIT)
            if cancelled is not None and cancelled():
                return None
        value = round(float(pose.global_orient[0, 0]) * 100)
        return np.full((size, size, 3), value, np.uint8)

    def show(self, frame: ViewFrame) -> None:
        self.shown.append(frame)


def _pose(x: float) -> ManoParams:
    pose = ManoParams.zeros(1)
    pose.global_orient[0, 0] = x
    return pose


def test_each_change_is_previewed_then_drawn_full_when_nothing_else_arrives() -> None:
    rec = Recorder()
    r = ProgressiveRenderer(rec.render, rec.show, _pose(0.1), CAMERA, full_size=64, preview_size=16)
    r.start()
    try:
        first = r.wait_still(WAIT)
        assert [(f.size, f.full) for f in rec.shown] == [(16, False), (64, True)]
        assert first.image.shape == (64, 64, 3) and first.image[0, 0, 0] == 10
        # Full images may be dropped when the view moves on; previews are drawn in one
        # piece (a cancellable render is drawn in bands, which costs a preview time).
        assert list(zip(rec.calls, rec.cancellable, strict=True)) == [(16, False), (64, True)]
        version = r.update(pose=_pose(0.2))
        still = r.wait_still(WAIT)
        assert still.version == version and still.image[0, 0, 0] == 20
        assert [(f.size, f.full) for f in rec.shown[2:]] == [(16, False), (64, True)]
        assert set(r.rates) == {"preview", "full"}
    finally:
        r.stop()


def test_changes_during_a_render_are_merged_and_only_the_latest_is_drawn() -> None:
    rec = Recorder()
    r = ProgressiveRenderer(rec.render, rec.show, _pose(0.1), CAMERA, full_size=64, preview_size=16)
    r.start()
    try:
        r.wait_still(WAIT)
        rec.release.clear()
        rec.entered.clear()
        r.update(pose=_pose(0.2))
        assert rec.entered.wait(WAIT)  # the preview of 0.2 is in flight
        r.update(pose=_pose(0.3))
        latest = r.update(pose=_pose(0.4))  # still moving: 0.3 is never drawn
        rec.release.set()
        still = r.wait_still(WAIT)
        assert still.version == latest and still.image[0, 0, 0] == 40
        drawn = [(int(f.image[0, 0, 0]), f.full) for f in rec.shown[2:]]
        # 0.2's preview finished after newer changes: no full image of it, a preview of 0.4.
        assert drawn == [(20, False), (40, False), (40, True)]
    finally:
        r.stop()


def test_a_stale_full_render_is_dropped_for_the_new_change() -> None:
    rec = Recorder()
    r = ProgressiveRenderer(rec.render, rec.show, _pose(0.1), CAMERA, full_size=64, preview_size=16)
    r.start()
    try:
        r.wait_still(WAIT)
        rec.release_full.clear()
        rec.full_entered.clear()
        r.update(pose=_pose(0.2))
        assert rec.full_entered.wait(WAIT)  # 0.2 was previewed; its full image is in flight
        latest = r.update(pose=_pose(0.3))
        rec.release_full.set()
        still = r.wait_still(WAIT)
        assert still.version == latest and still.image[0, 0, 0] == 30
        drawn = [(int(f.image[0, 0, 0]), f.full) for f in rec.shown[2:]]
        assert drawn == [(20, False), (30, False), (30, True)]  # never a full image of 0.2
    finally:
        r.stop()


def test_a_failing_render_is_reported_and_the_next_change_renders_again() -> None:
    errors: list[BaseException] = []
    failed = threading.Event()
    shown: list[ViewFrame] = []

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        failed.set()

    def render(
        pose: ManoParams, camera: ViewCamera, size: int, cancelled: Callable[[], bool]
    ) -> np.ndarray:
        if float(pose.global_orient[0, 0]) < 0:
            raise RuntimeError("bad pose")
        return np.zeros((size, size, 3), np.uint8)

    r = ProgressiveRenderer(render, shown.append, _pose(-1), CAMERA, 32, 16, on_error)
    r.start()
    try:
        assert failed.wait(WAIT)
        assert "bad pose" in str(errors[0]) and r.error is errors[0] and not shown
        r.update(pose=_pose(0.5))
        frame = r.wait_still(WAIT)
        assert frame.full and r.error is None
    finally:
        r.stop()


def test_too_small_images_are_refused() -> None:
    with pytest.raises(ConfigError, match=">= 8 px"):
        ProgressiveRenderer(lambda *a: np.zeros(1), lambda f: None, _pose(0), CAMERA, 4, 4)
