"""InterHand2.6M annotation files: where they are, parsing them once, and capture guards.

A dataset root is laid out as::

    ROOT/images/{split}/Capture{N}/{seq_name}/cam{ID}/image{FRAME}.jpg
    ROOT/annotations/{split}/InterHand2.6M_{split}_{data,camera,joint_3d,MANO_NeuralAnnot}.json

or the older release layout where the annotation JSONs live in
``annotations/all/`` (or ``human_annot/``, ``machine_annot/``). The synthetic captures
of ``handnerf synth`` use the same layout, marked by :data:`SYNTH_MARKER`.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handnerf.errors import DataError, NovelPoseSequenceError, ProceduralHandError

SPLITS: tuple[str, ...] = ("train", "val", "test")
HANDS: tuple[str, ...] = ("right", "left")
#: What a selection may ask for: one hand, or ``"both"`` (two-hand frames, each hand's MANO).
HAND_CHOICES: tuple[str, ...] = (*HANDS, "both")

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


def refuse_seen_novel_pose(
    train_seq: str, novel_pose_seq: str | None, extra_train_seqs: Sequence[str] = ()
) -> None:
    """Refuse a novel-pose sequence that is trained on (NovelPoseSequenceError): the
    training sequence or one of the extra training sequences (``data.extra_train_seqs``)."""
    if novel_pose_seq is None:
        return
    if novel_pose_seq == train_seq:
        raise NovelPoseSequenceError(
            f"data.novel_pose_seq={novel_pose_seq!r} is the training sequence "
            f"(data.train_seq={train_seq!r}): its poses are seen in training, so it cannot "
            "measure novel poses; choose another sequence or data.novel_pose_seq=null"
        )
    if novel_pose_seq in extra_train_seqs:
        raise NovelPoseSequenceError(
            f"data.novel_pose_seq={novel_pose_seq!r} is one of the extra training sequences "
            f"(data.extra_train_seqs={list(extra_train_seqs)!r}): its poses are seen in "
            "training, so it cannot measure novel poses; drop it from data.extra_train_seqs, "
            "choose another novel-pose sequence or data.novel_pose_seq=null"
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
