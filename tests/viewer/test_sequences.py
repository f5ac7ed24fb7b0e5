"""The viewer's sequences, cameras and photos, from an InterHand2.6M root and from a cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.data.cache import PreparedCache
from handnerf.data.crops import CropConfig
from handnerf.data.interhand import InterHandCapture, load_image
from handnerf.data.prepare import PrepareSpec, prepare_cache
from handnerf.errors import DataError
from handnerf.hand.hand_model import ManoParams
from handnerf.runs.loader import load_run
from handnerf.viewer.sequences import load_sequences

TRAIN_SEQ = "ROM04_RT_Occlusion"
NOVEL_SEQ = "ROM03_RT_No_Occlusion"


def test_a_root_gives_both_sequences_every_camera_and_the_photos(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    capture = load_sequences(run)
    train, novel = capture.sequences
    assert (train.name, train.role, novel.name, novel.role) == (
        TRAIN_SEQ,
        "training",
        NOVEL_SEQ,
        "novel pose",
    )
    views = InterHandCapture(run.data_root, seqs=[TRAIN_SEQ]).views
    assert list(capture.cameras) == sorted({v.camera_id for v in views})
    assert train.frames == sorted({v.frame_idx for v in views})
    view = views[-1]
    i = train.frames.index(view.frame_idx)
    given = ManoParams.from_interhand({k: v.tolist() for k, v in view.mano.items()}, where="test")
    want = run.frame_mano(TRAIN_SEQ, view.frame_idx, given)
    assert torch.equal(train.frame_mano(i).hand_pose, want.hand_pose)
    np.testing.assert_array_equal(capture.photo(train, i, view.camera_id), load_image(view))
    assert capture.photo(train, i, "no-such-camera") is None
    assert not capture.notes


def test_a_missing_novel_pose_sequence_is_a_note_not_an_error(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    data = dataclasses.replace(run.cfg.data, novel_pose_seq="ROM99_Nowhere")
    run.cfg = dataclasses.replace(run.cfg, data=data)
    capture = load_sequences(run)
    assert [s.role for s in capture.sequences] == ["training"]
    assert "ROM99_Nowhere" in capture.notes[0]


def test_a_cache_gives_its_kept_frames_cameras_and_stored_crops(
    tiny_capture: Path, small_fit: list[str], tmp_path: Path
) -> None:
    from handnerf.train.fit_job import run_fit

    cameras = sorted({v.camera_id for v in InterHandCapture(tiny_capture, seqs=[TRAIN_SEQ]).views})
    spec = PrepareSpec(
        seqs=(TRAIN_SEQ, NOVEL_SEQ),
        cameras=tuple(cameras[:-1]),
        crop=CropConfig(mode="crop", scale=1.3, out_size=48),
        filters=None,
    )
    cache_root = tmp_path / "cache"
    prepare_cache(tiny_capture, cache_root, spec, workers=1, progress=False)
    run_fit(cache_root, tmp_path / "run", overrides=[*small_fit, "train.steps=2"], progress=False)
    run = load_run(tmp_path / "run", device="cpu")
    capture = load_sequences(run)
    cache = PreparedCache(cache_root)
    assert list(capture.cameras) == cameras[:-1]  # the camera left out of the cache is absent
    novel = next(s for s in capture.sequences if s.role == "novel pose")
    assert novel.frames == cache.frames(NOVEL_SEQ)
    entry = cache.entries(NOVEL_SEQ)[0]
    i = novel.frames.index(entry.view.frame_idx)
    np.testing.assert_array_equal(
        capture.photo(novel, i, entry.view.camera_id), cache.read(entry).image
    )
    want = ManoParams.from_interhand(cache.mano(NOVEL_SEQ, entry.view.frame_idx), where="test")
    assert torch.equal(novel.frame_mano(i).global_orient, want.global_orient)


def test_a_run_whose_capture_is_gone_is_refused(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    run.info = {**run.info, "data_root": "/nonexistent/capture"}
    with pytest.raises(DataError, match="no longer exists"):
        load_sequences(run)
