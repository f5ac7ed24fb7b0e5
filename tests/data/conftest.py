"""Fixtures for the data tests: a small hand-written InterHand2.6M root and a tiny synth capture.

The hand-written root follows /work/shared/reference/interhand-and-mano.md exactly (COCO
style data.json, camera.json in millimetres, joint_3d.json, MANO_NeuralAnnot.json) with a
few deliberately bad entries: a null right-hand MANO, a NaN one, and a grayscale camera.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

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
        for cam_id, width, height, colour in CAMERAS:
            image_id = len(images)
            file_name = f"Capture{capture}/{seq}/cam{cam_id}/image{frame:04d}.jpg"
            write_jpeg(root / "images" / SPLIT / file_name, width, height, colour, image_id)
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
    return root


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
