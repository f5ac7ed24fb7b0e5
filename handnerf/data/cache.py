"""The prepared-capture cache written by ``handnerf prepare`` and read by ``fit``.

Layout of a cache folder::

    CACHE/prepare.json                               the job (selection, options, sources)
    CACHE/views/{seq}/cam{ID}/{frame:06d}.json       one view's record: the "complete" marker
    CACHE/views/{seq}/cam{ID}/{frame:06d}.png        its cropped image (RGB, lossless)
    CACHE/views/{seq}/cam{ID}/{frame:06d}_mask.png   its cropped mask
    CACHE/index.json                                 cameras, MANO per frame, views, provenance

Every file is written to a temporary name and renamed into place, so a file under its
final name is always whole. A view's record is written after its PNGs, and ``index.json``
after every record: a record means the view is done, ``index.json`` means the cache is.
An interrupted run leaves at most temporary files (ignored and cleaned) and views without
a record (redone).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from handnerf import files
from handnerf.data.camera import PinholeCamera, camera_from_json
from handnerf.data.crops import Crop, CropConfig, crop_box, crop_hand, padding_free, square_box
from handnerf.data.interhand import HANDS, SPLITS, FrameView
from handnerf.errors import DataError, SelectionError

INDEX_NAME = "index.json"
SPEC_NAME = "prepare.json"
FORMAT = "handnerf-prepared-capture"
VERSION = 1


# --------------------------------------------------------------------------- writing


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file in the same folder and a rename."""
    try:
        files.atomic_write_bytes(path, payload)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc}") from exc


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=1).encode())


def view_stem(seq_name: str, camera_id: str, frame_idx: int) -> str:
    """``views/{seq}/cam{ID}/{frame:06d}``, relative to the cache root."""
    return f"views/{seq_name}/cam{camera_id}/{frame_idx:06d}"


def _encode_png(array: np.ndarray, path: Path) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise DataError(f"could not encode {path}")
    return encoded.tobytes()


def write_view(root: Path, record: dict[str, Any], crop: Crop | None) -> dict[str, Any]:
    """Store one view: its PNGs (when kept) and then its record, each atomically.

    ``record`` must hold ``seq``, ``camera``, ``frame``; for a kept view (``crop`` given)
    the image and mask file names are added. Returns the record as stored.
    """
    stem = view_stem(record["seq"], record["camera"], int(record["frame"]))
    if crop is not None:
        assert crop.mask is not None
        image_path = root / f"{stem}.png"
        mask_path = root / f"{stem}_mask.png"
        atomic_write_bytes(image_path, _encode_png(crop.image[..., ::-1], image_path))
        atomic_write_bytes(mask_path, _encode_png(crop.mask.astype(np.uint8) * 255, mask_path))
        record = {**record, "image": f"{stem}.png", "mask": f"{stem}_mask.png"}
    atomic_write_json(root / f"{stem}.json", record)
    return record


def read_record(root: Path, seq_name: str, camera_id: str, frame_idx: int) -> dict[str, Any] | None:
    """A finished view's record, or None when the view must be (re)done.

    A record that does not parse, or whose PNGs are gone, does not count as finished.
    """
    path = root / f"{view_stem(seq_name, camera_id, frame_idx)}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") not in ("kept", "filtered"):
        return None
    if record["status"] == "kept" and not all(
        (root / str(record.get(key, ""))).is_file() for key in ("image", "mask")
    ):
        return None
    return record


# --------------------------------------------------------------------------- reading


def is_prepared_cache(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``handnerf prepare`` (complete or not)."""
    path = Path(path)
    return (path / INDEX_NAME).is_file() or (path / SPEC_NAME).is_file()


def interhand_root(path: str | Path) -> Path:
    """The InterHand2.6M root behind ``path``: ``path`` itself, or a cache's source root.

    For consumers that need the source images (e.g. evaluation, which crops them itself).
    """
    path = Path(path)
    if not is_prepared_cache(path):
        return path
    spec_file = path / SPEC_NAME if (path / SPEC_NAME).is_file() else path / INDEX_NAME
    try:
        source = Path(json.loads(spec_file.read_text())["source"]["root"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{spec_file}: unreadable 'source.root' ({exc})") from exc
    if not source.is_dir():
        raise DataError(
            f"{path} was prepared from {source}, which no longer exists; evaluation reads "
            "the source images"
        )
    return source


@dataclass(frozen=True, eq=False)
class CachedView:
    """One kept view of a cache: the source view and where its crop lives.

    ``view`` has the *source* camera and image path; ``camera`` is the camera of the
    cached (cropped/scaled) image, of size ``camera.width x camera.height``.
    """

    view: FrameView
    camera: PinholeCamera
    image_file: Path
    mask_file: Path
    box: tuple[int, int, int, int]


def _expect(value: Any, kind: type, field: str, allowed: tuple[str, ...] | None = None) -> Any:
    """``value`` if it is a ``kind`` (bools are not ints here) and in ``allowed``; else ValueError."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{field!r} is not a {kind.__name__}: {value!r}")
    if allowed is not None and value not in allowed:
        raise ValueError(f"{field!r} is {value!r}, not one of {', '.join(allowed)}")
    return value


class PreparedCache:
    """Read a complete cache: views by sequence, their images, masks, cameras and MANO.

    Raises DataError when ``root`` holds no finished cache (naming what to do about it).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index_path = self.root / INDEX_NAME
        if not index_path.is_file():
            if (self.root / SPEC_NAME).is_file():
                raise DataError(
                    f"{self.root}: prepared cache is incomplete (no {INDEX_NAME}); re-run "
                    "'handnerf prepare' with the same arguments to finish it"
                )
            raise DataError(f"{self.root}: not a prepared cache (no {INDEX_NAME})")
        try:
            index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{index_path}: unreadable ({exc})") from exc
        files.check_format_marker(
            index,
            index_path,
            "prepared cache index",
            ("format", FORMAT),
            ("version", VERSION),
            DataError,
            "; re-run 'handnerf prepare' into a new folder",
        )
        self.index: dict[str, Any] = index
        try:
            spec = index["spec"]
            # Types are checked, not coerced: str(None) or int("3") would hide a damaged index.
            self.split: str = _expect(spec["split"], str, "spec.split", SPLITS)
            self.capture: int = _expect(spec["capture"], int, "spec.capture")
            if self.capture < 0:
                raise ValueError(f"'spec.capture' is negative ({self.capture})")
            self.hand: str = _expect(spec["hand"], str, "spec.hand", ("right", "left", "both"))
            self.crop = CropConfig(**_expect(spec["crop"], dict, "spec.crop"))
            _expect(index["cameras"], dict, "cameras")
            _expect(index["frames"], list, "frames")
            self.cameras = {
                str(cam_id): camera_from_json(entry, str(cam_id))
                for cam_id, entry in index["cameras"].items()
            }
            self._frames = {(str(f["seq"]), int(f["frame"])): f for f in index["frames"]}
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            # A damaged index that still carries the right marker: say so, never trust it.
            raise DataError(
                f"{index_path}: malformed index ({type(exc).__name__}: {exc}); re-run "
                "'handnerf prepare' into a new folder"
            ) from exc

    @property
    def refined_masks(self) -> bool:
        """Whether the stored masks are GrabCut refinements of the MANO silhouettes."""
        return bool(self.index["spec"].get("refine_masks", False))

    @property
    def filter_counts(self) -> dict[str, int]:
        """Views dropped by the frame filters, by reason."""
        return {str(k): int(v) for k, v in dict(self.index.get("filter_counts") or {}).items()}

    @property
    def crop_text(self) -> str:
        """The stored image geometry in words, e.g. ``1.3x hand-bbox crops of 256x256 px``."""
        if self.crop.mode == "crop":
            size = self.crop.out_size
            return f"{self.crop.scale:g}x hand-bbox crops of {size}x{size} px"
        return f"full frames scaled by {self.crop.full_scale:g}"

    @property
    def sequences(self) -> list[str]:
        return sorted({seq for seq, _ in self._frames})

    @property
    def hand_sha(self) -> str:
        return str(self.index["hand"]["sha256"])

    @property
    def hand_record(self) -> object:
        """The hand model(s) the masks were made with, as recorded (see
        :mod:`handnerf.hand.identity`)."""
        return self.index["hand"]

    @property
    def selection_report(self) -> str:
        return str(self.index["selection_report"])

    @property
    def fingerprint(self) -> str:
        return str(self.index["fingerprint"])

    def mano(self, seq_name: str, frame_idx: int) -> dict[str, np.ndarray]:
        """``{'pose': (48,), 'shape': (10,), 'trans': (3,)}`` float64 of one frame (empty
        in a two-hand cache: see :meth:`hands_mano`)."""
        entry = self._frames[(seq_name, frame_idx)]["mano"]
        return {k: np.asarray(v, dtype=np.float64) for k, v in entry.items()}

    def hands_mano(self, seq_name: str, frame_idx: int) -> dict[str, dict[str, np.ndarray]]:
        """``{side: MANO params}`` of one frame: the cache's hand, or right and left for a
        two-hand cache (``hand == 'both'``); a missing or malformed side is a DataError."""
        if self.hand != "both":
            return {self.hand: self.mano(seq_name, frame_idx)}
        where = f"{self.root / INDEX_NAME}: frames[{seq_name} {frame_idx}].two_hands"
        entry = self._frames[(seq_name, frame_idx)].get("two_hands")
        out: dict[str, dict[str, np.ndarray]] = {}
        for side in HANDS:
            params = entry.get(side) if isinstance(entry, dict) else None
            if not isinstance(params, dict):
                raise DataError(
                    f"{where}.{side}: missing (a two-hand cache stores both hands' MANO per "
                    "frame); re-run 'handnerf prepare --hand both' into a new folder"
                )
            try:
                out[side] = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
            except (TypeError, ValueError) as exc:
                raise DataError(f"{where}.{side}: not numbers ({exc})") from exc
        return out

    def frames(self, seq_name: str) -> list[int]:
        """Sorted frame indices of ``seq_name`` with at least one kept view."""
        self._check_seq(seq_name)
        return sorted(f for s, f in self._frames if s == seq_name)

    def _check_seq(self, seq_name: str) -> None:
        if seq_name not in self.sequences:
            raise SelectionError(
                f"sequence {seq_name!r} is not in the prepared cache {self.root}; "
                f"it holds: {', '.join(self.sequences) or '(none)'}"
            )

    def entries(self, seq_name: str) -> list[CachedView]:
        """Kept views of ``seq_name`` sorted by (frame, camera)."""
        self._check_seq(seq_name)
        image_root = Path(self.index["source"]["root"]) / "images" / self.split
        out: list[CachedView] = []
        for record in self.index["views"]:
            if record["seq"] != seq_name:
                continue
            frame = int(record["frame"])
            cam_id = str(record["camera"])
            frame_entry = self._frames[(seq_name, frame)]
            keypoints = frame_entry.get("keypoints_world")
            valid = frame_entry.get("keypoints_valid")
            view = FrameView(
                image_path=image_root / record["file_name"],
                split=self.split,
                capture=self.capture,
                seq_name=seq_name,
                camera_id=cam_id,
                frame_idx=frame,
                camera=self.cameras[cam_id],
                mano=self.mano(seq_name, frame),
                hand=self.hand,
                two_hands=self.hands_mano(seq_name, frame) if self.hand == "both" else None,
                keypoints_world=None if keypoints is None else np.asarray(keypoints, np.float64),
                keypoints_valid=None if valid is None else np.asarray(valid, dtype=bool),
                bbox=None if record.get("bbox") is None else tuple(record["bbox"]),  # type: ignore[arg-type]
                image_id=int(record["image_id"]),
            )
            crop = record["crop"]
            out.append(
                CachedView(
                    view=view,
                    camera=PinholeCamera(
                        K=np.asarray(crop["K"], dtype=np.float64),
                        R=view.camera.R,
                        t=view.camera.t,
                        width=int(crop["width"]),
                        height=int(crop["height"]),
                        name=cam_id,
                    ),
                    image_file=self.root / record["image"],
                    mask_file=self.root / record["mask"],
                    box=tuple(int(v) for v in crop["box"]),  # type: ignore[arg-type]
                )
            )
        out.sort(key=lambda e: (e.view.frame_idx, e.view.camera_id))
        return out

    def read(self, entry: CachedView) -> Crop:
        """The cached (H, W, 3) uint8 image and (H, W) bool mask of ``entry``."""
        image = cv2.imread(str(entry.image_file), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(entry.mask_file), cv2.IMREAD_GRAYSCALE)
        shape = (entry.camera.height, entry.camera.width)
        for name, array in ((entry.image_file, image), (entry.mask_file, mask)):
            if array is None or array.shape[:2] != shape:
                raise DataError(
                    f"{name}: missing, corrupt or not {shape[1]}x{shape[0]}; re-run "
                    "'handnerf prepare' (delete the view's .json to redo it)"
                )
        assert image is not None and mask is not None
        source = entry.view.camera
        return Crop(
            image=np.ascontiguousarray(image[..., ::-1]),
            mask=mask > 127,
            camera=entry.camera,
            box=entry.box,
            # Recomputed from the recorded box: which stored pixels are padding, not photo.
            valid=padding_free(
                (source.height, source.width), entry.box, (entry.camera.width, entry.camera.height)
            ),
        )

    def source_mask(self, entry: CachedView) -> np.ndarray:
        """``entry``'s stored mask mapped back onto its source image: (H, W) bool.

        The stored crop is an axis-aligned scale and shift of the source pixels inside its
        box, so the inverse is exact up to resampling (a mask stored at a lower resolution
        comes back with coarser edges). Source pixels outside the box are background: the
        box holds the whole mask it was cut around.
        """
        stored = self.read(entry).mask
        assert stored is not None
        x0, y0, box_w, box_h = entry.box
        sx, sy = entry.camera.width / box_w, entry.camera.height / box_h
        # Source pixel centre u + 0.5 lies at crop coordinate (u + 0.5 - x0) * sx, i.e.
        # at crop pixel index (u + 0.5 - x0) * sx - 0.5 (corner convention of crops.py).
        to_stored = np.array(
            [[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]], np.float64
        )
        source = entry.view.camera
        back = cv2.warpAffine(
            stored.astype(np.float32),
            to_stored,
            (source.width, source.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        return back >= 0.5

    def read_cropped(self, entry: CachedView, scale: float, out_size: int) -> Crop:
        """``entry`` as a square hand crop of side ``scale`` x bbox, ``out_size`` pixels.

        When the cache holds exactly such crops they are returned as stored; otherwise the
        cached image is cropped again around its mask (a full-frame cache, or a crop of
        another size). Cutting a smaller-scale crop out of a larger one is exact up to
        resampling; the reverse pads with black.
        """
        stored = self.read(entry)
        if (
            self.crop.mode == "crop"
            and abs(self.crop.scale - scale) < 1e-9
            and self.crop.out_size == out_size
        ):
            return stored
        assert stored.mask is not None
        if stored.mask.any():
            return crop_hand(
                stored.image, stored.camera, stored.mask, scale=scale, out_size=out_size
            )
        whole = (0, 0, stored.camera.width, stored.camera.height)
        box = square_box((0, 0, whole[2], whole[3]), 1.0)
        return crop_box(stored.image, stored.camera, box, out_size, stored.mask)
