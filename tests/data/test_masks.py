"""MANO silhouettes: exact areas on hand-made meshes, the disk cache, IoU against synth masks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from handnerf.data.camera import PinholeCamera
from handnerf.data.interhand import FrameView, InterHandCapture
from handnerf.data.masks import (
    ManoMasker,
    MaskCache,
    MaskKey,
    faces_in_front,
    hand_model_sha,
    mask_iou,
    mesh_silhouette,
)


def plane_camera() -> PinholeCamera:
    # R = I, centre 1 m behind the world origin: a point (X, Y, 0) lands at (100 X, 100 Y).
    return PinholeCamera.from_interhand(
        [0.0, 0.0, -1000.0], np.eye(3).tolist(), [100.0, 100.0], [0.0, 0.0], 50, 50, "c", "test"
    )


# The square u in [10.2, 29.8], v in [20.2, 39.8] covers the centres of columns 10..29 and
# rows 20..39: exactly 20 x 20 = 400 pixels.
SQUARE = np.array(
    [[0.102, 0.202, 0.0], [0.298, 0.202, 0.0], [0.298, 0.398, 0.0], [0.102, 0.398, 0.0]]
)


@pytest.mark.parametrize("supersample", [1, 4])
def test_square_fills_exactly_its_pixels(supersample: int) -> None:
    mask = mesh_silhouette(plane_camera(), SQUARE, np.array([[0, 1, 2], [0, 2, 3]]), supersample)
    assert mask.shape == (50, 50) and mask.dtype == bool
    expected = np.zeros((50, 50), bool)
    expected[20:40, 10:30] = True
    np.testing.assert_array_equal(mask, expected)


def test_overlapping_faces_make_a_union_not_holes() -> None:
    # Both triangulations of the square: every interior pixel is covered twice, which an
    # even-odd polygon fill would leave empty.
    faces = np.array([[0, 1, 2], [0, 2, 3], [0, 1, 3], [1, 2, 3]])
    mask = mesh_silhouette(plane_camera(), SQUARE, faces)
    assert mask.sum() == 400 and mask[20:40, 10:30].all()


def test_faces_behind_the_camera_are_dropped() -> None:
    vertices = np.vstack([SQUARE, [[0.0, 0.0, -2.0]]])  # the last vertex is 1 m behind the camera
    faces = np.array([[0, 1, 2], [0, 2, 3], [1, 2, 4]])
    _, kept, dropped = faces_in_front(plane_camera(), vertices, faces)
    assert dropped == 1 and kept.tolist() == [[0, 1, 2], [0, 2, 3]]
    assert mesh_silhouette(plane_camera(), vertices, faces).sum() == 400


def test_mask_cache_round_trip_and_recovery(tmp_path: Path) -> None:
    cache = MaskCache(tmp_path / "masks")
    key = MaskKey(0, "seq", "400002", 12, "right", "ab" * 32, 4)
    mask = np.random.default_rng(0).random((30, 20)) > 0.5
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return mask

    np.testing.assert_array_equal(cache.get_or_compute(key, compute), mask)
    np.testing.assert_array_equal(cache.get_or_compute(key, compute), mask)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    path = cache.path(key)
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    other = MaskKey(0, "seq", "400002", 12, "right", "cd" * 32, 4)
    assert cache.get(other) is None  # another hand model never shares a cached mask
    path.write_bytes(b"not a png")
    np.testing.assert_array_equal(cache.get_or_compute(key, compute), mask)
    assert len(calls) == 2


def gt_mask(root: Path, view: FrameView) -> np.ndarray:
    path = (
        root
        / "gt_masks"
        / view.split
        / f"Capture{view.capture}"
        / view.seq_name
        / f"cam{view.camera_id}"
        / f"image{view.frame_idx:04d}.png"
    )
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return image > 127


def test_mano_masks_match_synth_ground_truth_and_cache(synth_tiny: Path, tmp_path: Path) -> None:
    from handnerf.hand.hand_model import HandModel

    capture = InterHandCapture(synth_tiny, split="test", capture=0)
    hand = HandModel.from_folder(None, "right")
    cache = MaskCache(tmp_path / "cache")
    masker = ManoMasker(hand, cache=cache)
    masks = masker.masks(capture.views)
    ious = [mask_iou(m, gt_mask(synth_tiny, v)) for v, m in zip(capture.views, masks, strict=True)]
    assert min(ious) >= 0.95, ious
    assert float(np.mean(ious)) >= 0.97
    assert masker.computed == len(capture.views)

    again = ManoMasker(hand, cache=cache)
    cached = again.masks(capture.views)
    assert again.computed == 0 and not again._vertices  # no forward pass, no fill
    assert cache.hits == len(capture.views)
    for a, b in zip(masks, cached, strict=True):
        np.testing.assert_array_equal(a, b)
    assert again.model_sha == hand_model_sha(hand)


def test_mask_cache_never_reuses_a_mask_of_other_mano_or_camera(
    synth_tiny: Path, tmp_path: Path
) -> None:
    """Annotations replaced since the masks were cached (refined MANO written back, a
    corrected camera) give new masks, not the stale ones."""
    from handnerf.hand.hand_model import HandModel

    view = InterHandCapture(synth_tiny, split="test", capture=0).views[0]
    hand = HandModel.from_folder(None, "right")
    cache = MaskCache(tmp_path / "cache")
    first = ManoMasker(hand, cache=cache).mask(view)
    moved = dataclasses.replace(view, mano={**view.mano, "trans": view.mano["trans"] + 0.01})
    recut = dataclasses.replace(
        view, camera=dataclasses.replace(view.camera, t=view.camera.t + np.array([0.01, 0, 0]))
    )
    for other in (moved, recut):
        masker = ManoMasker(hand, cache=cache)
        mask = masker.mask(other)
        assert masker.computed == 1
        assert mask_iou(mask, first) < 0.95
        np.testing.assert_array_equal(mask, ManoMasker(hand).mask(other))
    again = ManoMasker(hand, cache=cache)
    np.testing.assert_array_equal(again.mask(view), first)
    assert again.computed == 0
