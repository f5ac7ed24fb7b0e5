"""Select one capture's views from a full InterHand2.6M split without loading the split.

:class:`~handnerf.data.interhand.InterHandCapture` parses each annotation JSON whole,
which for a real split means hundreds of MB to GBs of Python objects. Here the files are
streamed with ``ijson`` (C backend when available) and only what the selection needs is
materialised:

* ``data.json``: ``images.item`` is streamed once, keeping only the records of the chosen
  capture and sequences (plus the sets of captures / sequences seen, for error messages);
  ``annotations.item`` is streamed once, keeping the bbox / joint_valid of kept images.
* ``camera.json``: only the ``{capture}`` entry is built.
* ``MANO_NeuralAnnot.json`` and ``joint_3d.json``: ``{capture}`` is walked key by key and
  only the selected frames are kept.

Peak memory is therefore set by the selection, not by the split. The selection order,
the counts in :class:`~handnerf.data.interhand.SelectionReport` and the resulting
:class:`~handnerf.data.interhand.FrameView` s are the same as ``InterHandCapture``'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ijson
import numpy as np

from handnerf.data.camera import PinholeCamera
from handnerf.data.interhand import (
    HAND_ROWS,
    HANDS,
    SPLITS,
    AnnotationFiles,
    FrameView,
    ImageAnnotation,
    SelectedViews,
    SelectionReport,
    camera_from_json,
    check_image_record,
    find_annotation_files,
    joint_3d_keypoints,
    normalize_camera_id,
    note_two_hand_frames,
    parse_annotation,
    parse_mano_entry,
)
from handnerf.errors import DataError, SelectionError

#: Keys of data.json image records that a selection keeps (the rest are dropped on read).
_IMAGE_KEYS: tuple[str, ...] = (
    "id",
    "file_name",
    "width",
    "height",
    "capture",
    "seq_name",
    "camera",
    "frame_idx",
)


#: Python's json module writes and reads the non-standard tokens NaN, Infinity and
#: -Infinity (missing values in InterHand-style files); yajl rejects them. They are
#: rewritten to marker strings on the fly and turned back into floats after parsing.
_NONFINITE = re.compile(rb"(?<=[:,\[\s])(-?Infinity|NaN)(?=[\s,\]\}]|\Z)")
_MARKER = "__handnerf_nonfinite__"
_DELIMITERS = (b",", b":", b"[", b"]", b"{", b"}", b" ", b"\n")


class _NonFiniteReader:
    """A binary file wrapper that quotes bare NaN / Infinity tokens for a strict parser.

    Each block handed out ends just before a delimiter, so no token is split between
    blocks and every token's preceding delimiter is in the same block. Blocks are small
    (64 KiB) because the C parser materialises every item of a block at once.
    """

    def __init__(self, handle: BinaryIO, chunk: int = 1 << 16) -> None:
        self.handle = handle
        self.chunk = chunk
        self.pending = b""
        self.replaced = False

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            # ijson probes read(0) to tell bytes from text; it must consume nothing.
            return b""
        while True:
            data = self.handle.read(self.chunk)
            buffer = self.pending + data
            if not data:
                self.pending = b""
                return self._rewrite(buffer)
            cut = max(buffer.rfind(d) for d in _DELIMITERS)
            if cut <= 0:
                self.pending = buffer
                continue
            self.pending = buffer[cut:]
            return self._rewrite(buffer[:cut])

    def _rewrite(self, block: bytes) -> bytes:
        if b"NaN" not in block and b"Infinity" not in block:
            return block
        rewritten, count = _NONFINITE.subn(b'"' + _MARKER.encode() + rb'\1"', block)
        self.replaced = self.replaced or count > 0
        return rewritten


def _restore_nonfinite(value: Any) -> Any:
    """``value`` with the marker strings of :class:`_NonFiniteReader` back as floats."""
    if isinstance(value, str):
        return float(value[len(_MARKER) :]) if value.startswith(_MARKER) else value
    if isinstance(value, list):
        return [_restore_nonfinite(v) for v in value]
    if isinstance(value, dict):
        return {k: _restore_nonfinite(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_restore_nonfinite(v) for v in value)
    return value


def _stream(path: Path, prefix: str, kind: str = "items") -> Iterator[Any]:
    """Yield ``ijson.items`` (or ``kvitems``) of ``path`` under ``prefix``; errors name the file."""
    try:
        with path.open("rb") as handle:
            reader = _NonFiniteReader(handle)
            walker = ijson.kvitems if kind == "kvitems" else ijson.items
            for item in walker(reader, prefix, use_float=True):
                yield _restore_nonfinite(item) if reader.replaced else item
    except ijson.JSONError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc


def stream_capture_entry(path: Path, capture: int) -> dict[str, Any] | None:
    """The value of top-level key ``str(capture)`` of a ``{capture: ...}`` JSON, or None."""
    for value in _stream(path, str(capture)):
        return value if isinstance(value, dict) else None
    return None


def stream_frames(path: Path, capture: int, frames: set[int]) -> dict[int, Any]:
    """``{frame: entry}`` of ``path[str(capture)][str(frame)]`` for the wanted frames only."""
    kept: dict[int, Any] = {}
    for key, value in _stream(path, str(capture), kind="kvitems"):
        try:
            frame = int(key)
        except ValueError:
            continue
        if frame in frames:
            kept[frame] = value
    return kept


@dataclass
class StreamedSelection(SelectedViews):
    """The result of :func:`select_views`: what ``InterHandCapture`` would hold.

    Duck-types the parts of ``InterHandCapture`` that consumers use (``root``, ``split``,
    ``capture``, ``hand``, ``stride``, ``files``, ``views``, ``selection_report``,
    ``load_image``).
    """

    root: Path
    split: str
    capture: int
    hand: str
    stride: int
    files: AnnotationFiles
    views: list[FrameView]
    selection_report: SelectionReport


def select_views(
    root: str | Path,
    split: str = "test",
    capture: int = 0,
    seqs: str | Sequence[str] | None = None,
    hand: str = "right",
    cameras: Iterable[str | int] | None = None,
    exclude_cameras: Iterable[str | int] | None = None,
    stride: int = 1,
    drop_grayscale_cameras: bool = False,
) -> StreamedSelection:
    """Stream the selection ``InterHandCapture(root, ...)`` makes, with bounded memory.

    Arguments and errors are those of :class:`~handnerf.data.interhand.InterHandCapture`;
    in addition a hand with no MANO fit in any selected frame raises SelectionError
    saying how many frames the other hand has.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"InterHand2.6M root not found: {root}")
    if split not in SPLITS:
        raise SelectionError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    if hand not in HANDS:
        raise SelectionError(f"unknown hand {hand!r}; hands are {', '.join(HANDS)}")
    if int(stride) < 1:
        raise SelectionError(f"stride must be >= 1, got {stride}")
    capture, stride = int(capture), int(stride)
    files = find_annotation_files(root, split)
    report = SelectionReport()
    if files.layout != "current":
        report.notes.append(f"annotation layout: {files.layout}")
    wanted_seqs = None if seqs is None else ({seqs} if isinstance(seqs, str) else set(seqs))

    # Pass 1 over data.json's images: keep the capture's records of the wanted sequences.
    n_split = 0
    n_capture = 0
    captures: set[int] = set()
    seqs_in_capture: set[str] = set()
    in_seqs: list[dict[str, Any]] = []
    for img in _stream(files.data, "images.item"):
        n_split += 1
        try:
            img_capture = int(img["capture"])
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DataError(
                f"{files.data}: images[{n_split - 1}] lacks a valid 'capture' ({exc})"
            ) from exc
        captures.add(img_capture)
        if img_capture != capture:
            continue
        n_capture += 1
        check_image_record(img, f"{files.data}: images[{n_split - 1}]")
        seq = str(img["seq_name"])
        seqs_in_capture.add(seq)
        if wanted_seqs is None or seq in wanted_seqs:
            in_seqs.append({key: img.get(key) for key in _IMAGE_KEYS})
    if n_split == 0:
        raise DataError(f"{files.data}: no 'images' records (is this a data.json?)")
    report.add_step(f"images in split '{split}'", n_split)
    if n_capture == 0:
        raise SelectionError(
            f"capture {capture} not in {files.data}; captures: "
            f"{', '.join(map(str, sorted(captures))) or '(none)'}"
        )
    report.add_step(f"in capture {capture}", n_capture)
    available_seqs = sorted(seqs_in_capture)
    if wanted_seqs is None:
        wanted_seqs = set(available_seqs)
    unknown = sorted(wanted_seqs - seqs_in_capture)
    if unknown:
        raise SelectionError(
            f"sequence(s) {', '.join(unknown)} not in capture {capture} of split "
            f"'{split}'; sequences: {', '.join(available_seqs)}"
        )
    report.add_step(f"in sequences ({len(wanted_seqs)})", len(in_seqs))

    # MANO: only the frames of the kept records.
    frames = {int(img["frame_idx"]) for img in in_seqs}
    mano_entries = stream_frames(files.mano, capture, frames)
    if not mano_entries:
        report.notes.append(f"{files.mano} has no entry for capture {capture}")
    mano_by_frame: dict[int, dict[str, np.ndarray]] = {}
    bad_frames: dict[int, str] = {}
    for frame in sorted(frames):
        entry = mano_entries.get(frame)
        if not isinstance(entry, dict) or hand not in entry:
            bad_frames[frame] = f"no {hand}-hand MANO entry for the frame"
            continue
        params, reason = parse_mano_entry(entry[hand])
        if params is None:
            bad_frames[frame] = f"{reason} ({hand} hand)"
        else:
            mano_by_frame[frame] = params
    with_mano: list[dict[str, Any]] = []
    for img in in_seqs:
        frame = int(img["frame_idx"])
        if frame in mano_by_frame:
            with_mano.append(img)
        else:
            # Counted per image, as InterHandCapture does.
            report.skip(bad_frames[frame])
    report.add_step(f"with {hand}-hand MANO", len(with_mano))
    if not with_mano and in_seqs:
        other = "left" if hand == "right" else "right"
        other_count = sum(
            1
            for entry in mano_entries.values()
            if isinstance(entry, dict) and parse_mano_entry(entry.get(other))[0] is not None
        )
        raise SelectionError(
            f"no frame of sequence(s) {', '.join(sorted(wanted_seqs))} in capture {capture} "
            f"has a usable {hand}-hand MANO fit in {files.mano} ({len(frames)} frames; the "
            f"{other} hand has {other_count}); hands are {', '.join(HANDS)}\n{report}"
        )
    del mano_entries

    available_cams = sorted({normalize_camera_id(img["camera"]) for img in with_mano})
    all_cams = sorted({normalize_camera_id(img["camera"]) for img in in_seqs})
    keep_cams = set(available_cams)
    for label, requested in (("camera", cameras), ("excluded camera", exclude_cameras)):
        if requested is None:
            continue
        requested_ids = {normalize_camera_id(c) for c in requested}
        unknown = sorted(requested_ids - set(all_cams))
        if unknown:
            raise SelectionError(
                f"{label}(s) {', '.join(unknown)} not in capture {capture} "
                f"(sequences {', '.join(sorted(wanted_seqs))}); cameras: {', '.join(all_cams)}"
            )
        keep_cams = keep_cams & requested_ids if label == "camera" else keep_cams - requested_ids
    if drop_grayscale_cameras:
        grayscale = {c for c in keep_cams if c.startswith("4100")}
        keep_cams -= grayscale
        if grayscale:
            report.notes.append(f"dropped {len(grayscale)} grayscale (4100xx) cameras")
    with_cams = [img for img in with_mano if normalize_camera_id(img["camera"]) in keep_cams]
    report.add_step(f"cameras kept ({len(keep_cams)} of {len(available_cams)})", len(with_cams))

    kept_frames: set[tuple[str, int]] = set()
    for seq in wanted_seqs:
        seq_frames = sorted({int(img["frame_idx"]) for img in with_cams if img["seq_name"] == seq})
        kept_frames.update((seq, f) for f in seq_frames[::stride])
    strided = [img for img in with_cams if (img["seq_name"], int(img["frame_idx"])) in kept_frames]
    report.add_step(f"frame stride {stride}", len(strided))

    views = _build_views(root, files, split, capture, hand, strided, mano_by_frame, report)
    report.add_step("selected views", len(views))
    if not views:
        raise SelectionError(f"the selection keeps no image of {root}\n{report}")
    return StreamedSelection(
        root=root,
        split=split,
        capture=capture,
        hand=hand,
        stride=stride,
        files=files,
        views=views,
        selection_report=report,
    )


def _build_views(
    root: Path,
    files: AnnotationFiles,
    split: str,
    capture: int,
    hand: str,
    images: list[dict[str, Any]],
    mano_by_frame: dict[int, dict[str, np.ndarray]],
    report: SelectionReport,
) -> list[FrameView]:
    wanted_ids = {img["id"] for img in images}
    annotation_by_image: dict[Any, ImageAnnotation] = {}
    if wanted_ids:
        # Pass 2 over data.json: annotations of the kept images only.
        for index, ann in enumerate(_stream(files.data, "annotations.item")):
            if not isinstance(ann, dict):
                raise DataError(f"{files.data}: annotations[{index}] is not an object")
            image_id = ann.get("image_id")
            if isinstance(image_id, list | dict) or image_id not in wanted_ids:
                continue
            annotation_by_image[image_id] = parse_annotation(
                ann, f"{files.data}: annotations[{index}]"
            )

    cams = stream_capture_entry(files.camera, capture)
    if cams is None:
        raise DataError(f"{files.camera}: no entry for capture '{capture}'")
    frames = {int(img["frame_idx"]) for img in images}
    joints: dict[int, Any] | None = None
    if files.joint_3d is not None:
        joints = stream_frames(files.joint_3d, capture, frames) or None
    if joints is None:
        report.notes.append("no joint_3d annotation: keypoints_world is None")

    camera_cache: dict[tuple[str, int, int], PinholeCamera] = {}
    keypoint_cache: dict[int, tuple[np.ndarray | None, np.ndarray | None, str | None]] = {}
    image_root = root / "images" / split
    views: list[FrameView] = []
    for img in images:
        cam_id = normalize_camera_id(img["camera"])
        width, height = int(img["width"]), int(img["height"])
        cam_key = (cam_id, width, height)
        if cam_key not in camera_cache:
            camera_cache[cam_key] = camera_from_json(
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
                if joints is None
                else joint_3d_keypoints(
                    joints.get(frame), f"{files.joint_3d}: joints['{capture}']['{frame}']", hand
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
                split=split,
                capture=capture,
                seq_name=str(img["seq_name"]),
                camera_id=cam_id,
                frame_idx=frame,
                camera=camera_cache[cam_key],
                mano=mano_by_frame[frame],
                hand=hand,
                keypoints_world=keypoints,
                keypoints_valid=valid if keypoints is not None else None,
                bbox=None if ann is None else ann.bbox,
                image_id=int(img["id"]),
                hand_type=hand_type,
            )
        )
    views.sort(key=lambda v: (v.seq_name, v.frame_idx, v.camera_id))
    note_two_hand_frames(views, report)
    return views
