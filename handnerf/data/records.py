"""InterHand2.6M annotation records: one image, camera, MANO and joint record each.

Every function here turns one JSON record (already parsed, by either reader) into checked
numpy values or a DataError naming where in which file the record was; :class:`FrameView`
is what a selection hands out per image. Millimetres are converted to metres on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from handnerf.data.camera import PinholeCamera, holds_json_bool
from handnerf.errors import DataError

#: Rows of joint_3d's 42 joints that belong to each hand (``"both"``: all 42).
HAND_ROWS: dict[str, slice] = {"right": slice(0, 21), "left": slice(21, 42), "both": slice(0, 42)}

#: Values of ``hand_type`` in data.json's annotations and joint_3d.json: a two-hand frame
#: is ``'interacting'`` (each hand then has its own MANO entry).
HAND_TYPES: tuple[str, ...] = ("right", "left", "interacting")

#: MANO parameter lengths in InterHand's MANO_NeuralAnnot.json.
_MANO_LENGTHS: dict[str, int] = {"pose": 48, "shape": 10, "trans": 3}

#: Largest |value| of a MANO parameter taken as real: radians, shape sigmas and metres
#: are all far below it; anything above is corrupt (and 1e39 overflows float32).
MANO_VALUE_LIMIT = 1e3

# --------------------------------------------------------------------------- views


@dataclass(frozen=True, eq=False)
class FrameView:
    """One image of the selection: a (frame, camera) pair with everything needed to use it.

    Attributes:
        image_path: absolute path of the JPEG.
        split, capture, seq_name, camera_id, frame_idx: where it comes from.
        camera: the camera in metres (its width/height are data.json's).
        mano: ``{'pose': (48,), 'shape': (10,), 'trans': (3,)}`` float64, InterHand's
            convention (pose relative to ``hands_mean``, trans in metres, world frame);
            empty for ``hand='both'`` (see ``two_hands`` and :attr:`hands_mano`).
        hand: ``'right'``, ``'left'`` or ``'both'`` (a two-hand frame).
        keypoints_world: (21, 3) metres in InterHand keypoint order ((42, 3), right then
            left, for ``'both'``), or None when the capture has no joint_3d annotation
            for this frame.
        keypoints_valid: (21,) bool ((42,) for ``'both'``), or None together with
            ``keypoints_world``.
        bbox: ``(x, y, w, h)`` pixels from data.json's annotation, or None.
        image_id: data.json's image id.
        hand_type: the frame's ``'right'``, ``'left'`` or ``'interacting'`` (both hands in
            view) from joint_3d.json, else data.json; None when absent or flagged invalid.
        two_hands: ``{'right': mano, 'left': mano}`` for ``hand='both'``, else None.
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
    two_hands: dict[str, dict[str, np.ndarray]] | None = None

    @property
    def hands_mano(self) -> dict[str, dict[str, np.ndarray]]:
        """``{side: MANO params}`` of every hand the view is selected for (right first)."""
        if self.two_hands is not None:
            return dict(self.two_hands)
        return {self.hand: self.mano}

    def mano_where_of(self, side: str) -> str:
        """Where ``side``'s MANO entry of this view lives, for error messages."""
        return f"MANO_NeuralAnnot.json: mano['{self.capture}']['{self.frame_idx}']['{side}']"

    @property
    def key(self) -> tuple[int, str, str, int]:
        """``(capture, seq_name, camera_id, frame_idx)``: unique within a split."""
        return self.capture, self.seq_name, self.camera_id, self.frame_idx

    @property
    def mano_where(self) -> str:
        """Where this view's MANO entry lives, for error messages."""
        return self.mano_where_of(self.hand)


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


def parse_frame_mano(frame_entry: object, hand: str) -> tuple[Any, str | None]:
    """The MANO fit a selection of ``hand`` needs from one frame of MANO_NeuralAnnot.json.

    Returns ``(params, None)`` (see :func:`parse_mano_entry`) for ``'right'``/``'left'``;
    for ``'both'``, ``({'right': params, 'left': params}, None)`` when both hands have a
    usable fit. Otherwise ``(None, skip reason)``. Rule for ``'both'``: a frame where one
    hand's MANO is null (or malformed) is skipped and counted (``"... (left hand; both
    needed)"``), not fitted with the present hand alone: the other hand is still in the
    images, and an avatar taught with it absent would paint it onto the hand it has.
    """
    sides = (hand,) if hand != "both" else ("right", "left")
    found: dict[str, dict[str, np.ndarray]] = {}
    for side in sides:
        needed = "; both needed" if hand == "both" else ""
        if not isinstance(frame_entry, dict) or side not in frame_entry:
            return None, f"no {side}-hand MANO entry for the frame{needed.replace(';', ',')}"
        params, reason = parse_mano_entry(frame_entry[side])
        if params is None:
            return None, f"{reason} ({side} hand{needed})"
        found[side] = params
    return (found if hand == "both" else found[hand]), None


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
    # Absent (older layouts) means valid; present, it must be a flag (null is not one).
    if "hand_type_valid" in entry:
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


def interhand_camera(
    path: Path, cams: dict[str, Any], capture: int, cam_id: str, width: int, height: int
) -> PinholeCamera:
    """The camera ``cam_id`` of one capture's InterHand camera.json entry ``cams``.

    ``cams`` holds ``campos`` (mm), ``camrot``, ``focal`` and ``princpt`` keyed by camera id;
    the camera gets data.json's ``width``/``height``. Errors name ``path``.
    """
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
