"""``data.extra_train_seqs``: more sequences' views from the training cameras join the
training set; held-out cameras, validation and novel poses stay the training sequence's."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from handnerf.config import config_from_dict, load_config
from handnerf.data.interhand import InterHandCapture
from handnerf.data.prepare import PrepareSpec, prepare_cache
from handnerf.errors import ConfigError, DataError, NovelPoseSequenceError, SelectionError
from handnerf.synth.two_hands import NOVEL_SEQ as TWO_HAND_NOVEL_SEQ
from handnerf.synth.two_hands import TRAIN_SEQS
from handnerf.train.config import DataConfig, FitConfig, upgrade_saved_config
from handnerf.train.fit_data import FitData, ViewSet, load_fit_data

TRAIN_SEQ = "ROM04_RT_Occlusion"
#: The tiny capture's other sequence, trained on here (so no novel-pose sequence).
EXTRA_SEQ = "ROM03_RT_No_Occlusion"


def data_config(**changes: Any) -> DataConfig:
    base: dict[str, Any] = {
        "train_seq": TRAIN_SEQ,
        "novel_pose_seq": None,
        "crop_size": 48,
        "crop_scale": 1.3,
        "holdout_every": 3,
    }
    return DataConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def one_and_two(tiny_capture: Path) -> tuple[FitData, FitData]:
    """The tiny capture's fit data on its training sequence alone, and with the extra one."""
    alone = load_fit_data(tiny_capture, data_config(), progress=False)
    both = load_fit_data(tiny_capture, data_config(extra_train_seqs=[EXTRA_SEQ]), progress=False)
    return alone, both


def keys_of(views: ViewSet) -> set[tuple[Any, ...]]:
    return {v.key for v in views.views}


def assert_ids_name_each_view(data: FitData, views: ViewSet) -> None:
    """Each stacked view's frame id and camera id point at its own (seq, frame) and camera."""
    for i, view in enumerate(views.views):
        assert views.frame_keys[int(views.stack.frame_ids[i])] == (view.seq_name, view.frame_idx)
        assert data.camera_names[int(views.stack.camera_ids[i])] == view.camera_id


def test_extra_views_from_training_cameras_join_training_and_nothing_else_changes(
    tiny_capture: Path, one_and_two: tuple[FitData, FitData]
) -> None:
    alone, both = one_and_two
    assert both.camera_names == alone.camera_names
    assert both.holdout_cameras == alone.holdout_cameras and both.holdout_cameras
    assert both.train_cameras == alone.train_cameras

    extra = InterHandCapture(tiny_capture, seqs=[EXTRA_SEQ]).views
    from_training = {v.key for v in extra if v.camera_id in both.train_cameras}
    from_held_out = {v.key for v in extra if v.camera_id in both.holdout_cameras}
    assert from_training and from_held_out  # both kinds exist, so both checks can fail
    trained = keys_of(both.train)
    assert trained == keys_of(alone.train) | from_training
    assert not trained & from_held_out
    assert {v.camera_id for v in both.train.views} == set(both.train_cameras)

    extra_frames = {(EXTRA_SEQ, v.frame_idx) for v in extra}
    assert set(both.train.frame_keys) == set(alone.train.frame_keys) | extra_frames
    assert len(both.train.mano) == len(both.train.frame_keys)
    assert_ids_name_each_view(both, both.train)

    # Validation: the same held-out views of the training sequence, the same pixels.
    assert both.val is not None and alone.val is not None
    assert [v.key for v in both.val.views] == [v.key for v in alone.val.views]
    assert {v.seq_name for v in both.val.views} == {TRAIN_SEQ}
    assert torch.equal(both.val.stack.images, alone.val.stack.images)
    assert_ids_name_each_view(both, both.val)
    assert both.novel_pose is None and EXTRA_SEQ in both.selection
    assert both.fingerprint != alone.fingerprint


def test_views_from_cameras_the_training_sequence_lacks_are_dropped(
    tiny_capture: Path, tmp_path: Path
) -> None:
    root = tmp_path / "capture"
    shutil.copytree(tiny_capture, root)
    data_json = root / "annotations" / "test" / "InterHand2.6M_test_data.json"
    data = json.loads(data_json.read_text())
    cameras = sorted({str(img["camera"]) for img in data["images"]})
    gone = cameras[0]
    # The training sequence loses one camera; the extra sequence still has it.
    data["images"] = [
        img
        for img in data["images"]
        if not (img["seq_name"] == TRAIN_SEQ and str(img["camera"]) == gone)
    ]
    data_json.write_text(json.dumps(data))
    extra = InterHandCapture(root, seqs=[EXTRA_SEQ]).views
    assert gone in {v.camera_id for v in extra}

    fit = load_fit_data(root, data_config(extra_train_seqs=[EXTRA_SEQ]), progress=False)
    assert gone not in fit.camera_names
    assert gone not in {v.camera_id for v in fit.train.views}
    assert {v.seq_name for v in fit.train.views} == {TRAIN_SEQ, EXTRA_SEQ}


def test_a_trained_novel_pose_sequence_is_refused_naming_the_key(tiny_capture: Path) -> None:
    from types import SimpleNamespace

    from handnerf.evaluation.evaluate import select_views

    cfg = data_config(extra_train_seqs=[EXTRA_SEQ], novel_pose_seq=EXTRA_SEQ)
    with pytest.raises(NovelPoseSequenceError, match=r"data\.extra_train_seqs") as raised:
        load_fit_data(tiny_capture, cfg, progress=False)
    assert f"data.novel_pose_seq='{EXTRA_SEQ}'" in str(raised.value)
    # A run configured so (saved before the guard knew the key) is refused at evaluation.
    run = SimpleNamespace(cfg=SimpleNamespace(data=cfg), data_root=tiny_capture)
    with pytest.raises(NovelPoseSequenceError, match=r"data\.extra_train_seqs"):
        select_views(run, ("novel_pose",), None)  # type: ignore[arg-type]


def test_unknown_and_repeated_sequences_are_refused_naming_the_key(tiny_capture: Path) -> None:
    unknown = data_config(extra_train_seqs=["ROM99_Nowhere"])
    with pytest.raises(SelectionError, match=r"data\.extra_train_seqs: ROM99_Nowhere") as raised:
        load_fit_data(tiny_capture, unknown, progress=False)
    assert EXTRA_SEQ in str(raised.value)  # lists what the capture has
    for repeated in ([TRAIN_SEQ], [EXTRA_SEQ, EXTRA_SEQ]):
        cfg = data_config(extra_train_seqs=repeated)
        with pytest.raises(ConfigError, match=r"data\.extra_train_seqs=.*named twice"):
            load_fit_data(tiny_capture, cfg, progress=False)


def test_the_prepared_cache_gives_the_training_views_of_the_root(
    tiny_capture: Path, one_and_two: tuple[FitData, FitData], tmp_path: Path
) -> None:
    from handnerf.data.crops import CropConfig

    crop = CropConfig(mode="crop", scale=1.3, out_size=48)
    spec = PrepareSpec(seqs=(TRAIN_SEQ, EXTRA_SEQ), crop=crop, filters=None)
    cache = tmp_path / "cache"
    prepare_cache(tiny_capture, cache, spec, workers=1, progress=False)
    _, direct = one_and_two
    cached = load_fit_data(cache, data_config(extra_train_seqs=[EXTRA_SEQ]), progress=False)
    assert cached.camera_names == direct.camera_names
    assert cached.holdout_cameras == direct.holdout_cameras
    for name in ("train", "val"):
        a, b = getattr(cached, name), getattr(direct, name)
        assert a.frame_keys == b.frame_keys
        assert [v.key for v in a.views] == [v.key for v in b.views]
        torch.testing.assert_close(a.mano.hand_pose, b.mano.hand_pose)
        torch.testing.assert_close(a.stack.K, b.stack.K)
        assert torch.equal(a.stack.frame_ids, b.stack.frame_ids)
        assert torch.equal(a.stack.camera_ids, b.stack.camera_ids)
        assert (a.stack.masks == b.stack.masks).float().mean() > 0.99
    # A sequence the cache was not prepared with is refused, naming the key and the fix.
    only_train = tmp_path / "only_train"
    prepare_cache(
        tiny_capture, only_train, dataclasses.replace(spec, seqs=(TRAIN_SEQ,)), progress=False
    )
    cfg = data_config(extra_train_seqs=[EXTRA_SEQ])
    with pytest.raises(SelectionError, match=rf"data\.extra_train_seqs: .*{EXTRA_SEQ}.*--seq"):
        load_fit_data(only_train, cfg, progress=False)


def test_two_hands_train_on_several_interactions(
    tiny_two_hand_capture: Path, small_fit: list[str], tmp_path: Path
) -> None:
    from handnerf.train.fit_job import run_fit

    main, extra = TRAIN_SEQS["interlock"], TRAIN_SEQS["palms_touch"]
    overrides = [
        *small_fit,
        "data.hand=both",
        f"data.train_seq={main}",
        f"data.extra_train_seqs=[{extra}]",
        f"data.novel_pose_seq={TWO_HAND_NOVEL_SEQ}",
        "data.holdout_every=3",
        "train.refine_pose=false",
        "train.steps=2",
    ]
    result = run_fit(tiny_two_hand_capture, tmp_path / "run", overrides=overrides, progress=False)
    assert result.step == 2
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    held_out = set(info["holdout_cameras"])
    cfg = load_config(FitConfig, None, overrides)
    data = load_fit_data(tiny_two_hand_capture, cfg.data, progress=False)
    assert data.fingerprint == info["data_fingerprint"]
    assert set(data.holdout_cameras) == held_out
    extra_views = InterHandCapture(tiny_two_hand_capture, hand="both", seqs=[extra]).views
    trained_extra = {v.key for v in data.train.views if v.seq_name == extra}
    assert trained_extra == {v.key for v in extra_views if v.camera_id not in held_out}
    assert isinstance(data.train.mano, dict)
    assert all(len(data.train.mano[side]) == len(data.train.frame_keys) for side in data.train.mano)
    assert data.val is not None and {v.seq_name for v in data.val.views} == {main}
    assert data.novel_pose is not None
    assert {v.seq_name for v in data.novel_pose.views} == {TWO_HAND_NOVEL_SEQ}
    assert info["n_train_frames"] == len(data.train.frame_keys)


def test_a_run_saved_before_the_key_loads_with_no_extra_sequences() -> None:
    saved = dataclasses.asdict(FitConfig())
    del saved["data"]["extra_train_seqs"]
    upgraded = upgrade_saved_config(saved)
    assert upgraded["data"]["extra_train_seqs"] == []
    # Filled with a copy: changing one run's list leaves the next run's alone.
    upgraded["data"]["extra_train_seqs"].append("x")
    assert upgrade_saved_config(saved)["data"]["extra_train_seqs"] == []
    assert config_from_dict(FitConfig, upgraded).data.extra_train_seqs == ["x"]


def test_the_viewer_lists_every_training_sequence(tiny_run: Path) -> None:
    from handnerf.runs.loader import load_run
    from handnerf.viewer.sequences import load_sequences

    run = load_run(tiny_run, device="cpu")
    data = dataclasses.replace(run.cfg.data, extra_train_seqs=[EXTRA_SEQ], novel_pose_seq=None)
    run.cfg = dataclasses.replace(run.cfg, data=data)
    sequences = load_sequences(run).sequences
    assert [(s.name, s.role) for s in sequences] == [
        (TRAIN_SEQ, "training"),
        (EXTRA_SEQ, "training"),
    ]
    bad = dataclasses.replace(data, extra_train_seqs=["ROM99_Nowhere"])
    run.cfg = dataclasses.replace(run.cfg, data=bad)
    with pytest.raises(DataError, match="ROM99_Nowhere"):
        load_sequences(run)


def test_a_run_saved_before_the_key_resumes(
    tiny_capture: Path, small_fit: list[str], tmp_path: Path
) -> None:
    from handnerf.train.checkpoint import LATEST, load_checkpoint, save_checkpoint
    from handnerf.train.fit_job import run_fit

    run = tmp_path / "run"
    overrides = [*small_fit, "train.steps=2"]
    run_fit(tiny_capture, run, overrides=overrides, progress=False)
    path = run / "checkpoints" / LATEST
    state = load_checkpoint(path)
    del state["config"]["data"]["extra_train_seqs"]  # as runs saved before the key
    save_checkpoint(path, state)
    resumed = run_fit(tiny_capture, run, overrides=overrides, resume=True, progress=False)
    assert resumed.step == 2


def test_pose_refinement_corrects_every_training_sequences_frames(
    tiny_capture: Path, small_fit: list[str], tmp_path: Path
) -> None:
    from handnerf.train.checkpoint import load_checkpoint
    from handnerf.train.fit_job import run_fit
    from handnerf.train.pose_refinement import refined_mano_of

    overrides = [
        *small_fit,
        f"data.extra_train_seqs=[{EXTRA_SEQ}]",
        "data.novel_pose_seq=null",
        "train.refine_pose=true",
        "train.pose_refine_start=1",
        "train.pose_refresh_every=2",
        "train.steps=3",
    ]
    fit = run_fit(tiny_capture, tmp_path / "run", overrides=overrides, progress=False)
    refined = refined_mano_of(load_checkpoint(fit.checkpoint))
    assert refined is not None
    frames = {
        (v.seq_name, v.frame_idx)
        for seq in (TRAIN_SEQ, EXTRA_SEQ)
        for v in InterHandCapture(tiny_capture, seqs=[seq]).views
    }
    assert set(refined) == frames
