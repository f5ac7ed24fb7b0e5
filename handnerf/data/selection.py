"""The selection steps both InterHand2.6M readers share, and the record-to-view builder.

:class:`~handnerf.data.interhand.InterHandCapture` (whole JSONs in memory) and
:func:`~handnerf.data.stream.select_views` (streamed JSONs) read the annotation files
differently but select in the same fixed order, counted in a :class:`SelectionReport`:
split -> capture -> sequences -> frames with this hand's MANO fit -> cameras -> frame
stride -> views whose image exists. The steps that do not depend on how a file is read
live here, so the two readers cannot drift apart; :func:`build_frame_views` turns the kept
data.json image records into :class:`~handnerf.data.records.FrameView` s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handnerf.data.annotations import HAND_CHOICES, SPLITS, AnnotationFiles, find_annotation_files
from handnerf.data.camera import PinholeCamera
from handnerf.data.records import (
    HAND_ROWS,
    FrameView,
    ImageAnnotation,
    interhand_camera,
    joint_3d_keypoints,
    load_image,
    normalize_camera_id,
    parse_annotation,
)
from handnerf.errors import DataError, SelectionError


@dataclass
class SelectionReport:
    """Counts of what each selection step and filter kept or skipped.

    ``steps`` is the ordered list of ``(description, images remaining)``; ``skipped`` maps
    a reason to the number of images dropped for it (MANO missing/null/NaN, filters...).
    """

    steps: list[tuple[str, int]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add_step(self, description: str, remaining: int) -> None:
        self.steps.append((description, remaining))

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] += count

    def count(self, description: str) -> int:
        """Images remaining after the step whose description starts with ``description``."""
        for step, remaining in self.steps:
            if step.startswith(description):
                return remaining
        raise KeyError(description)

    def __str__(self) -> str:
        lines = ["selection:"]
        width = max((len(step) for step, _ in self.steps), default=0)
        lines += [f"  {step:<{width}}  {remaining:>8d}" for step, remaining in self.steps]
        if self.skipped:
            lines.append("skipped:")
            width = max(len(reason) for reason in self.skipped)
            lines += [
                f"  {reason:<{width}}  {count:>8d}"
                for reason, count in sorted(self.skipped.items())
            ]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def note_two_hand_frames(views: Sequence[FrameView], report: SelectionReport) -> None:
    """Note in ``report`` how many selected frames show both hands (``'interacting'``)."""
    frames = {(v.seq_name, v.frame_idx) for v in views if v.hand_type == "interacting"}
    if frames:
        report.notes.append(
            f"{len(frames)} selected frame(s) show both hands (hand_type 'interacting')"
        )


class SelectedViews:
    """What every selection of views offers (the in-memory reader and the streaming one):
    iteration, the cameras and frames it covers, and image loading. Needs ``self.views``."""

    views: list[FrameView]

    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.views)

    @property
    def camera_ids(self) -> list[str]:
        """Sorted ids of the cameras in the selection."""
        return sorted({v.camera_id for v in self.views})

    @property
    def frames(self) -> list[tuple[str, int]]:
        """Sorted ``(seq_name, frame_idx)`` of the selection."""
        return sorted({(v.seq_name, v.frame_idx) for v in self.views})

    def load_image(self, view: FrameView) -> np.ndarray:
        """(H, W, 3) uint8 RGB of ``view``; see :func:`load_image`."""
        return load_image(view)


@dataclass(frozen=True)
class SelectionRequest:
    """What a reader selects: views of one hand in one capture, narrowed step by step.

    Both readers take these as keyword arguments after ``root`` (see
    :class:`~handnerf.data.interhand.InterHandCapture`).

    Attributes:
        root: dataset root (holds ``images/`` and ``annotations/``).
        split: ``'train'``, ``'val'`` or ``'test'``.
        capture: capture number (``Capture{N}``).
        seqs: sequence name(s) to keep; None keeps every sequence of the capture.
        hand: ``'right'``, ``'left'`` or ``'both'``; frames without this hand's MANO fit
            (for ``'both'``: without both hands' fits) are skipped and counted, see
            :func:`~handnerf.data.records.parse_frame_mano`.
        cameras: camera ids to keep (``'400002'`` or ``'cam400002'``); None keeps all.
        exclude_cameras: camera ids to drop.
        stride: keep every ``stride``-th frame of each sequence (in frame order, first kept).
        drop_grayscale_cameras: drop cameras ``4100xx``, grayscale in some real captures.
            Off by default; the content-based grayscale filter in
            :mod:`handnerf.data.filters` catches them either way.
    """

    root: Path
    split: str = "test"
    capture: int = 0
    seqs: str | Sequence[str] | None = None
    hand: str = "right"
    cameras: Iterable[str | int] | None = None
    exclude_cameras: Iterable[str | int] | None = None
    stride: int = 1
    drop_grayscale_cameras: bool = False

    def wanted_seqs(self) -> set[str] | None:
        """The requested sequence names as a set, None for every sequence."""
        if self.seqs is None:
            return None
        return {self.seqs} if isinstance(self.seqs, str) else set(self.seqs)


def start_selection(request: SelectionRequest) -> tuple[AnnotationFiles, SelectionReport]:
    """Check a selection's arguments and find its annotation files.

    Returns the split's files and a fresh report (noting an older annotation layout).
    Raises DataError for a missing root or annotation file, SelectionError for an unknown
    split or hand or a stride below 1.
    """
    root, split, hand, stride = request.root, request.split, request.hand, request.stride
    if not root.is_dir():
        raise DataError(f"InterHand2.6M root not found: {root}")
    if split not in SPLITS:
        raise SelectionError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if hand not in HAND_CHOICES:
        raise SelectionError(f"unknown hand {hand!r}; hands are {', '.join(HAND_CHOICES)}")
    if int(stride) < 1:
        raise SelectionError(f"stride must be >= 1, got {stride}")
    files = find_annotation_files(root, split)
    report = SelectionReport()
    if files.layout != "current":
        report.notes.append(f"annotation layout: {files.layout}")
    return files, report


def keep_cameras(
    with_mano: list[dict[str, Any]],
    in_seqs: list[dict[str, Any]],
    capture: int,
    seqs: set[str],
    request: SelectionRequest,
    report: SelectionReport,
) -> list[dict[str, Any]]:
    """The image records of ``with_mano`` whose camera ``request`` keeps.

    ``in_seqs`` (the records before the MANO step) lists every camera a user may name;
    an unknown one raises SelectionError listing them. Adds the cameras step to ``report``.
    """
    available_cams = sorted({normalize_camera_id(img["camera"]) for img in with_mano})
    all_cams = sorted({normalize_camera_id(img["camera"]) for img in in_seqs})
    keep_cams = set(available_cams)
    for label, requested in (
        ("camera", request.cameras),
        ("excluded camera", request.exclude_cameras),
    ):
        if requested is None:
            continue
        requested_ids = {normalize_camera_id(c) for c in requested}
        unknown = sorted(requested_ids - set(all_cams))
        if unknown:
            raise SelectionError(
                f"{label}(s) {', '.join(unknown)} not in capture {capture} "
                f"(sequences {', '.join(sorted(seqs))}); cameras: {', '.join(all_cams)}"
            )
        keep_cams = keep_cams & requested_ids if label == "camera" else keep_cams - requested_ids
    if request.drop_grayscale_cameras:
        grayscale = {c for c in keep_cams if c.startswith("4100")}
        keep_cams -= grayscale
        if grayscale:
            report.notes.append(f"dropped {len(grayscale)} grayscale (4100xx) cameras")
    with_cams = [img for img in with_mano if normalize_camera_id(img["camera"]) in keep_cams]
    report.add_step(f"cameras kept ({len(keep_cams)} of {len(available_cams)})", len(with_cams))
    return with_cams


def stride_frames(
    images: list[dict[str, Any]], seqs: set[str], stride: int, report: SelectionReport
) -> list[dict[str, Any]]:
    """The records of every ``stride``-th frame of each sequence (first frame kept)."""
    kept_frames: set[tuple[str, int]] = set()
    for seq in seqs:
        seq_frames = sorted({int(img["frame_idx"]) for img in images if img["seq_name"] == seq})
        kept_frames.update((seq, f) for f in seq_frames[::stride])
    strided = [img for img in images if (img["seq_name"], int(img["frame_idx"])) in kept_frames]
    report.add_step(f"frame stride {stride}", len(strided))
    return strided


@dataclass(frozen=True)
class CaptureSource:
    """Which capture and hand a selection reads, and where its files are."""

    root: Path
    files: AnnotationFiles
    split: str
    capture: int
    hand: str


def annotations_by_image(
    images: list[dict[str, Any]], annotations: Iterable[object], data_path: Path
) -> dict[Any, ImageAnnotation]:
    """``{image id: parsed annotation}`` of the data.json ``annotations`` records of ``images``.

    ``annotations`` is read in file order (a list or a stream); records of other images
    are skipped unparsed, any record that is not an object is a DataError naming
    ``data_path`` and its index.
    """
    wanted_ids = {img["id"] for img in images}
    parsed: dict[Any, ImageAnnotation] = {}
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise DataError(f"{data_path}: annotations[{index}] is not an object")
        image_id = ann.get("image_id")
        if isinstance(image_id, list | dict) or image_id not in wanted_ids:
            continue
        parsed[image_id] = parse_annotation(ann, f"{data_path}: annotations[{index}]")
    return parsed


def build_frame_views(
    source: CaptureSource,
    images: list[dict[str, Any]],
    mano_by_frame: dict[int, dict[str, Any]],
    annotation_by_image: dict[Any, ImageAnnotation],
    cams: dict[str, Any],
    joint_entry: Callable[[int], object] | None,
    report: SelectionReport,
) -> list[FrameView]:
    """The views of the selected image records, sorted by (sequence, frame, camera).

    Args:
        source: the capture, hand and files the records come from.
        images: checked data.json image records (see
            :func:`~handnerf.data.records.check_image_record`) of the selection.
        mano_by_frame: ``{frame_idx: MANO params}`` for every frame of ``images``
            (``{frame_idx: {side: MANO params}}`` for ``hand='both'``).
        annotation_by_image: see :func:`annotations_by_image`.
        cams: camera.json's entry of the capture.
        joint_entry: ``frame_idx -> joint_3d.json entry`` (None for a missing frame), or
            None when the capture has no joint_3d annotation (noted in ``report``).
        report: counts the images whose file is missing and the selected views.

    Raises SelectionError when no view is left, DataError for a malformed record.
    """
    files, capture, hand = source.files, source.capture, source.hand
    if joint_entry is None:
        report.notes.append("no joint_3d annotation: keypoints_world is None")

    camera_cache: dict[tuple[str, int, int], PinholeCamera] = {}
    # Keypoints are shared by the views of one frame, like its MANO params.
    keypoint_cache: dict[int, tuple[np.ndarray | None, np.ndarray | None, str | None]] = {}
    image_root = source.root / "images" / source.split
    views: list[FrameView] = []
    for img in images:
        cam_id = normalize_camera_id(img["camera"])
        width, height = int(img["width"]), int(img["height"])
        cam_key = (cam_id, width, height)
        if cam_key not in camera_cache:
            camera_cache[cam_key] = interhand_camera(
                files.camera, cams, capture, cam_id, width, height
            )
        image_path = image_root / str(img["file_name"])
        if not image_path.is_file():
            report.skip("image file missing")
            continue
        frame = int(img["frame_idx"])
        if frame not in keypoint_cache:
            keypoint_cache[frame] = (
                (None, None, None)
                if joint_entry is None
                else joint_3d_keypoints(
                    joint_entry(frame), f"{files.joint_3d}: joints['{capture}']['{frame}']", hand
                )
            )
        keypoints, valid, hand_type = keypoint_cache[frame]
        ann = annotation_by_image.get(img["id"])
        if ann is not None:
            if valid is None and ann.joint_valid is not None:
                valid = ann.joint_valid[HAND_ROWS[hand]]
            hand_type = hand_type or ann.hand_type
        views.append(
            FrameView(
                image_path=image_path,
                split=source.split,
                capture=capture,
                seq_name=str(img["seq_name"]),
                camera_id=cam_id,
                frame_idx=frame,
                camera=camera_cache[cam_key],
                mano={} if hand == "both" else mano_by_frame[frame],
                hand=hand,
                keypoints_world=keypoints,
                keypoints_valid=valid if keypoints is not None else None,
                bbox=None if ann is None else ann.bbox,
                image_id=int(img["id"]),
                hand_type=hand_type,
                two_hands=mano_by_frame[frame] if hand == "both" else None,
            )
        )
    views.sort(key=lambda v: (v.seq_name, v.frame_idx, v.camera_id))
    note_two_hand_frames(views, report)
    report.add_step("selected views", len(views))
    if not views:
        raise SelectionError(f"the selection keeps no image of {source.root}\n{report}")
    return views
