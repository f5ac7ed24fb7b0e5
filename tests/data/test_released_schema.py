"""Both readers on the released InterHand2.6M schema (the ``released`` fixture).

Booleans in joint_3d.json, integers and 0/1 floats in data.json, ``'interacting'``
frames of ``_dh_`` sequences, null MANO hands, the older ``annotations/all`` layout and
30 fps frame numbers; validity fields accept booleans, MANO and camera numbers do not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handnerf.data.interhand import InterHandCapture
from handnerf.data.stream import select_views
from handnerf.errors import DataError

READERS: dict[str, Callable[..., Any]] = {"in-memory": InterHandCapture, "streamed": select_views}


#: The ``released`` fixture (tests/data/conftest.py's ReleasedCapture).
Released = Any


def annotation(released: Released, kind: str) -> Path:
    return released.root / "annotations" / "all" / f"InterHand2.6M_{released.split}_{kind}.json"


def rewrite(released: Released, kind: str, change: Callable[[Any], None]) -> None:
    path = annotation(released, kind)
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def read(released: Released, reader: str, **selection: Any) -> Any:
    return READERS[reader](released.root, split=released.split, **selection)


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("hand", ["right", "left"])
def test_released_schema_is_read_with_every_frame_accounted_for(
    released: Released, reader: str, hand: str
) -> None:
    selection = read(released, reader, hand=hand)
    kept = released.frames_with(hand)
    assert sorted({v.frame_idx for v in selection.views}) == kept
    assert len(selection.views) == len(kept) * len(released.cameras)
    # the frames whose MANO entry for this hand is null are counted skips
    null_frames = len(released.frames) - len(kept)
    assert dict(selection.selection_report.skipped) == {
        f"MANO entry is null ({hand} hand)": null_frames * len(released.cameras)
    }
    notes = selection.selection_report.notes
    assert "annotation layout: legacy (annotations/all)" in notes
    assert "2 selected frame(s) show both hands (hand_type 'interacting')" in notes
    for view in selection.views:
        seq, hand_type, _, _ = released.frames[view.frame_idx]
        assert view.seq_name == seq
        assert view.image_path.name == f"image{view.frame_idx:04d}.jpg"
        assert (view.camera.width, view.camera.height) in {(w, h) for _, w, h in released.cameras}
        expected_type = None if view.frame_idx == released.hand_type_invalid_frame else hand_type
        assert view.hand_type == expected_type
        # JSON booleans of joint_3d.json: all true but the right hand's thumb2
        expected_valid = np.ones(21, dtype=bool)
        if hand == "right":
            expected_valid[released.invalid_right_joint] = False
        assert view.keypoints_valid is not None
        np.testing.assert_array_equal(view.keypoints_valid, expected_valid)
        assert view.bbox == (100.0, 150.0, 120.0, 140.0)


def test_both_readers_agree_on_the_released_schema(
    released: Released, same_selection: Callable[[Any, InterHandCapture], None]
) -> None:
    for hand in ("right", "left"):
        for seqs in (None, released.two_hand_seq):
            same_selection(
                read(released, "streamed", hand=hand, seqs=seqs),
                read(released, "in-memory", hand=hand, seqs=seqs),
            )


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_hidden_hand_reads_as_invalid_joints(released: Released, reader: str) -> None:
    """joint_3d.json's ``false`` flags mark the out-of-view left hand's joints invalid."""

    def hide_left_joints_of_interacting_frame(joints: Any) -> None:
        joints["0"]["9998"]["joint_valid"][21:] = [[False]] * 21

    rewrite(released, "joint_3d", hide_left_joints_of_interacting_frame)
    selection = read(released, reader, hand="left")
    valid = {v.frame_idx: v.keypoints_valid for v in selection.views}
    assert valid[9998] is not None and not valid[9998].any()
    assert valid[9999] is not None and valid[9999].all()


def _bool_in_mano(mano: Any) -> None:
    mano["0"]["9998"]["right"]["pose"][4] = True


def _bool_in_focal(cameras: Any) -> None:
    cameras["0"]["focal"]["400263"] = [True, 1201.5]


@pytest.mark.parametrize("reader", sorted(READERS))
def test_booleans_stay_refused_in_mano_parameters_and_cameras(
    released: Released, reader: str
) -> None:
    rewrite(released, "MANO_NeuralAnnot", _bool_in_mano)
    selection = read(released, reader, hand="right")
    assert 9998 not in {v.frame_idx for v in selection.views}
    assert selection.selection_report.skipped["MANO entry malformed (right hand)"] == 2
    rewrite(released, "camera", _bool_in_focal)
    with pytest.raises(DataError, match=r"camera\.json.*camera '400263'.*focal.*true/false"):
        read(released, reader, hand="right")


def _set_joint_flag(value: Any) -> Callable[[Any], None]:
    def change(joints: Any) -> None:
        joints["0"]["9999"]["joint_valid"][3] = [value]

    return change


def _set_hand_type_valid(value: Any) -> Callable[[Any], None]:
    def change(joints: Any) -> None:
        joints["0"]["9999"]["hand_type_valid"] = value

    return change


def _set_hand_type(value: Any) -> Callable[[Any], None]:
    def change(joints: Any) -> None:
        joints["0"]["9999"]["hand_type"] = value

    return change


def _set_data_joint_flag(value: Any) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        data["annotations"][2]["joint_valid"][0] = [value]

    return change


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        (
            "joint_3d",
            _set_joint_flag(2),
            r"joint_3d\.json: joints\['0'\]\['9999'\]\['joint_valid'\]",
        ),
        ("joint_3d", _set_joint_flag(0.5), r"\['joint_valid'\] must hold 0/1 or true/false"),
        ("joint_3d", _set_joint_flag("true"), r"\['joint_valid'\]"),
        ("joint_3d", _set_joint_flag(None), r"\['joint_valid'\]"),
        ("joint_3d", _set_hand_type_valid([True]), r"\['9999'\]\['hand_type_valid'\]"),
        ("joint_3d", _set_hand_type_valid(-1), r"\['9999'\]\['hand_type_valid'\]"),
        ("joint_3d", _set_hand_type("both"), r"\['9999'\]\['hand_type'\] must be one of right"),
        ("data", _set_data_joint_flag(7), r"data\.json: annotations\[2\]\['joint_valid'\]"),
    ],
)
def test_bad_validity_fields_are_named(
    released: Released, reader: str, kind: str, change: Callable[[Any], None], field: str
) -> None:
    rewrite(released, kind, change)
    with pytest.raises(DataError, match=field):
        read(released, reader, hand="right")


@pytest.mark.parametrize("reader", sorted(READERS))
def test_the_current_layout_wins_over_the_older_one(released: Released, reader: str) -> None:
    """With both layouts present, annotations/{split}/ is read (here: one frame only)."""
    current = released.root / "annotations" / released.split
    current.mkdir()
    for kind in ("data", "camera", "joint_3d", "MANO_NeuralAnnot"):
        annotation(released, kind).rename(current / annotation(released, kind).name)
    rewrite_current = current / f"InterHand2.6M_{released.split}_data.json"
    data = json.loads(rewrite_current.read_text())
    data["images"] = [img for img in data["images"] if img["frame_idx"] == 10002]
    rewrite_current.write_text(json.dumps(data))
    selection = read(released, reader, hand="right")
    assert {v.frame_idx for v in selection.views} == {10002}
    assert not any("legacy" in note for note in selection.selection_report.notes)
