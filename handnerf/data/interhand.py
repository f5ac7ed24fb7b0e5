"""The InterHand2.6M reader: select frames and cameras of one capture, one hand.

Reads a dataset root laid out as::

    ROOT/images/{split}/Capture{N}/{seq_name}/cam{ID}/image{FRAME}.jpg
    ROOT/annotations/{split}/InterHand2.6M_{split}_{data,camera,joint_3d,MANO_NeuralAnnot}.json

or the older release layout where the annotation JSONs live in
``annotations/all/`` (or ``human_annot/``, ``machine_annot/``). The synthetic captures
of ``handnerf synth`` use the same layout. Millimetres are converted to metres on load.

Selection happens in a fixed order and every step is counted in
:attr:`InterHandCapture.selection_report`: split -> capture -> sequences -> frames with
this hand's MANO fit -> cameras -> frame stride. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from handnerf.data.camera import PinholeCamera, holds_json_bool
from handnerf.errors import DataError, NovelPoseSequenceError, ProceduralHandError, SelectionError

SPLITS: tuple[str, ...] = ("train", "val", "test")
HANDS: tuple[str, ...] = ("right", "left")

#: Folders under ``annotations/`` searched in order: the current layout first, then the
#: older release's ``all`` (human + machine) and its two halves.
_LEGACY_FOLDERS: tuple[str, ...] = ("all", "human_annot", "machine_annot")

#: Older releases named the MANO file without the ``_NeuralAnnot`` suffix.
_FILE_NAMES: dict[str, tuple[str, ...]] = {
    "data": ("InterHand2.6M_{split}_data.json",),
    "camera": ("InterHand2.6M_{split}_camera.json",),
    "joint_3d": ("InterHand2.6M_{split}_joint_3d.json",),
    "mano": ("InterHand2.6M_{split}_MANO_NeuralAnnot.json", "InterHand2.6M_{split}_MANO.json"),
}

#: Rows of joint_3d's 42 joints that belong to each hand.
HAND_ROWS: dict[str, slice] = {"right": slice(0, 21), "left": slice(21, 42)}

#: Values of ``hand_type`` in data.json's annotations and joint_3d.json: a two-hand frame
#: is ``'interacting'`` (each hand then has its own MANO entry).
HAND_TYPES: tuple[str, ...] = ("right", "left", "interacting")

#: MANO parameter lengths in InterHand's MANO_NeuralAnnot.json.
_MANO_LENGTHS: dict[str, int] = {"pose": 48, "shape": 10, "trans": 3}

#: Largest |value| of a MANO parameter taken as real: radians, shape sigmas and metres
#: are all far below it; anything above is corrupt (and 1e39 overflows float32).
MANO_VALUE_LIMIT = 1e3

#: ``handnerf synth`` writes this file (last) into the root of every synthetic capture.
SYNTH_MARKER = "synth.json"

# --------------------------------------------------------------------------- guards


def is_synthetic_capture(root: str | Path) -> bool:
    """Whether ``root`` was written by ``handnerf synth`` (it holds :data:`SYNTH_MARKER`)."""
    return (Path(root) / SYNTH_MARKER).is_file()


def refuse_procedural_hand(root: str | Path, procedural: bool, action: str) -> None:
    """Refuse to ``action`` a real capture with the procedural hand.

    The procedural hand only stands in for MANO in synthetic captures (made with it);
    on real InterHand2.6M frames its silhouettes and poses do not match the hand in the
    photos. Raises ProceduralHandError telling the user to pass ``--mano-dir``.
    """
    if procedural and not is_synthetic_capture(root):
        raise ProceduralHandError(
            f"{root} is a real capture (it has no {SYNTH_MARKER}), and the procedural hand "
            f"only stands in for MANO in synthetic captures; to {action} it, download MANO "
            "(https://mano.is.tue.mpg.de) and pass --mano-dir DIR, the folder holding "
            "MANO_RIGHT.pkl and MANO_LEFT.pkl"
        )


def refuse_other_procedural_hand(
    root: str | Path, procedural: dict[str, Any] | None, setting: str
) -> None:
    """Refuse to fit a synthetic capture with another procedural hand than it was made with.

    ``procedural``: the fit's hand's procedural metadata (None: a real MANO model, which
    is the user's choice). ``setting`` names the option that selects it, for the message.
    Captures whose ``synth.json`` does not say are not checked.
    """
    if procedural is None or not is_synthetic_capture(root):
        return
    try:
        made = json.loads((Path(root) / SYNTH_MARKER).read_text())["hand_model"]["procedural"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if not isinstance(made, dict):
        return
    made_with = str(made.get("resolution", "dense"))
    fitting_with = str(procedural.get("resolution", "dense"))
    if made_with != fitting_with:
        raise ProceduralHandError(
            f"{root}: rendered with the {made_with!r} procedural hand ({SYNTH_MARKER}), but "
            f"this fit uses the {fitting_with!r} one; set {setting}={made_with}"
        )


def refuse_seen_novel_pose(train_seq: str, novel_pose_seq: str | None) -> None:
    """Refuse a novel-pose sequence equal to the training sequence (NovelPoseSequenceError)."""
    if novel_pose_seq is not None and novel_pose_seq == train_seq:
        raise NovelPoseSequenceError(
            f"data.novel_pose_seq={novel_pose_seq!r} is the training sequence "
            f"(data.train_seq={train_seq!r}): its poses are seen in training, so it cannot "
            "measure novel poses; choose another sequence or data.novel_pose_seq=null"
        )


# --------------------------------------------------------------------------- JSON cache

_json_cache: dict[str, tuple[tuple[int, int], Any]] = {}
_json_lock = threading.Lock()
_json_parse_count: Counter[str] = Counter()


def read_json(path: Path) -> Any:
    """Parse a JSON file at most once per process while it is unchanged.

    The annotation JSONs of a full split are hundreds of MB; the parsed object is cached
    by resolved path and re-read only when the file's mtime or size changes. Callers must
    treat the result as read-only.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise DataError(f"annotation file not found: {path}") from exc
    key = str(path.resolve())
    version = (stat.st_mtime_ns, stat.st_size)
    with _json_lock:
        cached = _json_cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            with path.open("rb") as handle:
                value = json.load(handle)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot be read ({exc})") from exc
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, absurd nesting
            raise DataError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from exc
        _json_parse_count[key] += 1
        _json_cache[key] = (version, value)
        return value


def json_parse_count(path: Path) -> int:
    """How many times :func:`read_json` has parsed ``path`` in this process."""
    return _json_parse_count[str(Path(path).resolve())]


def clear_json_cache() -> None:
    """Forget every cached annotation (frees memory after a big selection)."""
    with _json_lock:
        _json_cache.clear()


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class AnnotationFiles:
    """Where the annotation JSONs of one split are; ``joint_3d`` is optional."""

    data: Path
    camera: Path
    mano: Path
    joint_3d: Path | None
    layout: str  # "current" or "legacy (annotations/all)" etc.


def find_annotation_files(root: Path, split: str) -> AnnotationFiles:
    """Locate a split's annotation JSONs in either layout; DataError names what is missing."""
    annotations = root / "annotations"
    folders = [annotations / split] + [annotations / name for name in _LEGACY_FOLDERS]

    def locate(kind: str) -> Path | None:
        for folder in folders:
            for pattern in _FILE_NAMES[kind]:
                candidate = folder / pattern.format(split=split)
                if candidate.is_file():
                    return candidate
        return None

    found = {kind: locate(kind) for kind in _FILE_NAMES}
    missing = [kind for kind in ("data", "camera", "mano") if found[kind] is None]
    if missing:
        expected = annotations / split / _FILE_NAMES[missing[0]][0].format(split=split)
        also = ", ".join(f"annotations/{name}/" for name in _LEGACY_FOLDERS)
        raise DataError(
            f"missing annotation file {expected} (also looked in {also}); "
            f"missing kinds: {', '.join(missing)}"
        )
    data_path = found["data"]
    assert data_path is not None
    folder = data_path.parent.name
    layout = "current" if folder == split else f"legacy (annotations/{folder})"
    camera, mano = found["camera"], found["mano"]
    assert camera is not None and mano is not None
    return AnnotationFiles(
        data=data_path, camera=camera, mano=mano, joint_3d=found["joint_3d"], layout=layout
    )


# --------------------------------------------------------------------------- views


@dataclass(frozen=True, eq=False)
class FrameView:
    """One image of the selection: a (frame, camera) pair with everything needed to use it.

    Attributes:
        image_path: absolute path of the JPEG.
        split, capture, seq_name, camera_id, frame_idx: where it comes from.
        camera: the camera in metres (its width/height are data.json's).
        mano: ``{'pose': (48,), 'shape': (10,), 'trans': (3,)}`` float64, InterHand's
            convention (pose relative to ``hands_mean``, trans in metres, world frame).
        hand: ``'right'`` or ``'left'``.
        keypoints_world: (21, 3) metres in InterHand keypoint order, or None when the
            capture has no joint_3d annotation for this frame.
        keypoints_valid: (21,) bool, or None together with ``keypoints_world``.
        bbox: ``(x, y, w, h)`` pixels from data.json's annotation, or None.
        image_id: data.json's image id.
        hand_type: the frame's ``'right'``, ``'left'`` or ``'interacting'`` (both hands in
            view) from joint_3d.json, else data.json; None when absent or flagged invalid.
    """

    image_path: Path
    split: str
    capture: int
    seq_name: str
    camera_id: str
    frame_idx: int
    camera: PinholeCamera
    mano: dict[str, np.ndarray]
    hand: str
    keypoints_world: np.ndarray | None
    keypoints_valid: np.ndarray | None
    bbox: tuple[float, float, float, float] | None
    image_id: int = -1
    hand_type: str | None = None

    @property
    def key(self) -> tuple[int, str, str, int]:
        """``(capture, seq_name, camera_id, frame_idx)``: unique within a split."""
        return self.capture, self.seq_name, self.camera_id, self.frame_idx

    @property
    def mano_where(self) -> str:
        """Where this view's MANO entry lives, for error messages."""
        return f"MANO_NeuralAnnot.json: mano['{self.capture}']['{self.frame_idx}']['{self.hand}']"


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


def normalize_camera_id(value: object) -> str:
    """A camera id without the ``cam`` prefix: ``'cam400002'`` and ``400002`` are ``'400002'``."""
    text = str(value)
    return text[3:] if text.startswith("cam") else text


#: Fields every data.json image record needs, with the types they must have.
_IMAGE_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (int,),
    "file_name": (str,),
    "width": (int,),
    "height": (int,),
    "capture": (int,),
    "seq_name": (str,),
    "camera": (str, int),
    "frame_idx": (int,),
}


def check_image_record(record: object, where: str) -> dict[str, Any]:
    """A data.json image record with every needed field of the right type, else DataError."""
    if not isinstance(record, dict):
        raise DataError(f"{where} is a {type(record).__name__}, expected an object")
    for name, types in _IMAGE_FIELDS.items():
        if name not in record:
            raise DataError(f"{where} has no '{name}'")
        value = record[name]
        # bool is an int subclass; JSON true/false is never a valid id or size
        if isinstance(value, bool) or not isinstance(value, types):
            raise DataError(
                f"{where}['{name}'] must be {' or '.join(t.__name__ for t in types)}, "
                f"got {value!r:.60}"
            )
    if record["width"] <= 0 or record["height"] <= 0:
        raise DataError(f"{where}: width and height must be positive")
    file_name = record["file_name"]
    if (
        not file_name
        or "\x00" in file_name
        or file_name.startswith("/")
        or ".." in Path(file_name).parts
    ):
        raise DataError(f"{where}['file_name'] must be a relative path inside images/")
    # seq_name and camera name folders of the mask cache
    for name in ("seq_name", "camera"):
        text = str(record[name])
        if not text or text in (".", "..") or any(c in text for c in "/\\\x00"):
            raise DataError(f"{where}['{name}'] {text!r:.60} cannot name a folder")
    return record


def parse_mano_entry(entry: object) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """Parse one hand's MANO entry; returns (params, None) or (None, skip reason)."""
    if entry is None:
        return None, "MANO entry is null"
    if not isinstance(entry, dict):
        return None, "MANO entry malformed"
    params: dict[str, np.ndarray] = {}
    for name, length in _MANO_LENGTHS.items():
        if entry.get(name) is None:
            return None, "MANO entry malformed"
        try:
            raw = np.asarray(entry[name])
        except (TypeError, ValueError):
            return None, "MANO entry malformed"
        # strings, bools and over-long ints stay non-numeric here instead of being coerced
        if raw.dtype.kind not in "iuf" or holds_json_bool(entry[name]):
            return None, "MANO entry malformed"
        value = raw.astype(np.float64).reshape(-1)
        if value.shape != (length,):
            return None, "MANO entry malformed"
        if not np.all(np.isfinite(value)):
            return None, "MANO entry has NaN/inf"
        if np.any(np.abs(value) > MANO_VALUE_LIMIT):
            return None, "MANO entry out of range"
        params[name] = value
    return params, None


def validity_flags(value: object, where: str) -> np.ndarray:
    """A validity field (``joint_valid``, ``hand_type_valid``) as a bool array.

    The released joint_3d.json stores JSON booleans (``[[true], [false], ...]``), data.json
    integers (``[[1], [0], ...]``); 0.0/1.0 floats are accepted too. Anything else (other
    numbers, strings, null, ragged nesting) is a DataError naming ``where``.
    """
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} is not a (nested) list of 0/1 or true/false ({exc})") from exc
    if raw.dtype.kind == "b":
        return raw
    if raw.dtype.kind not in "iuf" or not np.all((raw == 0) | (raw == 1)):
        raise DataError(f"{where} must hold 0/1 or true/false, got {value!r:.60}")
    return raw != 0


def joint_flags(value: object, where: str) -> np.ndarray:
    """``joint_valid`` (42 x [v]) as a (42,) bool array; DataError naming ``where`` otherwise."""
    flags = validity_flags(value, where).reshape(-1)
    if flags.shape != (42,):
        raise DataError(f"{where} must hold 42 flags (21 per hand), got {flags.size}")
    return flags


def parse_hand_type(entry: dict[str, Any], where: str) -> str | None:
    """An annotation's ``hand_type`` (one of :data:`HAND_TYPES`), None when absent or when
    ``hand_type_valid`` is false/0; DataError naming ``where`` for any other value."""
    valid = True
    if entry.get("hand_type_valid") is not None:
        flag = validity_flags(entry["hand_type_valid"], f"{where}['hand_type_valid']")
        if flag.shape != ():
            raise DataError(f"{where}['hand_type_valid'] must be one 0/1 or true/false")
        valid = bool(flag)
    hand_type = entry.get("hand_type")
    if hand_type is None:
        return None
    if not isinstance(hand_type, str) or hand_type not in HAND_TYPES:
        raise DataError(
            f"{where}['hand_type'] must be one of {', '.join(HAND_TYPES)}, got {hand_type!r:.60}"
        )
    return hand_type if valid else None


@dataclass(frozen=True)
class ImageAnnotation:
    """What a selection uses of one data.json annotation."""

    bbox: tuple[float, float, float, float] | None
    joint_valid: np.ndarray | None  # (42,) bool
    hand_type: str | None


def parse_annotation(ann: dict[str, Any], where: str) -> ImageAnnotation:
    """One data.json ``annotations[i]`` record; DataError naming ``where`` and the field."""
    bbox = None
    if ann.get("bbox") is not None:
        values = json_numbers(ann["bbox"], f"{where}['bbox']")
        if values.shape != (4,):
            raise DataError(f"{where}['bbox'] must be [x, y, w, h], got {ann['bbox']!r:.60}")
        bbox = (float(values[0]), float(values[1]), float(values[2]), float(values[3]))
    joint_valid = None
    if ann.get("joint_valid") is not None:
        joint_valid = joint_flags(ann["joint_valid"], f"{where}['joint_valid']")
    return ImageAnnotation(bbox, joint_valid, parse_hand_type(ann, where))


def joint_3d_keypoints(
    entry: object, where: str, hand: str
) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(21, 3) metres, (21,) validity and ``hand_type`` of ``hand`` in one joint_3d.json frame.

    ``where`` names the entry (``"<file>: joints['0']['563']"``). Keypoints and validity
    are None when the entry has no ``world_coord``.
    """
    if not isinstance(entry, dict):
        return None, None, None
    hand_type = parse_hand_type(entry, where)
    if entry.get("world_coord") is None:
        return None, None, hand_type
    coords = json_numbers(entry["world_coord"], f"{where}['world_coord']", allow_nan=True)
    if coords.shape != (42, 3):
        raise DataError(f"{where}['world_coord'] must be 42x3, got {coords.shape}")
    rows = HAND_ROWS[hand]
    keypoints = coords[rows] / 1000.0
    with np.errstate(invalid="ignore"):
        # NaN marks a missing joint; a kilometre-away one is corrupt: both invalid
        valid = (np.abs(keypoints) < 1e3).all(axis=1)
    if entry.get("joint_valid") is not None:
        valid &= joint_flags(entry["joint_valid"], f"{where}['joint_valid']")[rows]
    return keypoints, valid, hand_type


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


class InterHandCapture(SelectedViews):
    """A selection of (frame, camera) views of one hand in one InterHand2.6M capture.

    Args:
        root: dataset root (holds ``images/`` and ``annotations/``).
        split: ``'train'``, ``'val'`` or ``'test'``.
        capture: capture number (``Capture{N}``).
        seqs: sequence name(s) to keep; None keeps every sequence of the capture.
        hand: ``'right'`` or ``'left'``; frames without this hand's MANO fit are skipped.
        cameras: camera ids to keep (``'400002'`` or ``'cam400002'``); None keeps all.
        exclude_cameras: camera ids to drop.
        stride: keep every ``stride``-th frame of each sequence (in frame order, first kept).
        drop_grayscale_cameras: drop cameras ``4100xx``, grayscale in some real captures.
            Off by default; the content-based grayscale filter in
            :mod:`handnerf.data.filters` catches them either way.

    Raises:
        DataError: missing/unreadable annotation files or malformed camera entries.
        SelectionError: unknown split, capture, sequence, hand or camera (lists what
            exists), or a selection that keeps no image.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "test",
        capture: int = 0,
        seqs: str | Sequence[str] | None = None,
        hand: str = "right",
        cameras: Iterable[str | int] | None = None,
        exclude_cameras: Iterable[str | int] | None = None,
        stride: int = 1,
        drop_grayscale_cameras: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"InterHand2.6M root not found: {self.root}")
        if split not in SPLITS:
            raise SelectionError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        if hand not in HANDS:
            raise SelectionError(f"unknown hand {hand!r}; hands are {', '.join(HANDS)}")
        if int(stride) < 1:
            raise SelectionError(f"stride must be >= 1, got {stride}")
        self.split = split
        self.capture = int(capture)
        self.hand = hand
        self.stride = int(stride)
        self.files = find_annotation_files(self.root, split)
        self.selection_report = SelectionReport()
        if self.files.layout != "current":
            self.selection_report.notes.append(f"annotation layout: {self.files.layout}")
        self.views: list[FrameView] = self._select(
            seqs, cameras, exclude_cameras, drop_grayscale_cameras
        )

    # ------------------------------------------------------------------ selection

    def _select(
        self,
        seqs: str | Sequence[str] | None,
        cameras: Iterable[str | int] | None,
        exclude_cameras: Iterable[str | int] | None,
        drop_grayscale_cameras: bool,
    ) -> list[FrameView]:
        report = self.selection_report
        data = read_json(self.files.data)
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise DataError(f"{self.files.data}: no 'images' list (is this a data.json?)")
        report.add_step(f"images in split '{self.split}'", len(images))

        try:
            in_capture = [
                check_image_record(img, f"{self.files.data}: images[{index}]")
                for index, img in enumerate(images)
                if int(img["capture"]) == self.capture
            ]
            captures = sorted({int(img["capture"]) for img in images}) if not in_capture else []
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise DataError(f"{self.files.data}: images[*] lack a valid 'capture' ({exc})") from exc
        if not in_capture:
            raise SelectionError(
                f"capture {self.capture} not in {self.files.data}; captures: "
                f"{', '.join(map(str, captures)) or '(none)'}"
            )
        report.add_step(f"in capture {self.capture}", len(in_capture))

        available_seqs = sorted({str(img["seq_name"]) for img in in_capture})
        if seqs is None:
            wanted_seqs = set(available_seqs)
        else:
            wanted_seqs = {seqs} if isinstance(seqs, str) else set(seqs)
            unknown = sorted(wanted_seqs - set(available_seqs))
            if unknown:
                raise SelectionError(
                    f"sequence(s) {', '.join(unknown)} not in capture {self.capture} of split "
                    f"'{self.split}'; sequences: {', '.join(available_seqs)}"
                )
        in_seqs = [img for img in in_capture if img["seq_name"] in wanted_seqs]
        report.add_step(f"in sequences ({len(wanted_seqs)})", len(in_seqs))

        mano_all = read_json(self.files.mano)
        if not isinstance(mano_all, dict):
            raise DataError(
                f"{self.files.mano}: expected an object keyed by capture, got "
                f"{type(mano_all).__name__}"
            )
        mano_capture = mano_all.get(str(self.capture))
        if mano_capture is None:
            report.notes.append(f"{self.files.mano} has no entry for capture {self.capture}")
            mano_capture = {}
        if not isinstance(mano_capture, dict):
            raise DataError(
                f"{self.files.mano}: mano['{self.capture}'] must be an object keyed by frame, "
                f"got {type(mano_capture).__name__}"
            )
        mano_by_frame: dict[int, dict[str, np.ndarray]] = {}
        with_mano = []
        for img in in_seqs:
            frame = int(img["frame_idx"])
            if frame not in mano_by_frame:
                frame_entry = mano_capture.get(str(frame))
                if not isinstance(frame_entry, dict) or self.hand not in frame_entry:
                    report.skip(f"no {self.hand}-hand MANO entry for the frame")
                    continue
                params, reason = parse_mano_entry(frame_entry[self.hand])
                if params is None:
                    report.skip(f"{reason} ({self.hand} hand)")
                    continue
                mano_by_frame[frame] = params
            with_mano.append(img)
        report.add_step(f"with {self.hand}-hand MANO", len(with_mano))

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
                    f"{label}(s) {', '.join(unknown)} not in capture {self.capture} "
                    f"(sequences {', '.join(sorted(wanted_seqs))}); cameras: {', '.join(all_cams)}"
                )
            keep_cams = (
                keep_cams & requested_ids if label == "camera" else keep_cams - requested_ids
            )
        if drop_grayscale_cameras:
            grayscale = {c for c in keep_cams if c.startswith("4100")}
            keep_cams -= grayscale
            if grayscale:
                report.notes.append(f"dropped {len(grayscale)} grayscale (4100xx) cameras")
        with_cams = [img for img in with_mano if normalize_camera_id(img["camera"]) in keep_cams]
        report.add_step(f"cameras kept ({len(keep_cams)} of {len(available_cams)})", len(with_cams))

        kept_frames: set[tuple[str, int]] = set()
        for seq in wanted_seqs:
            frames = sorted({int(img["frame_idx"]) for img in with_cams if img["seq_name"] == seq})
            kept_frames.update((seq, f) for f in frames[:: self.stride])
        strided = [
            img for img in with_cams if (img["seq_name"], int(img["frame_idx"])) in kept_frames
        ]
        report.add_step(f"frame stride {self.stride}", len(strided))

        views = self._build_views(strided, mano_by_frame, data)
        report.add_step("selected views", len(views))
        if not views:
            raise SelectionError(f"the selection keeps no image of {self.root}\n{report}")
        return views

    def _build_views(
        self,
        images: list[dict[str, Any]],
        mano_by_frame: dict[int, dict[str, np.ndarray]],
        data: dict[str, Any],
    ) -> list[FrameView]:
        report = self.selection_report
        wanted_ids = {img["id"] for img in images}
        annotation_by_image: dict[Any, ImageAnnotation] = {}
        annotations = data.get("annotations") or []
        if not isinstance(annotations, list):
            raise DataError(f"{self.files.data}: 'annotations' must be a list")
        for index, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                raise DataError(f"{self.files.data}: annotations[{index}] is not an object")
            image_id = ann.get("image_id")
            if isinstance(image_id, (list, dict)) or image_id not in wanted_ids:
                continue
            annotation_by_image[image_id] = parse_annotation(
                ann, f"{self.files.data}: annotations[{index}]"
            )

        camera_json = read_json(self.files.camera)
        cams = camera_json.get(str(self.capture)) if isinstance(camera_json, dict) else None
        if not isinstance(cams, dict):
            raise DataError(f"{self.files.camera}: no entry for capture '{self.capture}'")

        joints_capture: dict[str, Any] | None = None
        if self.files.joint_3d is not None:
            joints_all = read_json(self.files.joint_3d)
            joints_capture = (
                joints_all.get(str(self.capture)) if isinstance(joints_all, dict) else None
            )
            if joints_capture is not None and not isinstance(joints_capture, dict):
                raise DataError(
                    f"{self.files.joint_3d}: joints['{self.capture}'] must be an object keyed "
                    f"by frame, got {type(joints_capture).__name__}"
                )
        if joints_capture is None:
            report.notes.append("no joint_3d annotation: keypoints_world is None")

        camera_cache: dict[tuple[str, int, int], PinholeCamera] = {}
        image_root = self.root / "images" / self.split
        views: list[FrameView] = []
        for img in images:
            cam_id = normalize_camera_id(img["camera"])
            width, height = int(img["width"]), int(img["height"])
            cam_key = (cam_id, width, height)
            if cam_key not in camera_cache:
                camera_cache[cam_key] = self._camera(cams, cam_id, width, height)
            image_path = image_root / str(img["file_name"])
            if not image_path.is_file():
                report.skip("image file missing")
                continue
            frame = int(img["frame_idx"])
            keypoints, valid, hand_type = self._keypoints(joints_capture, frame)
            ann = annotation_by_image.get(img["id"])
            if ann is not None:
                if valid is None and ann.joint_valid is not None:
                    valid = ann.joint_valid[HAND_ROWS[self.hand]]
                hand_type = hand_type or ann.hand_type
            views.append(
                FrameView(
                    image_path=image_path,
                    split=self.split,
                    capture=self.capture,
                    seq_name=str(img["seq_name"]),
                    camera_id=cam_id,
                    frame_idx=frame,
                    camera=camera_cache[cam_key],
                    mano=mano_by_frame[frame],
                    hand=self.hand,
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

    def _camera(self, cams: dict[str, Any], cam_id: str, width: int, height: int) -> PinholeCamera:
        return camera_from_json(self.files.camera, cams, self.capture, cam_id, width, height)

    def _keypoints(
        self, joints_capture: dict[str, Any] | None, frame: int
    ) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
        if joints_capture is None:
            return None, None, None
        return joint_3d_keypoints(
            joints_capture.get(str(frame)),
            f"{self.files.joint_3d}: joints['{self.capture}']['{frame}']",
            self.hand,
        )


def json_numbers(value: object, where: str, allow_nan: bool = False) -> np.ndarray:
    """``value`` as a float64 array of JSON numbers, else DataError naming ``where``.

    ``allow_nan`` keeps NaN/inf (joint_3d marks missing joints that way); otherwise they are
    refused, as are strings, bools, nulls, ragged nesting and integers beyond int64.
    """
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} is not a (nested) list of numbers ({exc})") from exc
    if raw.dtype.kind not in "iuf" or holds_json_bool(value):
        raise DataError(f"{where} is not a (nested) list of numbers, got {value!r:.60}")
    array = raw.astype(np.float64)
    if not allow_nan and not np.all(np.isfinite(array)):
        raise DataError(f"{where} contains NaN or inf")
    return array


def load_image(view: FrameView) -> np.ndarray:
    """Read a view's JPEG as (H, W, 3) uint8 RGB (grayscale files are expanded to 3 channels).

    Raises DataError naming the file when it is missing, truncated or corrupt, or when its
    size differs from data.json's ``width``/``height``.
    """
    from PIL import Image, UnidentifiedImageError

    path = view.image_path
    try:
        with Image.open(path) as image:
            # load() (unlike open()) decodes every scanline, so truncation surfaces here.
            image.load()
            array = np.asarray(image.convert("RGB"))
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: truncated or corrupt image ({exc})") from exc
    except Exception as exc:  # decoders meet corrupt bytes with struct.error, bombs, ...
        raise DataError(
            f"{path}: truncated or corrupt image ({type(exc).__name__}: {exc})"
        ) from exc
    expected = (view.camera.height, view.camera.width)
    if array.shape[:2] != expected:
        raise DataError(
            f"{path}: image is {array.shape[1]}x{array.shape[0]} but data.json says "
            f"width={view.camera.width}, height={view.camera.height}"
        )
    return array


def camera_from_json(
    path: Path, cams: dict[str, Any], capture: int, cam_id: str, width: int, height: int
) -> PinholeCamera:
    """The camera ``cam_id`` of one capture's camera.json entry ``cams`` (errors name ``path``)."""
    where = f"{path}: cams['{capture}'] camera '{cam_id}'"
    fields = {}
    for name in ("campos", "camrot", "focal", "princpt"):
        table = cams.get(name)
        if not isinstance(table, dict) or cam_id not in table:
            raise DataError(f"{where}: missing cams['{capture}']['{name}']['{cam_id}']")
        fields[name] = table[cam_id]
    return PinholeCamera.from_interhand(
        campos_mm=fields["campos"],
        camrot=fields["camrot"],
        focal=fields["focal"],
        princpt=fields["princpt"],
        width=width,
        height=height,
        name=cam_id,
        where=where,
    )
