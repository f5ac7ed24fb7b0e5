"""``handnerf prepare --hand both``: the two-hand cache equals the in-memory two-hand
reader, fits like the root it came from, counts a null-hand frame, refuses bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from handnerf.data.cache import PreparedCache
from handnerf.data.crops import CropConfig, crop_hand
from handnerf.data.interhand import InterHandCapture
from handnerf.data.masks import mask_iou
from handnerf.data.prepare import PrepareSpec, prepare_cache
from handnerf.data.two_hand_masks import TwoHandMasker
from handnerf.errors import ConfigError, DataError, SelectionError
from handnerf.hand.hand_model import HandModel
from handnerf.synth.two_hands import NOVEL_SEQ, TRAIN_SEQS
from handnerf.train.config import DataConfig
from handnerf.train.fit_data import load_fit_data, sequence_mano

TRAIN_SEQ = TRAIN_SEQS["interlock"]
MANO_JSON = Path("annotations") / "test" / "InterHand2.6M_test_MANO_NeuralAnnot.json"
CROP = CropConfig(mode="crop", scale=1.3, out_size=48)
SIDES = ("right", "left")


def spec(**changes: Any) -> PrepareSpec:
    base: dict[str, Any] = {
        "seqs": (TRAIN_SEQ, NOVEL_SEQ),
        "hand": "both",
        "crop": CROP,
        "filters": None,
    }
    return PrepareSpec(**{**base, **changes})


def data_config(**changes: Any) -> DataConfig:
    base: dict[str, Any] = {
        "hand": "both",
        "train_seq": TRAIN_SEQ,
        "novel_pose_seq": NOVEL_SEQ,
        "crop_size": 48,
        "crop_scale": 1.3,
        "holdout_every": 3,
    }
    return DataConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def two_hand_cache(tiny_two_hand_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "two_hands"
    prepare_cache(tiny_two_hand_capture, out, spec(), workers=1, progress=False)
    return out


def test_two_hand_cache_matches_the_in_memory_reader(
    tiny_two_hand_capture: Path, two_hand_cache: Path
) -> None:
    cache = PreparedCache(two_hand_cache)
    assert cache.hand == "both" and cache.sequences == sorted([TRAIN_SEQ, NOVEL_SEQ])
    models = {side: HandModel.from_folder(None, side) for side in SIDES}
    assert cache.hand_sha == ",".join(str(models[side].data.sha256) for side in SIDES)
    masker = TwoHandMasker(models)
    compared = 0
    for seq in (TRAIN_SEQ, NOVEL_SEQ):
        capture = InterHandCapture(tiny_two_hand_capture, hand="both", seqs=[seq])
        entries = cache.entries(seq)
        assert sorted(e.view.key for e in entries) == sorted(v.key for v in capture.views)
        by_key = {v.key: v for v in capture.views}
        for entry in entries:
            view = by_key[entry.view.key]
            assert entry.view.hand == "both" and entry.view.mano == {}
            assert entry.view.two_hands is not None and list(entry.view.two_hands) == list(SIDES)
            for side in SIDES:
                for name in ("pose", "shape", "trans"):
                    np.testing.assert_array_equal(
                        entry.view.two_hands[side][name], view.hands_mano[side][name]
                    )
            np.testing.assert_array_equal(entry.view.keypoints_world, view.keypoints_world)
            # the stored mask is the union of both hands, the crop holds both hands
            union = masker.mask(view)
            (vertices,) = masker.posed_vertices([view])
            image = capture.load_image(view)
            expected = crop_hand(
                image, view.camera, mask=union, points=vertices, scale=1.3, out_size=48
            )
            stored = cache.read(entry)
            assert stored.mask is not None and expected.mask is not None
            assert mask_iou(stored.mask, expected.mask) > 0.98
            assert stored.box == expected.box
            np.testing.assert_array_equal(stored.image, expected.image)
            visible = masker.visible(view)
            assert all(visible[side].sum() > 100 for side in SIDES)
            compared += 1
    assert compared == 6 * (2 + 2)
    index = json.loads((two_hand_cache / "index.json").read_text())
    assert index["hand"]["side"] == "both" and index["spec"]["hand"] == "both"
    assert all(set(frame["two_hands"]) == set(SIDES) for frame in index["frames"])


def test_fit_data_from_two_hand_cache_equals_fit_data_from_root(
    tiny_two_hand_capture: Path, two_hand_cache: Path
) -> None:
    cfg = data_config()
    direct = load_fit_data(tiny_two_hand_capture, cfg, progress=False)
    cached = load_fit_data(two_hand_cache, cfg, progress=False)
    assert cached.fit_hands.both and cached.hand_identity == direct.hand_identity
    assert cached.hand_identity["side"] == "both"
    torch.testing.assert_close(cached.betas, direct.betas)
    assert cached.camera_names == direct.camera_names
    assert cached.holdout_cameras == direct.holdout_cameras
    for name in ("train", "val", "novel_pose"):
        a, b = getattr(cached, name), getattr(direct, name)
        assert a.frame_keys == b.frame_keys
        assert [v.key for v in a.views] == [v.key for v in b.views]
        assert isinstance(a.mano, dict) and isinstance(b.mano, dict)
        for side in SIDES:
            torch.testing.assert_close(a.mano[side].hand_pose, b.mano[side].hand_pose)
            torch.testing.assert_close(a.mano[side].transl, b.mano[side].transl)
        torch.testing.assert_close(a.stack.K, b.stack.K)
        assert torch.equal(a.stack.frame_ids, b.stack.frame_ids)
        assert (a.stack.masks == b.stack.masks).float().mean() > 0.99
    mano = sequence_mano(two_hand_cache, cfg, NOVEL_SEQ)
    assert isinstance(mano, dict) and direct.novel_pose is not None
    novel = direct.novel_pose.mano
    assert isinstance(novel, dict)
    for side in SIDES:
        torch.testing.assert_close(mano[side].transl, novel[side].transl)
    # the cache fixes the hand: a one-hand fit of it is refused, naming the key
    with pytest.raises(SelectionError, match=r"data\.hand='right'.*holds hand 'both'"):
        load_fit_data(two_hand_cache, data_config(hand="right"), progress=False)


def test_a_null_hand_frame_is_a_counted_skip(tiny_two_hand_capture: Path, tmp_path: Path) -> None:
    root = tmp_path / "capture"
    shutil.copytree(tiny_two_hand_capture, root)
    mano = json.loads((root / MANO_JSON).read_text())
    frames = sorted({v.frame_idx for v in InterHandCapture(root, hand="both", seqs=[NOVEL_SEQ])})
    mano["0"][str(frames[0])]["right"] = None
    (root / MANO_JSON).write_text(json.dumps(mano))
    out = tmp_path / "cache"
    summary = prepare_cache(root, out, spec(seqs=(NOVEL_SEQ,)), workers=1, progress=False)
    assert summary.n_views == summary.n_kept == 6
    cache = PreparedCache(out)
    assert cache.frames(NOVEL_SEQ) == frames[1:]
    index = json.loads((out / "index.json").read_text())
    assert index["skipped"] == {"MANO entry is null (right hand; both needed)": 6}
    # the left hand alone keeps every frame (only the right hand's MANO is null)
    left = prepare_cache(
        root, tmp_path / "left", spec(seqs=(NOVEL_SEQ,), hand="left"), workers=1, progress=False
    )
    assert left.n_kept == 12


def test_bad_two_hand_input_is_refused(
    tiny_two_hand_capture: Path, two_hand_cache: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"refine_masks.*'both'"):
        prepare_cache(
            tiny_two_hand_capture, tmp_path / "refined", spec(refine_masks=True), progress=False
        )
    assert not (tmp_path / "refined").exists()
    with pytest.raises(SelectionError, match="hands are right, left, both"):
        prepare_cache(tiny_two_hand_capture, tmp_path / "two", spec(hand="two"), progress=False)
    # a damaged index: one frame lost its left hand's MANO
    broken = tmp_path / "broken"
    shutil.copytree(two_hand_cache, broken)
    index = json.loads((broken / "index.json").read_text())
    frame = index["frames"][0]
    del frame["two_hands"]["left"]
    (broken / "index.json").write_text(json.dumps(index))
    where = rf"index.json: frames\[{frame['seq']} {frame['frame']}\].two_hands.left: missing"
    with pytest.raises(DataError, match=where):
        PreparedCache(broken).entries(frame["seq"])
    with pytest.raises(DataError, match=where):
        load_fit_data(broken, data_config(), progress=False)
