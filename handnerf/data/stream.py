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
the counts in :class:`~handnerf.data.selection.SelectionReport` and the resulting
:class:`~handnerf.data.records.FrameView` s are the same as ``InterHandCapture``'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from handnerf.data import selection
from handnerf.data.annotations import HANDS, AnnotationFiles, find_annotation_files
from handnerf.data.records import (
    FrameView,
    check_image_record,
    parse_frame_mano,
    parse_mano_entry,
)
from handnerf.data.selection import CaptureSource, SelectedViews, SelectionReport, SelectionRequest
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


class NonFiniteReader:
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


def restore_nonfinite(value: Any) -> Any:
    """``value`` with the marker strings of :class:`NonFiniteReader` back as floats."""
    if isinstance(value, str):
        return float(value[len(_MARKER) :]) if value.startswith(_MARKER) else value
    if isinstance(value, list):
        return [restore_nonfinite(v) for v in value]
    if isinstance(value, dict):
        return {k: restore_nonfinite(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(restore_nonfinite(v) for v in value)
    return value


def _stream(path: Path, prefix: str, kind: str = "items") -> Iterator[Any]:
    """Yield ``ijson.items`` (or ``kvitems``) of ``path`` under ``prefix``; errors name the file."""
    try:
        with path.open("rb") as handle:
            reader = NonFiniteReader(handle)
            walker = ijson.kvitems if kind == "kvitems" else ijson.items
            for item in walker(reader, prefix, use_float=True):
                yield restore_nonfinite(item) if reader.replaced else item
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


def split_sequences(root: str | Path, split: str) -> dict[int, list[str]]:
    """``{capture: [sequence, ...]}`` of every image record of a split's data.json (sorted).

    One streamed pass over ``images``: memory holds only the names, however big the split.
    Raises DataError when the annotation files are missing or unreadable.
    """
    files = find_annotation_files(Path(root), split)
    found: dict[int, set[str]] = {}
    for n, img in enumerate(_stream(files.data, "images.item")):
        try:
            found.setdefault(int(img["capture"]), set()).add(str(img["seq_name"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DataError(
                f"{files.data}: images[{n}] lacks a valid 'capture' or 'seq_name' ({exc})"
            ) from exc
    return {capture: sorted(seqs) for capture, seqs in sorted(found.items())}


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


def select_views(root: str | Path, **options: Any) -> StreamedSelection:
    """Stream the selection ``InterHandCapture(root, **options)`` makes, with bounded memory.

    Options and errors are those of :class:`~handnerf.data.interhand.InterHandCapture`
    (see :class:`~handnerf.data.selection.SelectionRequest`); in addition a hand with no
    MANO fit in any selected frame raises SelectionError saying how many frames the other
    hand has.
    """
    request = SelectionRequest(Path(root), **options)
    files, report = selection.start_selection(request)
    root, split, hand = request.root, request.split, request.hand
    capture, stride = int(request.capture), int(request.stride)
    wanted_seqs = request.wanted_seqs()

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
    mano_by_frame: dict[int, dict[str, Any]] = {}
    bad_frames: dict[int, str] = {}
    for frame in sorted(frames):
        params, reason = parse_frame_mano(mano_entries.get(frame), hand)
        if params is None:
            bad_frames[frame] = str(reason)
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
    if not with_mano and in_seqs and hand == "both":
        raise SelectionError(
            f"no frame of sequence(s) {', '.join(sorted(wanted_seqs))} in capture {capture} "
            f"has usable MANO fits of both hands in {files.mano} ({len(frames)} frames)\n{report}"
        )
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

    with_cams = selection.keep_cameras(with_mano, in_seqs, capture, wanted_seqs, request, report)
    strided = selection.stride_frames(with_cams, wanted_seqs, stride, report)
    views = _stream_views(
        CaptureSource(root, files, split, capture, hand), strided, mano_by_frame, report
    )
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


def _stream_views(
    source: CaptureSource,
    images: list[dict[str, Any]],
    mano_by_frame: dict[int, dict[str, Any]],
    report: SelectionReport,
) -> list[FrameView]:
    """Stream the annotations, cameras and joints of ``images`` and build their views."""
    files, capture = source.files, source.capture
    # Pass 2 over data.json: annotations of the kept images only.
    annotations = _stream(files.data, "annotations.item") if images else ()
    annotation_by_image = selection.annotations_by_image(images, annotations, files.data)
    cams = stream_capture_entry(files.camera, capture)
    if cams is None:
        raise DataError(f"{files.camera}: no entry for capture '{capture}'")
    frames = {int(img["frame_idx"]) for img in images}
    joints: dict[int, Any] | None = None
    if files.joint_3d is not None:
        joints = stream_frames(files.joint_3d, capture, frames) or None
    return selection.build_frame_views(
        source,
        images,
        mano_by_frame,
        annotation_by_image,
        cams,
        None if joints is None else joints.get,
        report,
    )
