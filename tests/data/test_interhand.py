"""InterHandCapture on the hand-written root (both layouts, bad inputs) and a synth capture."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handnerf.data.camera import PinholeCamera
from handnerf.data.interhand import InterHandCapture, json_parse_count, load_image
from handnerf.errors import DataError, SelectionError

SPLIT = "test"
TRAIN_SEQ = "ROM04_RT_Occlusion"
NOVEL_SEQ = "ROM03_RT_No_Occlusion"
CAMERA_IDS = ["400002", "400004", "410001"]


def annotation(root: Path, kind: str, folder: str = SPLIT) -> Path:
    return root / "annotations" / folder / f"InterHand2.6M_{SPLIT}_{kind}.json"


def test_selects_frames_with_valid_mano_and_counts_every_skip(interhand_root: Path) -> None:
    capture = InterHandCapture(interhand_root, split=SPLIT, capture=0)
    report = capture.selection_report
    # capture 0: 6 frames x 3 cameras = 18 images; frame 13 (null) and 16 (NaN) lose 3 each.
    assert report.count("images in split") == 21
    assert report.count("in capture 0") == 18
    assert report.count("with right-hand MANO") == 12
    assert report.skipped["MANO entry is null (right hand)"] == 3
    assert report.skipped["MANO entry has NaN/inf (right hand)"] == 3
    assert len(capture.views) == 12
    assert capture.camera_ids == CAMERA_IDS
    assert capture.frames == [(NOVEL_SEQ, 100), (NOVEL_SEQ, 103), (TRAIN_SEQ, 10), (TRAIN_SEQ, 19)]
    text = str(report)
    assert "MANO entry is null" in text and "selected views" in text


def test_views_carry_converted_cameras_mano_and_keypoints(interhand_root: Path) -> None:
    capture = InterHandCapture(interhand_root, capture=0, seqs=TRAIN_SEQ, cameras=["cam400004"])
    cams = json.loads(annotation(interhand_root, "camera").read_text())["0"]
    mano = json.loads(annotation(interhand_root, "MANO_NeuralAnnot").read_text())["0"]
    joints = json.loads(annotation(interhand_root, "joint_3d").read_text())["0"]
    assert [(v.frame_idx, v.camera_id) for v in capture.views] == [(10, "400004"), (19, "400004")]
    for view in capture.views:
        camera = view.camera
        R = np.array(cams["camrot"]["400004"])
        np.testing.assert_allclose(camera.R, R)
        np.testing.assert_allclose(
            camera.t, -R @ np.array(cams["campos"]["400004"]) / 1000, atol=1e-12
        )
        np.testing.assert_allclose(
            camera.center, np.array(cams["campos"]["400004"]) / 1000, atol=1e-12
        )
        np.testing.assert_allclose(camera.K[[0, 1], [0, 1]], cams["focal"]["400004"])
        np.testing.assert_allclose(camera.K[:2, 2], cams["princpt"]["400004"])
        assert (camera.width, camera.height) == (60, 40)
        entry = mano[str(view.frame_idx)]["right"]
        for name in ("pose", "shape", "trans"):
            np.testing.assert_array_equal(view.mano[name], entry[name])
        world = np.array(joints[str(view.frame_idx)]["world_coord"])
        np.testing.assert_allclose(view.keypoints_world, world[:21] / 1000)
        assert view.keypoints_valid is not None
        assert view.keypoints_valid.tolist() == [True] * 20 + [False]
        assert view.image_path.is_file()
        assert view.bbox is not None and view.bbox[:2] == (5.0, 6.0)
        assert load_image(view).shape == (40, 60, 3)


def test_left_hand_stride_and_camera_lists(interhand_root: Path) -> None:
    left = InterHandCapture(interhand_root, capture=0, hand="left")
    assert len(left.views) == 18  # every left entry is valid
    assert left.views[0].mano["pose"].shape == (48,)
    strided = InterHandCapture(
        interhand_root,
        capture=0,
        hand="left",
        seqs=[TRAIN_SEQ],
        stride=2,
        exclude_cameras=["410001"],
    )
    assert strided.frames == [(TRAIN_SEQ, 10), (TRAIN_SEQ, 16)]
    assert strided.camera_ids == ["400002", "400004"]
    assert strided.selection_report.count("cameras kept (2 of 3)") == 8
    dropped = InterHandCapture(interhand_root, capture=0, drop_grayscale_cameras=True)
    assert dropped.camera_ids == ["400002", "400004"]


def test_legacy_layout_gives_the_same_views(make_interhand_root: Callable[..., Path]) -> None:
    current = InterHandCapture(make_interhand_root("current"), capture=0)
    legacy_root = make_interhand_root("legacy")
    assert annotation(legacy_root, "data", "all").is_file()
    assert not (legacy_root / "annotations" / SPLIT).exists()
    legacy = InterHandCapture(legacy_root, capture=0)
    assert [v.key for v in legacy.views] == [v.key for v in current.views]
    for a, b in zip(legacy.views, current.views, strict=True):
        np.testing.assert_array_equal(a.camera.K, b.camera.K)
        np.testing.assert_array_equal(a.mano["pose"], b.mano["pose"])
    assert any("legacy" in note for note in legacy.selection_report.notes)


def test_each_annotation_file_is_parsed_once(interhand_root: Path) -> None:
    InterHandCapture(interhand_root, capture=0)
    InterHandCapture(interhand_root, capture=0, hand="left", stride=2)
    for kind in ("data", "camera", "joint_3d", "MANO_NeuralAnnot"):
        assert json_parse_count(annotation(interhand_root, kind)) == 1, kind


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capture": 5}, r"capture 5 not in .*captures: 0, 1"),
        ({"seqs": "nope"}, rf"sequence\(s\) nope not in capture 0.*{NOVEL_SEQ}, {TRAIN_SEQ}"),
        ({"cameras": ["400099"]}, r"camera\(s\) 400099 not in capture 0.*400002, 400004, 410001"),
        ({"exclude_cameras": ["123"]}, r"excluded camera\(s\) 123"),
        ({"split": "dev"}, r"unknown split 'dev'"),
        ({"hand": "two"}, r"unknown hand 'two'; hands are right, left, both"),
        ({"seqs": TRAIN_SEQ, "cameras": ["400002"], "stride": 1000}, None),
    ],
)
def test_unknown_selections_list_what_exists(
    interhand_root: Path, kwargs: dict[str, object], message: str | None
) -> None:
    if message is None:  # a valid selection keeps only the first frame
        capture = InterHandCapture(interhand_root, **kwargs)  # type: ignore[arg-type]
        assert capture.frames == [(TRAIN_SEQ, 10)]
        return
    with pytest.raises(SelectionError, match=message):
        InterHandCapture(interhand_root, **kwargs)  # type: ignore[arg-type]


def test_empty_selection_is_an_error_with_the_report(interhand_root: Path) -> None:
    mano_path = annotation(interhand_root, "MANO_NeuralAnnot")
    mano = json.loads(mano_path.read_text())
    for frame in mano["1"].values():
        frame["right"] = None
    mano_path.write_text(json.dumps(mano))
    with pytest.raises(SelectionError, match=r"keeps no image(.|\n)*MANO entry is null"):
        InterHandCapture(interhand_root, capture=1)


@pytest.mark.parametrize("kind", ["data", "camera", "MANO_NeuralAnnot"])
def test_missing_annotation_file_is_named(interhand_root: Path, kind: str) -> None:
    path = annotation(interhand_root, kind)
    path.unlink()
    with pytest.raises(DataError, match="missing annotation file") as info:
        InterHandCapture(interhand_root)
    assert str(path) in str(info.value)


def test_missing_joint_3d_is_optional(interhand_root: Path) -> None:
    annotation(interhand_root, "joint_3d").unlink()
    capture = InterHandCapture(interhand_root)
    assert all(v.keypoints_world is None for v in capture.views)
    assert any("joint_3d" in note for note in capture.selection_report.notes)


def test_corrupt_json_and_bad_camera_are_named(interhand_root: Path) -> None:
    camera_path = annotation(interhand_root, "camera")
    cams = json.loads(camera_path.read_text())
    cams["0"]["camrot"]["400004"] = [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    camera_path.write_text(json.dumps(cams))
    with pytest.raises(DataError, match=r"camera '400004'.*camrot is not a rotation") as info:
        InterHandCapture(interhand_root)
    assert str(camera_path) in str(info.value)
    del cams["0"]["focal"]["400004"]
    cams["0"]["camrot"]["400004"] = np.eye(3).tolist()
    camera_path.write_text(json.dumps(cams))
    with pytest.raises(DataError, match=r"missing cams\['0'\]\['focal'\]\['400004'\]"):
        InterHandCapture(interhand_root)
    camera_path.write_text('{"0": {"campos": ')
    with pytest.raises(DataError, match="not valid JSON"):
        InterHandCapture(interhand_root)


def test_truncated_and_wrong_size_images_are_named(interhand_root: Path) -> None:
    capture = InterHandCapture(interhand_root, capture=0, cameras=["400002"])
    first, second = capture.views[:2]
    data = first.image_path.read_bytes()
    first.image_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        load_image(first)
    assert str(first.image_path) in str(info.value)
    Image.new("RGB", (41, 60)).save(second.image_path)
    with pytest.raises(DataError, match=r"41x60 but data.json says width=40, height=60"):
        capture.load_image(second)


def test_missing_images_are_counted(interhand_root: Path) -> None:
    before = InterHandCapture(interhand_root)
    before.views[0].image_path.unlink()
    after = InterHandCapture(interhand_root)
    assert len(after.views) == len(before.views) - 1
    assert after.selection_report.skipped["image file missing"] == 1


# --------------------------------------------------------------------------- synth round trip


def test_synth_capture_round_trip(synth_tiny: Path) -> None:
    data_json = json.loads(
        (synth_tiny / "annotations/test/InterHand2.6M_test_data.json").read_text()
    )
    cams = json.loads((synth_tiny / "annotations/test/InterHand2.6M_test_camera.json").read_text())
    mano = json.loads(
        (synth_tiny / "annotations/test/InterHand2.6M_test_MANO_NeuralAnnot.json").read_text()
    )
    images = [img for img in data_json["images"] if img["capture"] == 0]
    capture = InterHandCapture(synth_tiny, split="test", capture=0)
    assert len(capture.views) == len(images)
    assert capture.selection_report.count("selected views") == len(images)
    assert not capture.selection_report.skipped
    by_id = {img["id"]: img for img in images}
    for view in capture.views:
        img = by_id[view.image_id]
        assert (view.camera.width, view.camera.height) == (img["width"], img["height"])
        expected = PinholeCamera.from_interhand(
            cams["0"]["campos"][view.camera_id],
            cams["0"]["camrot"][view.camera_id],
            cams["0"]["focal"][view.camera_id],
            cams["0"]["princpt"][view.camera_id],
            img["width"],
            img["height"],
            view.camera_id,
            "expected",
        )
        np.testing.assert_allclose(view.camera.K, expected.K)
        np.testing.assert_allclose(view.camera.R, expected.R)
        np.testing.assert_allclose(view.camera.t, expected.t, atol=1e-12)
        entry = mano["0"][str(view.frame_idx)]["right"]
        for name in ("pose", "shape", "trans"):
            np.testing.assert_allclose(view.mano[name], entry[name])
    image = load_image(capture.views[0])
    assert image.dtype == np.uint8 and image.shape == (
        capture.views[0].camera.height,
        capture.views[0].camera.width,
        3,
    )


def test_synth_projected_keypoints_lie_in_the_bbox(synth_tiny: Path) -> None:
    from handnerf.hand.hand_model import HandModel, ManoParams

    capture = InterHandCapture(synth_tiny, split="test", capture=0)
    hand = HandModel.from_folder(None, "right")
    params = ManoParams.stack(
        [ManoParams.from_interhand(v.mano, v.mano_where) for v in capture.views]
    )
    all_keypoints = hand.forward(params).keypoints.detach().numpy().astype(np.float64)
    checked = 0
    for view, keypoints in zip(capture.views, all_keypoints, strict=True):
        assert view.bbox is not None
        uv, depth = view.camera.project(keypoints)
        assert np.all(depth > 0)
        x, y, w, h = view.bbox
        inside = (
            (uv[:, 0] >= x - 1)
            & (uv[:, 0] <= x + w + 1)
            & (uv[:, 1] >= y - 1)
            & (uv[:, 1] <= y + h + 1)
        )
        assert inside.all(), (view.key, uv[~inside], view.bbox)
        if view.keypoints_world is not None:
            np.testing.assert_allclose(keypoints, view.keypoints_world, atol=2e-3)
        checked += 1
    assert checked == len(capture.views) > 0
