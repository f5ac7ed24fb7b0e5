"""Atomic, resumable, safely loadable checkpoints.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers, so it
loads with ``torch.load(..., weights_only=True)``: a crafted file cannot run code. It is
written to a temporary file in the same folder, flushed and fsynced, then renamed over the
target, so a crash or a full disk mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from handnerf.errors import CheckpointError
from handnerf.files import atomic_write_bytes, check_format_marker

#: Written into every checkpoint; a file without it is not ours.
FORMAT = "handnerf-checkpoint"
FORMAT_VERSION = 1

LATEST = "latest.pt"


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Serialise ``state`` (tensors, dicts, lists, str/int/float/bool/None) atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, buffer)
    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError as exc:  # disk full, quota, read-only folder...
        raise CheckpointError(
            f"cannot write checkpoint {path} ({exc.strerror or exc}); the previous checkpoint "
            "there, if any, is intact"
        ) from exc


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, refusing anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals outside torch's allow-list: a crafted or foreign file.
        raise CheckpointError(
            f"{path}: refused to load (not a plain-tensor checkpoint; it may try to run code): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint ({exc})") from exc
    check_format_marker(
        state,
        path,
        "handnerf checkpoint",
        ("format", FORMAT),
        ("format_version", FORMAT_VERSION),
        CheckpointError,
    )
    return state


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
