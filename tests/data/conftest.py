"""Fixtures for the data tests: a small hand-written InterHand2.6M root and a tiny synth capture.

The hand-written root follows /work/shared/reference/interhand-and-mano.md exactly (COCO
style data.json, camera.json in millimetres, joint_3d.json, MANO_NeuralAnnot.json) with a
few deliberately bad entries: a null right-hand MANO, a NaN one, and a grayscale camera.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from handnerf.data.interhand import SYNTH_MARKER, InterHandCapture

SPLIT = "test"
TRAIN_SEQ = "ROM04_RT_Occlusion"
NOVEL_SEQ = "ROM03_RT_No_Occlusion"
#: (camera id, width, height, colour?) of capture 0.
CAMERAS: tuple[tuple[str, int, int, bool], ...] = (
    ("400002", 40, 60, True),
    ("400004", 60, 40, True),
    ("410001", 40, 60, False),
)
#: frame -> sequence of capture 0. Frame 13 has a null right MANO, 16 a NaN one.
FRAMES: dict[int, str] = {
    10: TRAIN_SEQ,
    13: TRAIN_SEQ,
    16: TRAIN_SEQ,
    19: TRAIN_SEQ,
    100: NOVEL_SEQ,
    103: NOVEL_SEQ,
}
NULL_MANO_FRAME = 13
NAN_MANO_FRAME = 16


def look_at_rotation(campos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World->camera rotation (OpenCV axes) of a camera at ``campos`` looking at ``target``."""
    forward = target - campos
    forward = forward / np.linalg.norm(forward)
    up = np.array([0.0, -1.0, 0.0])
    right = np.cross(up, forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def camera_json_entry() -> dict[str, Any]:
    """camera.json's content for captures 0 and 1 (millimetres)."""
    cams: dict[str, Any] = {}
    for capture in (0, 1):
        table: dict[str, dict[str, Any]] = {"campos": {}, "camrot": {}, "focal": {}, "princpt": {}}
        for index, (cam_id, width, height, _) in enumerate(CAMERAS):
            angle = 0.7 * index + 0.3 * capture
            campos = np.array([900.0 * math.sin(angle), -150.0, -900.0 * math.cos(angle)])
            table["campos"][cam_id] = campos.tolist()
            table["camrot"][cam_id] = look_at_rotation(campos, np.zeros(3)).tolist()
            table["focal"][cam_id] = [80.0 + index, 81.0 + index]
            table["princpt"][cam_id] = [width / 2 + 0.25, height / 2 - 0.5]
        cams[str(capture)] = table
    return cams


def mano_entry(frame: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(frame)
    return {
        "pose": rng.normal(0, 0.1, 48).tolist(),
        "shape": rng.normal(0, 0.5, 10).tolist(),
        "trans": (rng.normal(0, 0.01, 3)).tolist(),
    }


def write_jpeg(path: Path, width: int, height: int, colour: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(30, 220, size=(height, width, 3), dtype=np.uint8)
    if not colour:
        pixels[:] = pixels[..., :1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def add_image(
    images: list[dict[str, Any]],
    root: Path,
    split: str,
    capture: int,
    seq: str,
    frame: int,
    camera: tuple[str, int, int, bool],
) -> int:
    """Write one JPEG of ``camera`` = (id, width, height, colour?), append its data.json
    image record to ``images``, and return its image id."""
    cam_id, width, height, colour = camera
    image_id = len(images)
    file_name = f"Capture{capture}/{seq}/cam{cam_id}/image{frame:04d}.jpg"
    write_jpeg(root / "images" / split / file_name, width, height, colour, image_id)
    images.append(
        {
            "id": image_id,
            "file_name": file_name,
            "width": width,
            "height": height,
            "capture": capture,
            "subject": 1,
            "seq_name": seq,
            "camera": cam_id,
            "frame_idx": frame,
        }
    )
    return image_id


def build_interhand_root(root: Path, layout: str = "current") -> Path:
    """Write the hand-written capture under ``root``; ``layout`` is 'current' or 'legacy'."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    joints: dict[str, dict[str, Any]] = {"0": {}, "1": {}}
    mano: dict[str, dict[str, Any]] = {"0": {}, "1": {}}
    shots = [(0, frame, seq) for frame, seq in FRAMES.items()] + [(1, 7, "0000_neutral_relaxed")]
    for capture, frame, seq in shots:
        right: Any = mano_entry(frame)
        if frame == NULL_MANO_FRAME:
            right = None
        elif frame == NAN_MANO_FRAME:
            right["pose"][5] = float("nan")
        mano[str(capture)][str(frame)] = {"right": right, "left": mano_entry(frame + 1000)}
        world = np.random.default_rng(frame + 7).normal(0, 40.0, (42, 3))
        joints[str(capture)][str(frame)] = {
            "world_coord": world.tolist(),
            "joint_valid": [[1]] * 20 + [[0]] + [[1]] * 21,
            "hand_type": "right",
            "hand_type_valid": 1,
        }
        for camera in CAMERAS:
            image_id = add_image(images, root, SPLIT, capture, seq, frame, camera)
            annotations.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "bbox": [5.0, 6.0, 20.0 + image_id % 3, 25.0],
                    "joint_valid": [[1]] * 42,
                    "hand_type": "right",
                    "hand_type_valid": 1,
                }
            )
    folder = root / "annotations" / (SPLIT if layout == "current" else "all")
    folder.mkdir(parents=True, exist_ok=True)
    mano_name = "MANO_NeuralAnnot" if layout == "current" else "MANO"
    contents = {
        "data": {"images": images, "annotations": annotations, "categories": []},
        "camera": camera_json_entry(),
        "joint_3d": joints,
        mano_name: mano,
    }
    for kind, content in contents.items():
        (folder / f"InterHand2.6M_{SPLIT}_{kind}.json").write_text(json.dumps(content))
    # Synthetic: prepare and fit may use the procedural hand on it (a real capture may not).
    (root / SYNTH_MARKER).write_text(json.dumps({"made_by": "tests/data/conftest.py"}))
    return root


def assert_same_selection(streamed: Any, loaded: InterHandCapture) -> None:
    """The streamed selection holds exactly the in-memory reader's views and counts."""
    assert [v.key for v in streamed.views] == [v.key for v in loaded.views]
    for a, b in zip(streamed.views, loaded.views, strict=True):
        assert a.image_path == b.image_path
        assert a.image_id == b.image_id
        assert a.bbox == b.bbox
        assert a.hand_type == b.hand_type
        for name in ("K", "R", "t"):
            np.testing.assert_array_equal(getattr(a.camera, name), getattr(b.camera, name))
        assert (a.camera.width, a.camera.height) == (b.camera.width, b.camera.height)
        for name in ("pose", "shape", "trans"):
            np.testing.assert_array_equal(a.mano[name], b.mano[name])
        if b.keypoints_world is None:
            assert a.keypoints_world is None
        else:
            np.testing.assert_array_equal(a.keypoints_world, b.keypoints_world)
            np.testing.assert_array_equal(a.keypoints_valid, b.keypoints_valid)
    assert streamed.selection_report.steps == loaded.selection_report.steps
    assert streamed.selection_report.skipped == loaded.selection_report.skipped


@pytest.fixture
def same_selection() -> Callable[[Any, InterHandCapture], None]:
    """Asserts that two readers' selections are the same (views, cameras, MANO, counts)."""
    return assert_same_selection


# --------------------------------------------------------------------------- released schema

#: The released root below: split, the two-hand and the right-hand sequence.
RELEASED_SPLIT = "train"
TWO_HAND_SEQ = "0266_dh_pray"
RIGHT_HAND_SEQ = "0012_rh_fist"
#: (camera id, width, height): one portrait, one landscape camera, InterHand's sizes.
RELEASED_CAMERAS: tuple[tuple[str, int, int], ...] = (("400262", 334, 512), ("400263", 512, 334))
#: frame -> (sequence, hand_type, right MANO?, left MANO?). 30 fps frame numbers are
#: consecutive; these cross from four to five digits (image9999.jpg, image10000.jpg).
RELEASED_FRAMES: dict[int, tuple[str, str, bool, bool]] = {
    9998: (TWO_HAND_SEQ, "interacting", True, True),
    9999: (TWO_HAND_SEQ, "interacting", True, True),
    10000: (TWO_HAND_SEQ, "right", True, False),
    10001: (TWO_HAND_SEQ, "left", False, True),
    10002: (RIGHT_HAND_SEQ, "right", True, False),
    10003: (RIGHT_HAND_SEQ, "right", True, False),
}
#: joint_3d.json flags this frame's hand_type_valid false.
HAND_TYPE_INVALID_FRAME = 10003
#: joint_3d.json marks this right-hand joint (thumb2) invalid in every frame.
INVALID_RIGHT_JOINT = 2


def released_joint_valid(frame: int) -> list[list[bool]]:
    """joint_3d.json's ``joint_valid`` of ``frame``: JSON booleans, false for a hidden hand."""
    _, _, right, left = RELEASED_FRAMES[frame]
    rows = [[right and joint != INVALID_RIGHT_JOINT] for joint in range(21)]
    return rows + [[left]] * 21


def build_released_root(root: Path) -> Path:
    """A root written from the documented released schema (not copied from anywhere).

    /work/shared/reference/interhand-and-mano.md: joint_3d.json holds JSON booleans
    (``joint_valid``, ``hand_type_valid``), data.json integers (here one annotation has
    0.0/1.0 floats); ``hand_type`` is 'right', 'left' or 'interacting'; two-hand sequences
    carry ``_dh_``; a hand out of view has a ``null`` MANO entry; frame numbers are 30 fps
    style. The annotations use the older layout: ``annotations/all`` holds the complete
    files, ``human_annot``/``machine_annot`` a data.json with half of the images each.
    There is no synth.json: it is a real capture as far as the toolkit can tell.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    joints: dict[str, Any] = {}
    mano: dict[str, Any] = {}
    for frame, (seq, hand_type, right, left) in RELEASED_FRAMES.items():
        mano[str(frame)] = {
            "right": mano_entry(frame) if right else None,
            "left": mano_entry(frame + 1000) if left else None,
        }
        world = np.random.default_rng(frame).normal(0, 40.0, (42, 3))
        joints[str(frame)] = {
            "world_coord": world.tolist(),
            "joint_valid": released_joint_valid(frame),
            "hand_type": hand_type,
            "hand_type_valid": frame != HAND_TYPE_INVALID_FRAME,
        }
        for cam_id, width, height in RELEASED_CAMERAS:
            camera = (cam_id, width, height, True)
            image_id = add_image(images, root, RELEASED_SPLIT, 0, seq, frame, camera)
            # integers, as released; the first image's flags are 0.0/1.0 floats
            one, zero = (1.0, 0.0) if image_id == 0 else (1, 0)
            annotations.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "bbox": [100.0, 150.0, 120.0, 140.0],
                    "joint_valid": [[one if right else zero]] * 21 + [[one if left else zero]] * 21,
                    "hand_type": hand_type,
                    "hand_type_valid": zero if frame == HAND_TYPE_INVALID_FRAME else one,
                }
            )
    folder = root / "annotations"
    cameras = {"campos": {}, "camrot": {}, "focal": {}, "princpt": {}}
    for index, (cam_id, width, height) in enumerate(RELEASED_CAMERAS):
        campos = np.array([600.0 * math.sin(index), -100.0, -600.0 * math.cos(index)])
        cameras["campos"][cam_id] = campos.tolist()
        cameras["camrot"][cam_id] = look_at_rotation(campos, np.zeros(3)).tolist()
        cameras["focal"][cam_id] = [1200.0 + index, 1200.5 + index]
        cameras["princpt"][cam_id] = [width / 2, height / 2]
    half = len(images) // 2
    contents = {
        "all": {
            "data": {"images": images, "annotations": annotations, "categories": []},
            "camera": {"0": cameras},
            "joint_3d": {"0": joints},
            "MANO_NeuralAnnot": {"0": mano},
        },
        "human_annot": {"data": {"images": images[:half], "annotations": annotations[:half]}},
        "machine_annot": {"data": {"images": images[half:], "annotations": annotations[half:]}},
    }
    for name, files in contents.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for kind, content in files.items():
            path = folder / name / f"InterHand2.6M_{RELEASED_SPLIT}_{kind}.json"
            path.write_text(json.dumps(content))
    return root


@dataclass(frozen=True)
class ReleasedCapture:
    """A :func:`build_released_root` root and what it was written with."""

    root: Path
    split: str
    two_hand_seq: str
    frames: dict[int, tuple[str, str, bool, bool]]
    cameras: tuple[tuple[str, int, int], ...]
    hand_type_invalid_frame: int
    invalid_right_joint: int

    def frames_with(self, hand: str) -> list[int]:
        """Frames where ``hand`` has a MANO entry."""
        column = 2 if hand == "right" else 3
        return [frame for frame, spec in self.frames.items() if spec[column]]


@pytest.fixture
def released(tmp_path: Path) -> ReleasedCapture:
    """A root in the released InterHand2.6M schema (see :func:`build_released_root`)."""
    return ReleasedCapture(
        root=build_released_root(tmp_path / "released"),
        split=RELEASED_SPLIT,
        two_hand_seq=TWO_HAND_SEQ,
        frames=RELEASED_FRAMES,
        cameras=RELEASED_CAMERAS,
        hand_type_invalid_frame=HAND_TYPE_INVALID_FRAME,
        invalid_right_joint=INVALID_RIGHT_JOINT,
    )


@pytest.fixture
def make_interhand_root(tmp_path: Path) -> Callable[..., Path]:
    """A builder: ``make_interhand_root(layout='current'|'legacy') -> root``."""
    counter = iter(range(1000))

    def make(layout: str = "current") -> Path:
        return build_interhand_root(tmp_path / f"interhand{next(counter)}", layout)

    return make


@pytest.fixture
def interhand_root(make_interhand_root: Callable[..., Path]) -> Path:
    return make_interhand_root()


@pytest.fixture(scope="session")
def synth_tiny(tiny_capture: Path) -> Path:
    """The session's tiny synthetic capture (see tests/conftest.py), written by ``handnerf synth``."""
    return tiny_capture
