"""The InterHand2.6M annotation files of a synthetic capture (one hand or two).

Where each file of a capture goes (:class:`CapturePaths`), data.json's image and
annotation records of one frame (:func:`add_image_records`), and the annotation JSONs and
``skeleton.txt`` (:func:`write_annotation_files`), shared by
:mod:`handnerf.synth.writer` (one hand) and :mod:`handnerf.synth.two_hands`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handnerf.files import atomic_write_bytes
from handnerf.synth.presets import SynthPreset
from handnerf.synth.rig import RigCamera

#: Keypoints per hand in InterHand order.
NUM_KEYPOINTS = 21

# InterHand2.6M's skeleton.txt: name, index, parent index; rows 0-20 right, 21-41 left.
_FINGERS = ("thumb", "index", "middle", "ring", "pinky")


def skeleton_lines() -> list[str]:
    """The lines of InterHand2.6M's ``annotations/skeleton.txt`` (42 joints, two hands)."""
    lines = ["# keypoint name, keypoint index, parent index"]
    for prefix, base in (("r", 0), ("l", NUM_KEYPOINTS)):
        wrist = base + 20
        for finger_index, finger in enumerate(_FINGERS):
            for level in range(4):  # tip (4) -> knuckle (1)
                index = base + 4 * finger_index + level
                parent = index + 1 if level < 3 else wrist
                lines.append(f"{prefix}_{finger}{4 - level} {index} {parent}")
        lines.append(f"{prefix}_wrist {wrist} -1")
    return lines


def atomic_write_json(path: Path, obj: Any) -> None:
    """Compact JSON (keys in insertion order, so byte-identical for equal input), atomically."""
    atomic_write_bytes(path, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


@dataclass(frozen=True)
class FramePlan:
    """One captured frame: its sequence, InterHand frame number and pose kind."""

    seq_name: str
    frame_idx: int
    kind: str  # "train" or "novel"


@dataclass
class CapturePaths:
    """Where each part of a capture goes (see the module docstring)."""

    root: Path
    split: str
    capture: int

    @property
    def annotations(self) -> Path:
        return self.root / "annotations" / self.split

    def annotation(self, what: str) -> Path:
        """``what`` is ``data``, ``camera``, ``joint_3d`` or ``MANO_NeuralAnnot``."""
        return self.annotations / f"InterHand2.6M_{self.split}_{what}.json"

    def file_name(self, seq_name: str, cam_id: str, frame_idx: int) -> str:
        """data.json's ``file_name``: relative to ``images/{split}``."""
        return f"Capture{self.capture}/{seq_name}/cam{cam_id}/image{frame_idx:04d}.jpg"

    def image(self, seq_name: str, cam_id: str, frame_idx: int) -> Path:
        return self.root / "images" / self.split / self.file_name(seq_name, cam_id, frame_idx)

    def mask(self, seq_name: str, cam_id: str, frame_idx: int) -> Path:
        name = self.file_name(seq_name, cam_id, frame_idx)
        return (self.root / "gt_masks" / self.split / name).with_suffix(".png")


#: Decimals kept of the computed numbers written to the annotation files. The last bits of
#: a posed hand's joints differ between CPUs and thread counts; rounded, the files are
#: byte-identical wherever a capture is synthesised (a fit fingerprints them by size).
BBOX_DECIMALS = 3  # px
JOINT_DECIMALS = 4  # mm


def rounded(values: np.ndarray, decimals: int) -> list[Any]:
    """``values`` rounded to ``decimals``, as (nested) lists of floats for JSON."""
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()


def image_bbox(camera: RigCamera, points: np.ndarray) -> list[float]:
    """``[x, y, w, h]`` (px) of world points (N, 3) projected by ``camera``, clipped to the image."""
    uv, _ = camera.project(points)
    x0, y0 = np.clip(uv.min(axis=0), 0.0, [camera.width, camera.height])
    x1, y1 = np.clip(uv.max(axis=0), 0.0, [camera.width, camera.height])
    return rounded(np.array([x0, y0, x1 - x0, y1 - y0]), BBOX_DECIMALS)


def camera_json(cameras: Sequence[RigCamera], capture: int) -> dict[str, Any]:
    return {
        str(capture): {
            "campos": {c.cam_id: (c.campos * 1000.0).tolist() for c in cameras},
            "camrot": {c.cam_id: c.camrot.tolist() for c in cameras},
            "focal": {c.cam_id: c.focal.tolist() for c in cameras},
            "princpt": {c.cam_id: c.princpt.tolist() for c in cameras},
        }
    }


def add_image_records(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    paths: CapturePaths,
    preset: SynthPreset,
    plan: FramePlan,
    cameras: Sequence[RigCamera],
    points: np.ndarray,
    joint_valid: list[list[int]],
    hand_type: str,
) -> None:
    """Append data.json's image and annotation record of each camera's view of ``plan``;
    the bbox is that of the world ``points`` (N, 3) (the hands' vertices and keypoints)."""
    for camera in cameras:
        image_id = len(images)
        images.append(
            {
                "id": image_id,
                "file_name": paths.file_name(plan.seq_name, camera.cam_id, plan.frame_idx),
                "width": camera.width,
                "height": camera.height,
                "capture": preset.capture,
                "subject": preset.subject,
                "seq_name": plan.seq_name,
                "camera": camera.cam_id,
                "frame_idx": plan.frame_idx,
            }
        )
        annotations.append(
            {
                "id": image_id,
                "image_id": image_id,
                "bbox": image_bbox(camera, points),
                "joint_valid": joint_valid,
                "hand_type": hand_type,
                "hand_type_valid": 1,
            }
        )


def write_annotation_files(
    paths: CapturePaths,
    cameras: Sequence[RigCamera],
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    joints: dict[str, Any],
    mano: dict[str, Any],
) -> None:
    """data, camera, joint_3d (``joints``: ``{capture: {frame: entry}}``) and MANO
    (``mano``) JSONs of a capture, and ``skeleton.txt``."""
    data = {"images": images, "annotations": annotations}
    atomic_write_json(paths.annotation("data"), data)
    atomic_write_json(paths.annotation("camera"), camera_json(cameras, paths.capture))
    atomic_write_json(paths.annotation("joint_3d"), joints)
    atomic_write_json(paths.annotation("MANO_NeuralAnnot"), mano)
    atomic_write_bytes(
        paths.root / "annotations" / "skeleton.txt", ("\n".join(skeleton_lines()) + "\n").encode()
    )
