"""More subjects in one synthetic root: copies of Capture0 as Capture1..N-1.

InterHand2.6M's annotation files hold many captures (subjects) of a split; a synthetic
capture holds one. For jobs over many subjects (``handnerf batch``'s ``every:`` entries,
its tests and benchmark) this lays a finished capture out as N captures: the images and
masks of Capture0 are copied, and every annotation file gets Capture0's records again
under each new capture number (``data.json``'s images and annotations with new ids, the
``{capture: ...}`` tables of cameras, MANO and joints). The subjects are identical; the
layout is InterHand's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from handnerf.errors import DataError
from handnerf.files import atomic_write_json

#: The annotation files keyed by capture (besides data.json).
_TABLES: tuple[str, ...] = ("camera", "MANO_NeuralAnnot", "joint_3d")


def replicate_captures(root: str | Path, n_captures: int, split: str = "test") -> Path:
    """Give the one-capture synthetic root ``root`` captures 0..``n_captures``-1 in place.

    Raises DataError when ``root`` is not a one-capture root of ``split``.
    """
    root = Path(root)
    folder = root / "annotations" / split
    data_path = folder / f"InterHand2.6M_{split}_data.json"
    if not data_path.is_file() or not (root / "images" / split / "Capture0").is_dir():
        raise DataError(f"{root}: not a synthetic capture of split {split!r} (no Capture0)")
    data = json.loads(data_path.read_text())
    if {img.get("capture") for img in data["images"]} != {0}:
        raise DataError(f"{data_path}: expected the records of Capture0 only")
    n = len(data["images"])
    images: list[dict[str, Any]] = list(data["images"])
    annotations: list[dict[str, Any]] = list(data["annotations"])
    for capture in range(1, n_captures):
        for kind in ("images", "gt_masks"):
            source = root / kind / split / "Capture0"
            if source.is_dir():
                shutil.copytree(source, root / kind / split / f"Capture{capture}")
        for img in data["images"]:
            copy = dict(img, id=img["id"] + capture * n, capture=capture)
            copy["file_name"] = img["file_name"].replace("Capture0/", f"Capture{capture}/", 1)
            images.append(copy)
        for ann in data["annotations"]:
            annotations.append(
                dict(ann, id=ann["id"] + capture * n, image_id=ann["image_id"] + capture * n)
            )
    atomic_write_json(data_path, {"images": images, "annotations": annotations})
    for kind in _TABLES:
        path = folder / f"InterHand2.6M_{split}_{kind}.json"
        if not path.is_file():
            continue
        table = json.loads(path.read_text())
        for capture in range(1, n_captures):
            table[str(capture)] = table["0"]
        atomic_write_json(path, table)
    return root
