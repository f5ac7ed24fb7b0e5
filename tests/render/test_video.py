"""GIF/MP4 writing and side-by-side composition."""

from __future__ import annotations

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from handnerf.errors import HandnerfError, ParameterError
from handnerf.render.video import side_by_side, write_video


def _frames(count: int = 5, height: int = 24, width: int = 32) -> list[np.ndarray]:
    """Frames with a bright square moving right, one clearly different from the next."""
    frames = []
    for index in range(count):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[8:16, 4 * index : 4 * index + 8] = (250, 40, 40)
        frames.append(frame)
    return frames


def test_gif_round_trip_keeps_frame_count_size_and_loops(tmp_path: Path) -> None:
    frames = _frames()
    path = write_video(frames, tmp_path / "sub" / "orbit.gif", fps=10)
    assert path.is_file()
    read = iio.imread(path, index=None)
    assert read.shape[:3] == (5, 24, 32)
    # GIF stores a palette; a saturated two-colour frame survives almost exactly.
    assert np.abs(read[2][..., :3].astype(int) - frames[2].astype(int)).max() <= 8
    meta = iio.immeta(path, index=0)
    assert meta.get("loop") == 0
    assert meta.get("duration") == pytest.approx(100, abs=10)


def test_mp4_without_imageio_ffmpeg_suggests_gif(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import now raises ImportError
    with pytest.raises(HandnerfError, match=r"\.gif"):
        write_video(_frames(), tmp_path / "orbit.mp4", fps=10)


def test_mp4_round_trip(tmp_path: Path) -> None:
    """imageio-ffmpeg is a dependency: MP4 must work on every install."""
    path = write_video(_frames(6, 23, 31), tmp_path / "orbit.mp4", fps=12)
    read = iio.imread(path, index=None, plugin="FFMPEG")
    assert read.shape[0] == 6 and read.shape[1:3] == (24, 32)  # padded to even sides


@pytest.mark.parametrize(
    ("frames", "name", "fps", "fragment"),
    [
        ([], "a.gif", 10, "no frame"),
        ([*_frames(2), np.zeros((5, 5, 3), np.uint8)], "a.gif", 10, "frames[2]"),
        ([np.zeros((8, 8, 3), np.float32)], "a.gif", 10, "uint8"),
        (_frames(2), "a.avi", 10, "unsupported video format"),
        (_frames(2), "a.gif", 0, "fps"),
    ],
)
def test_write_video_rejects_bad_input(
    tmp_path: Path, frames: list[np.ndarray], name: str, fps: int, fragment: str
) -> None:
    with pytest.raises(ParameterError) as caught:
        write_video(frames, tmp_path / name, fps=fps)
    assert fragment in str(caught.value)
    assert not (tmp_path / name).exists()


def test_side_by_side_places_both_images() -> None:
    left = np.full((4, 3, 3), 10, np.uint8)
    right = np.full((6, 2, 3), 200, np.uint8)
    joined = side_by_side(left, right, gap=1)
    assert joined.shape == (6, 6, 3) and joined.dtype == np.uint8
    assert (joined[1:5, :3] == 10).all()  # shorter image centred vertically
    assert (joined[[0, 5], :3] == 0).all()
    assert (joined[:, 3] == 0).all()  # the gap
    assert (joined[:, 4:] == 200).all()


def test_side_by_side_rejects_float_images() -> None:
    with pytest.raises(ParameterError, match="right"):
        side_by_side(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3)))
