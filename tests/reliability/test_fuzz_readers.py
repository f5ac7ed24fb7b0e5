"""Property-based fuzzing of the readers of untrusted input (hypothesis).

Annotation JSONs (data, camera, MANO, joint_3d) get one value replaced by garbage (wrong
type, huge number, NaN/inf, unicode), a key deleted, or the file truncated; MANO entries,
camera rotations and images are fuzzed directly. Every case must end in a
:class:`HandnerfError` with a message, a counted skip, or a result that passes a sanity
check; never a traceback from inside numpy/torch/PIL, never garbage accepted.

The validity fields (``joint_valid``, ``hand_type_valid``) are the exception to "booleans
are garbage": the released joint_3d.json stores JSON booleans there, data.json integers,
so a boolean, 0/1 or 0.0/1.0 in one of them must be read, and anything else refused.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.spatial.transform import Rotation

from handnerf.data.camera import PinholeCamera
from handnerf.data.interhand import HAND_TYPES, FrameView, InterHandCapture, load_image
from handnerf.data.stream import select_views
from handnerf.errors import DataError, HandnerfError, ParameterError
from handnerf.hand.hand_model import MANO_VALUE_LIMIT, ManoParams

#: Examples per property; small enough to keep this file well under a minute on 2 cores.
JSON_EXAMPLES = 60
MANO_EXAMPLES = 80
CAMERA_EXAMPLES = 60
IMAGE_EXAMPLES = 40
UNICODE_EXAMPLES = 12
FLAG_EXAMPLES = 25
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}

SPLIT, SEQ, CAMERAS, FRAMES, SIZE = "test", "ROM04_RT_Occlusion", ("400002", "400004"), (3, 6), 8
F32_MAX = float(np.finfo(np.float32).max)


def _rotation(angle: float) -> list[list[float]]:
    return Rotation.from_euler("y", angle).as_matrix().tolist()


def _annotations(seq: str = SEQ) -> dict[str, Any]:
    """The four annotation JSONs of a valid two-camera, two-frame capture."""
    images, anns, mano, joints = [], [], {}, {}
    for frame in FRAMES:
        rng = np.random.default_rng(frame)
        entry = {
            "pose": rng.normal(0, 0.1, 48).tolist(),
            "shape": rng.normal(0, 0.5, 10).tolist(),
            "trans": rng.normal(0, 0.01, 3).tolist(),
        }
        mano[str(frame)] = {"right": entry, "left": None}
        # the released spelling: booleans in joint_3d.json, integers in data.json
        joints[str(frame)] = {
            "world_coord": rng.normal(0, 40, (42, 3)).tolist(),
            "joint_valid": [[True]] * 21 + [[False]] * 21,
            "hand_type": "right",
            "hand_type_valid": True,
        }
        for cam in CAMERAS:
            image_id = len(images)
            images.append(
                {
                    "id": image_id,
                    "file_name": f"Capture0/{seq}/cam{cam}/image{frame:04d}.jpg",
                    "width": SIZE,
                    "height": SIZE,
                    "capture": 0,
                    "seq_name": seq,
                    "camera": cam,
                    "frame_idx": frame,
                }
            )
            anns.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "bbox": [1.0, 1.0, 5.0, 5.0],
                    "joint_valid": [[1]] * 21 + [[0]] * 21,
                    "hand_type": "right",
                    "hand_type_valid": 1,
                }
            )
    cams: dict[str, Any] = {"campos": {}, "camrot": {}, "focal": {}, "princpt": {}}
    for index, cam in enumerate(CAMERAS):
        cams["campos"][cam] = [0.0, 0.0, -500.0 - 10 * index]
        cams["camrot"][cam] = _rotation(0.1 * index)
        cams["focal"][cam] = [20.0, 20.0]
        cams["princpt"][cam] = [4.0, 4.0]
    return {
        "data": {"images": images, "annotations": anns, "categories": []},
        "camera": {"0": cams},
        "MANO_NeuralAnnot": {"0": mano},
        "joint_3d": {"0": joints},
    }


def _write_root(root: Path, files: dict[str, Any], images: Path | None = None) -> Path:
    """Write annotation files (dicts, or str for raw text) and images (or link ``images``)."""
    folder = root / "annotations" / SPLIT
    folder.mkdir(parents=True, exist_ok=True)
    for kind, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / f"InterHand2.6M_{SPLIT}_{kind}.json").write_text(text)
    if images is not None:
        (root / "images").symlink_to(images, target_is_directory=True)
    return root


def _write_images(root: Path, data: dict[str, Any]) -> None:
    for record in data["images"]:
        path = root / "images" / SPLIT / record["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (SIZE, SIZE), (120, 80, 60)).save(path)


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_images")
    _write_images(root, _annotations()["data"])
    return root / "images"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz_roots")


def _fresh_dir(base: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=base))


# --------------------------------------------------------------------------- garbage


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path (dict keys / list indices) into a JSON tree, the root excluded."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


_BASE = _annotations()
_PATHS = {kind: list(_paths(tree)) for kind, tree in _BASE.items()}

garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 1e39, 0.0, -1.0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "..", "/etc/passwd", "ünïcødé/ψ", "\x00", "cam400002", "1.5"]),
    st.lists(st.floats(allow_nan=True), max_size=5),
    st.lists(st.text(max_size=3), min_size=1, max_size=3),
    st.just({}),
    st.just([[1, 2], [3]]),
)


#: Fields whose leaves are validity flags: true/false, 0/1 and 0.0/1.0 are all valid there.
VALIDITY_FIELDS = ("joint_valid", "hand_type_valid")


def _base_value(kind: str, path: tuple[Any, ...]) -> Any:
    tree = _BASE[kind]
    for key in path:
        tree = tree[key]
    return tree


def _flag_field(kind: str, path: tuple[Any, ...]) -> str | None:
    """The validity field whose single flag ``path`` points at, else None."""
    if isinstance(_base_value(kind, path), list | dict):
        return None
    return next((key for key in path if key in VALIDITY_FIELDS), None)


def _number_turned_bool(kind: str, path: tuple[Any, ...], value: Any) -> bool:
    """Whether a camera or MANO number was replaced by true/false (never a number there)."""
    return (
        kind in ("camera", "MANO_NeuralAnnot")
        and isinstance(value, bool)
        and isinstance(_base_value(kind, path), float)
    )


def _is_flag(value: Any) -> bool:
    """True/false, or a number equal to 0 or 1 (NaN is neither)."""
    return isinstance(value, bool | int | float) and value in (0, 1)


def _set(tree: Any, path: tuple[Any, ...], value: Any, delete: bool) -> None:
    for key in path[:-1]:
        tree = tree[key]
    if delete:
        del tree[path[-1]]
    else:
        tree[path[-1]] = value


def _check_views(capture: InterHandCapture) -> None:
    """What an accepted capture must satisfy: no garbage got through."""
    assert capture.views
    for view in capture.views:
        cam = view.camera
        for array in (cam.K, cam.R, cam.t):
            assert np.all(np.isfinite(array.astype(np.float32)))
        assert np.allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-3)
        assert cam.K[0, 0] > 0 and cam.K[1, 1] > 0 and cam.width > 0 and cam.height > 0
        for name, length in (("pose", 48), ("shape", 10), ("trans", 3)):
            value = view.mano[name]
            assert value.shape == (length,)
            assert np.all(np.abs(value) <= MANO_VALUE_LIMIT)
        assert view.image_path.is_file()
        assert Path(os.path.normpath(view.image_path)).is_relative_to(capture.root / "images")
        if view.keypoints_world is not None:
            assert view.keypoints_world.shape == (21, 3)
            assert view.keypoints_valid is not None
            assert np.all(np.abs(view.keypoints_world[view.keypoints_valid]) < 1e3)


@settings(max_examples=JSON_EXAMPLES, **SETTINGS)
@given(
    kind=st.sampled_from(sorted(_BASE)),
    data=st.data(),
    value=garbage,
    action=st.sampled_from(["replace", "replace", "delete", "truncate"]),
)
def test_fuzzed_annotations_give_a_clear_error_or_sane_views(
    image_tree: Path, scratch: Path, kind: str, data: st.DataObject, value: Any, action: str
) -> None:
    files = json.loads(json.dumps(_BASE))
    flag_field, bool_number = None, False
    if action == "truncate":
        text = json.dumps(files[kind])
        files[kind] = text[: data.draw(st.integers(0, len(text) - 1), label="cut")]
    else:
        path = data.draw(st.sampled_from(_PATHS[kind]), label="path")
        _set(files[kind], path, value, delete=action == "delete")
        flag_field = _flag_field(kind, path) if action == "replace" else None
        bool_number = action == "replace" and _number_turned_bool(kind, path, value)
    root = _write_root(_fresh_dir(scratch), files, image_tree)
    try:
        capture = InterHandCapture(root, split=SPLIT, capture=0, hand="right")
    except HandnerfError as exc:
        assert str(exc), "an error without a message"
        assert flag_field is None or not _is_flag(value), f"valid flag {value!r} refused: {exc}"
        # anything else in a validity field is refused by name
        assert flag_field is None or f"['{flag_field}']" in str(exc), str(exc)
        return
    finally:
        shutil.rmtree(root / "annotations")
    assert flag_field is None or _is_flag(value), f"{value!r} accepted as a validity flag"
    assert not (bool_number and kind == "camera"), f"camera number {path} accepted as {value}"
    if bool_number:  # a MANO number: the frame is a counted skip
        assert int(path[1]) not in {v.frame_idx for v in capture.views}
    if flag_field == "joint_valid" and kind == "joint_3d" and path[3] < 21:
        # a right-hand joint's flag reaches the views of its frame
        for view in capture.views:
            if str(view.frame_idx) == path[1]:
                assert view.keypoints_valid is not None
                assert view.keypoints_valid[path[3]] == bool(value)
    # a dropped frame is always counted, never silent
    kept = {v.frame_idx for v in capture.views}
    if len(kept) < len(FRAMES):
        assert sum(capture.selection_report.skipped.values()) > 0


flag = st.one_of(st.booleans(), st.sampled_from([0, 1, 0.0, 1.0]))


@settings(max_examples=FLAG_EXAMPLES, **SETTINGS)
@given(
    joint_3d_flags=st.lists(flag, min_size=42, max_size=42),
    data_flags=st.lists(flag, min_size=42, max_size=42),
    hand_type=st.sampled_from(HAND_TYPES),
    hand_type_valid=flag,
)
def test_validity_flags_in_every_released_spelling_are_read_by_both_readers(
    image_tree: Path,
    scratch: Path,
    joint_3d_flags: list[Any],
    data_flags: list[Any],
    hand_type: str,
    hand_type_valid: Any,
) -> None:
    files = _annotations()
    for entry in files["joint_3d"]["0"].values():
        entry.update(
            joint_valid=[[f] for f in joint_3d_flags],
            hand_type=hand_type,
            hand_type_valid=hand_type_valid,
        )
    for ann in files["data"]["annotations"]:
        ann.update(joint_valid=[[f] for f in data_flags], hand_type_valid=hand_type_valid)
    root = _write_root(_fresh_dir(scratch), files, image_tree)
    expected = np.array([bool(f) for f in joint_3d_flags[:21]])
    for reader in (InterHandCapture, select_views):
        selection = reader(root, split=SPLIT, capture=0, hand="right")
        assert len(selection.views) == len(CAMERAS) * len(FRAMES)
        for view in selection.views:
            assert view.keypoints_valid is not None
            np.testing.assert_array_equal(view.keypoints_valid, expected)
            assert view.hand_type == (hand_type if hand_type_valid else None)


def test_singular_and_reflecting_rotations_are_refused(image_tree: Path, scratch: Path) -> None:
    for bad in ([[1, 0, 0], [0, 1, 0], [0, 0, 0]], [[1, 0, 0], [0, 1, 0], [0, 0, -1]]):
        files = _annotations()
        files["camera"]["0"]["camrot"]["400004"] = bad
        root = _write_root(_fresh_dir(scratch), files, image_tree)
        with pytest.raises(DataError, match=r"camera '400004'.*camrot is not a rotation"):
            InterHandCapture(root, split=SPLIT)


# --------------------------------------------------------------------------- MANO params


def _field_ok(value: Any, length: int) -> bool | None:
    """The oracle: True valid, False invalid, None either way (ints beyond int64)."""
    if not isinstance(value, list) or len(value) != length:
        return False
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        return False
    if any(isinstance(v, int) and abs(v) >= 2**63 for v in value):
        return None
    with np.errstate(invalid="ignore"):
        return bool(np.all(np.abs(np.asarray(value, dtype=np.float64)) <= MANO_VALUE_LIMIT))


def _field(length: int) -> st.SearchStrategy[Any]:
    good = st.lists(st.floats(-10, 10), min_size=length, max_size=length)
    numbers = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([1e39, -1e300, math.nan]),
    )
    return st.one_of(
        good,
        good,
        st.lists(numbers, min_size=length, max_size=length),
        st.lists(st.floats(-1, 1), min_size=length - 1, max_size=length + 1),
        st.lists(st.one_of(st.booleans(), st.text(max_size=2)), min_size=length, max_size=length),
        garbage,
    )


@settings(max_examples=MANO_EXAMPLES, **SETTINGS)
@given(
    pose=_field(48),
    shape=_field(10),
    trans=_field(3),
    drop=st.sampled_from([None, None, "pose", "shape", "trans"]),
)
def test_fuzzed_mano_entries_are_refused_or_round_trip(
    pose: Any, shape: Any, trans: Any, drop: str | None
) -> None:
    entry = {"pose": pose, "shape": shape, "trans": trans}
    if drop is not None:
        del entry[drop]
    verdicts = [
        _field_ok(entry.get(name), n) for name, n in (("pose", 48), ("shape", 10), ("trans", 3))
    ]
    try:
        params = ManoParams.from_interhand(entry, "fuzz entry")
    except ParameterError as exc:
        assert "fuzz entry" in str(exc)
        assert False in verdicts or None in verdicts, f"valid entry refused: {exc}"
        return
    assert False not in verdicts, "garbage MANO entry accepted"
    assert params.hand_pose.shape == (1, 45) and params.betas.shape == (1, 10)
    assert np.allclose(params.transl.numpy()[0], np.asarray(trans, dtype=np.float32))


# --------------------------------------------------------------------------- cameras

_CAMERA = {"campos_mm": [0.0, 0.0, -500.0], "focal": [20.0, 20.0], "princpt": [4.0, 4.0]}


@settings(max_examples=CAMERA_EXAMPLES, **SETTINGS)
@given(
    matrix=st.one_of(
        st.lists(st.lists(st.floats(-2, 2), min_size=3, max_size=3), min_size=3, max_size=3),
        st.builds(
            lambda q, s: (Rotation.from_quat(q).as_matrix() * s).tolist(),
            st.lists(st.floats(0.1, 1), min_size=4, max_size=4),
            st.sampled_from([1.0, 1.0, -1.0, 0.0, 2.0]),
        ),
        garbage,
    )
)
def test_fuzzed_rotations_are_refused_unless_proper(matrix: Any) -> None:
    try:
        cam = PinholeCamera.from_interhand(
            camrot=matrix, width=SIZE, height=SIZE, name="c", where="fuzz cam", **_CAMERA
        )
    except DataError as exc:
        assert "fuzz cam" in str(exc)
        return
    r = np.asarray(matrix, dtype=np.float64)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-3) and np.linalg.det(r) > 0.99
    assert np.allclose(cam.R, r)


# --------------------------------------------------------------------------- images


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


_ENCODED = {"JPEG": _encoded("JPEG"), "PNG": _encoded("PNG")}


def _view(path: Path, width: int = 16, height: int = 12) -> FrameView:
    cam = PinholeCamera.from_interhand(
        camrot=np.eye(3).tolist(), width=width, height=height, name="c", where="w", **_CAMERA
    )
    return FrameView(path, SPLIT, 0, SEQ, "c", 0, cam, {}, "right", None, None, None)


@settings(max_examples=IMAGE_EXAMPLES, **SETTINGS)
@given(
    fmt=st.sampled_from(sorted(_ENCODED)),
    cut=st.floats(0.0, 0.9),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=4),
    size=st.sampled_from([(16, 12), (16, 12), (12, 16), (17, 12)]),
)
def test_corrupt_images_give_a_named_error(
    scratch: Path, fmt: str, cut: float, flips: list[tuple[float, int]], size: tuple[int, int]
) -> None:
    raw = bytearray(_ENCODED[fmt])
    for where, mask in flips:
        raw[int(where * (len(raw) - 1))] ^= mask
    truncated = cut > 0.1
    if truncated:
        raw = raw[: int(len(raw) * (1 - cut))]
    path = _fresh_dir(scratch) / f"image.{fmt.lower()}"
    path.write_bytes(bytes(raw))
    try:
        array = load_image(_view(path, *size))
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert not truncated, "a truncated image was decoded without an error"
    assert size == (16, 12), "an image of the wrong size was accepted"
    assert array.shape == (12, 16, 3) and array.dtype == np.uint8


# --------------------------------------------------------------------------- unicode paths

folder_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", "..") and len(s.encode()) < 100)


@settings(max_examples=UNICODE_EXAMPLES, **SETTINGS)
@given(seq=folder_names, parent=folder_names)
def test_unicode_roots_and_sequence_names_round_trip(scratch: Path, seq: str, parent: str) -> None:
    files = _annotations(seq)
    root = _fresh_dir(scratch) / parent
    _write_root(root, files)
    _write_images(root, files["data"])
    capture = InterHandCapture(root, split=SPLIT, seqs=[seq])
    assert len(capture.views) == len(CAMERAS) * len(FRAMES)
    assert {v.seq_name for v in capture.views} == {seq}
    assert capture.load_image(capture.views[0]).shape == (SIZE, SIZE, 3)


@settings(max_examples=25, deadline=None)
@given(
    key=st.sampled_from(["spec", "cameras", "frames", "crop", "split", "capture"]),
    value=st.one_of(
        st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)
    ),
)
def test_damaged_cache_index_is_a_clear_error(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: object
) -> None:
    """An index.json with the right marker but damaged contents is refused with DataError."""
    from handnerf.data.cache import FORMAT, INDEX_NAME, VERSION, PreparedCache

    root = tmp_path_factory.mktemp("cache")
    index = {
        "format": FORMAT,
        "version": VERSION,
        "spec": {"split": "test", "capture": 0, "hand": "right", "crop": {"mode": "crop"}},
        "cameras": {},
        "frames": [],
    }
    if key in ("crop", "split", "capture"):
        index["spec"][key] = value
    else:
        index[key] = value
    (root / INDEX_NAME).write_text(json.dumps(index))
    # Only these damaged values are still a well-formed index: an empty frame list, a
    # non-negative integer capture, a known split. Everything else must be refused.
    valid = (
        (key == "frames" and value == [])
        or (key == "capture" and type(value) is int and value >= 0)
        or (key == "split" and value in ("train", "val", "test"))
    )
    if valid:
        cache = PreparedCache(root)
        assert (cache.split, cache.capture, cache.sequences) == (
            value if key == "split" else "test",
            value if key == "capture" else 0,
            [],
        )
    else:
        with pytest.raises(DataError, match=r"index\.json: malformed index"):
            PreparedCache(root)
