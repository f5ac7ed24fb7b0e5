"""Write rendered frames as an animated GIF or an MP4, and put two frames side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from handnerf.errors import HandnerfError, ParameterError
from handnerf.files import atomic_path, atomic_write_bytes, remove_stale_temp_files

VIDEO_SUFFIXES = (".gif", ".mp4")


def _check_frame(frame: np.ndarray, label: str) -> np.ndarray:
    """Validate one uint8 (H, W, 3) image."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ParameterError(
            f"{label}: expected a uint8 (H, W, 3) image, got {frame.dtype} {frame.shape}"
        )
    return np.ascontiguousarray(frame)


def _check_frames(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate that every frame is a uint8 (H, W, 3) array of one common size."""
    if len(frames) == 0:
        raise ParameterError("frames: no frame to write")
    checked = [_check_frame(frame, f"frames[{index}]") for index, frame in enumerate(frames)]
    for index, frame in enumerate(checked):
        if frame.shape != checked[0].shape:
            raise ParameterError(
                f"frames[{index}]: size {frame.shape[:2]} differs from frames[0] "
                f"{checked[0].shape[:2]}"
            )
    return checked


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int) -> Path:
    """Write ``frames`` to ``path``; the suffix picks the format.

    Args:
        frames: uint8 (H, W, 3) images, all of one size.
        path: ``*.gif`` (loops forever) or ``*.mp4`` (H.264 via imageio-ffmpeg; H and W
            are padded up to even numbers as yuv420p requires).
        fps: frames per second, at least 1.

    Returns:
        The path written. Parent folders are created.
    """
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ParameterError(
            f"{path}: unsupported video format {suffix or '(none)'}; use one of "
            f"{', '.join(VIDEO_SUFFIXES)}"
        )
    if not isinstance(fps, (int, np.integer)) or fps < 1:
        raise ParameterError(f"fps: expected a positive whole number, got {fps!r}")
    checked = _check_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)  # left by a killed render of the same file

    if suffix == ".gif":
        # Pillow takes the per-frame duration in milliseconds; loop=0 repeats forever.
        gif = iio.imwrite(
            "<bytes>", np.stack(checked), extension=".gif", duration=1000.0 / fps, loop=0
        )
        atomic_write_bytes(path, gif)
        return path

    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError as exc:
        raise HandnerfError(
            f"{path}: writing MP4 needs the imageio-ffmpeg package, which is not installed; "
            "install it (pip install imageio-ffmpeg) or write a .gif instead"
        ) from exc
    import imageio.v2 as iio2

    height, width = checked[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    # yuv420p (the pixel format players accept) needs even sides; pad rather than let
    # the writer rescale the frames.
    with (
        atomic_path(path, keep_suffix=True) as tmp,
        iio2.get_writer(
            tmp,
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            macro_block_size=1,
        ) as writer,
    ):
        for frame in checked:
            writer.append_data(np.pad(frame, pad, mode="edge"))
    return path


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 0) -> np.ndarray:
    """Join two uint8 (H, W, 3) images horizontally.

    Args:
        left: (H1, W1, 3) image.
        right: (H2, W2, 3) image.
        gap: width of a black separating column in pixels.

    Returns:
        (max(H1, H2), W1 + gap + W2, 3) uint8; the shorter image is centred vertically
        on black.
    """
    images = [_check_frame(left, "left"), _check_frame(right, "right")]
    if gap < 0:
        raise ParameterError(f"gap: expected a non-negative width, got {gap}")
    height = max(image.shape[0] for image in images)
    width = images[0].shape[1] + gap + images[1].shape[1]
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    column = 0
    for image in images:
        top = (height - image.shape[0]) // 2
        canvas[top : top + image.shape[0], column : column + image.shape[1]] = image
        column += image.shape[1] + gap
    return canvas
