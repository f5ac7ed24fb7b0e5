"""Streaming selection: same views as InterHandCapture, clear errors, bounded memory."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from handnerf.data.interhand import InterHandCapture, clear_json_cache, json_parse_count
from handnerf.data.stream import select_views
from handnerf.errors import SelectionError

SPLIT = "test"
SameSelection = Callable[[Any, InterHandCapture], None]


@pytest.mark.parametrize(
    "selection",
    [
        {},
        {"seqs": "ROM04_RT_Occlusion"},
        {"seqs": ["ROM03_RT_No_Occlusion"], "cameras": ["cam400002", "400004"]},
        {"exclude_cameras": ["410001"], "stride": 2},
        {"hand": "left", "drop_grayscale_cameras": True},
        {"capture": 1},
    ],
)
def test_streamed_selection_equals_the_in_memory_reader(
    interhand_root: Path, selection: dict[str, Any], same_selection: SameSelection
) -> None:
    streamed = select_views(interhand_root, split=SPLIT, **selection)
    loaded = InterHandCapture(interhand_root, split=SPLIT, **selection)
    same_selection(streamed, loaded)
    # The NaN and null right-hand frames are skipped and counted, not dropped silently.
    if not selection:
        assert sum(streamed.selection_report.skipped.values()) > 0


def test_legacy_layout_streams_too(
    make_interhand_root: Callable[..., Path], same_selection: SameSelection
) -> None:
    root = make_interhand_root("legacy")
    streamed = select_views(root, split=SPLIT, seqs="ROM04_RT_Occlusion")
    same_selection(streamed, InterHandCapture(root, split=SPLIT, seqs="ROM04_RT_Occlusion"))
    assert any("legacy" in note for note in streamed.selection_report.notes)


def test_streaming_never_parses_whole_files(interhand_root: Path) -> None:
    clear_json_cache()
    selection = select_views(interhand_root, split=SPLIT, seqs="ROM04_RT_Occlusion")
    for path in (selection.files.data, selection.files.mano, selection.files.camera):
        assert json_parse_count(path) == 0


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ({"capture": 5}, "captures: 0, 1"),
        ({"seqs": "ROM99_nope"}, "sequences: ROM03_RT_No_Occlusion, ROM04_RT_Occlusion"),
        ({"cameras": ["499999"]}, "cameras: 400002, 400004, 410001"),
        ({"hand": "two"}, "hands are right, left, both"),
        ({"split": "dev"}, "splits are train, val, test"),
    ],
)
def test_bad_selections_list_what_exists(
    interhand_root: Path, selection: dict[str, Any], expected: str
) -> None:
    kwargs = {"split": SPLIT, **selection}
    with pytest.raises(SelectionError, match=expected):
        select_views(interhand_root, **kwargs)


def test_hand_absent_in_every_frame_says_what_the_other_hand_has(interhand_root: Path) -> None:
    mano_path = (
        interhand_root / "annotations" / SPLIT / f"InterHand2.6M_{SPLIT}_MANO_NeuralAnnot.json"
    )
    mano = json.loads(mano_path.read_text())
    for entry in mano["0"].values():
        entry["right"] = None
    mano_path.write_text(json.dumps(mano))
    with pytest.raises(SelectionError, match=r"right-hand MANO.*the left hand has 4") as info:
        select_views(interhand_root, split=SPLIT, seqs="ROM04_RT_Occlusion")
    assert "ROM04_RT_Occlusion" in str(info.value)


def test_memory_is_bounded_by_the_selection_not_the_split(interhand_root: Path) -> None:
    """A data.json padded with 30k records of another capture: parsing stays small."""
    root = interhand_root
    data_path = root / "annotations" / SPLIT / f"InterHand2.6M_{SPLIT}_data.json"
    data = json.loads(data_path.read_text())
    filler = [
        {
            "id": 10_000 + i,
            "file_name": f"Capture7/0000_neutral_relaxed/cam400002/image{i:05d}.jpg",
            "width": 334,
            "height": 512,
            "capture": 7,
            "subject": 8,
            "seq_name": "0000_neutral_relaxed",
            "camera": "400002",
            "frame_idx": i,
        }
        for i in range(30_000)
    ]
    data["images"] += filler
    data["annotations"] += [
        {
            "id": r["id"],
            "image_id": r["id"],
            "bbox": [1.0, 2.0, 3.0, 4.0],
            "joint_valid": [[1]] * 42,
        }
        for r in filler
    ]
    data_path.write_text(json.dumps(data))
    del data, filler
    file_size = data_path.stat().st_size
    tracemalloc.start()
    try:
        selection = select_views(root, split=SPLIT, seqs="ROM04_RT_Occlusion")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert selection.selection_report.count("images in split") == 30_000 + 21
    # json.load of this file needs several times its size; streaming a small fraction.
    assert file_size > 10_000_000
    assert peak < file_size / 10, (peak, file_size)


@pytest.mark.parametrize("chunk", [3, 7, 64, 1 << 16])
def test_nonfinite_tokens_survive_any_chunking(tmp_path: Path, chunk: int) -> None:
    """Python's json writes NaN/Infinity; the strict streaming parser must still read them."""
    import ijson

    from handnerf.data.stream import NonFiniteReader, restore_nonfinite

    value = {
        "0": {
            "5": {"right": {"pose": [1.5, float("nan"), -float("inf")], "trans": [float("inf")]}}
        },
        "NaN_seq": ["NaN Infinity", 2],
    }
    path = tmp_path / "x.json"
    path.write_text(json.dumps(value))
    with path.open("rb") as handle:
        reader = NonFiniteReader(handle, chunk=chunk)
        (parsed,) = list(ijson.items(reader, "", use_float=True))
    restored = restore_nonfinite(parsed)
    pose = restored["0"]["5"]["right"]["pose"]
    assert pose[0] == 1.5 and np.isnan(pose[1]) and pose[2] == -np.inf
    assert restored["0"]["5"]["right"]["trans"] == [np.inf]
    assert restored["NaN_seq"] == ["NaN Infinity", 2]
