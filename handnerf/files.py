"""Files and the machine: atomic writes, the cache root, the device and machine info.

The one I/O module of the core layer (it imports only :mod:`handnerf.interrupts`; torch
is imported inside the functions that need it, so data-only tools do not load it).

Atomic file writes: a reader (or a killed job's re-run) sees the old file or the new one.

Every file a job leaves behind goes through :func:`atomic_path`: the content is written to
a temporary file in the target's folder (``.NAME.XXXX.tmp``), flushed and fsynced, and
renamed over the target. The rename runs inside :func:`handnerf.interrupts.held`, so a
SIGINT/SIGTERM cannot separate it from the write; a SIGKILL or a crash leaves at most the
temporary file, which readers ignore and :func:`remove_stale_temp_files` clears.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handnerf import interrupts

if TYPE_CHECKING:
    import torch

#: Every temporary file is named ``.NAME.XXXX.tmp`` or ``.NAME.XXXX.tmp.EXT``.
TEMP_PATTERNS: tuple[str, ...] = (".*.tmp", ".*.tmp.*")


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    The temporary file is named ``.NAME.XXXX.tmp``, or ``.NAME.XXXX.tmp.EXT`` with
    ``keep_suffix`` (for writers that pick their format from the file name, like ffmpeg).
    On any exception (full disk, interrupt) the temporary file is removed and ``path``
    is left as it was. ``mode``: permissions of the final file (mkstemp makes owner-only
    files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with interrupts.held():
            yield tmp
            os.chmod(tmp, mode)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            interrupts.reached("write", path.name)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, payload: bytes, mode: int = 0o644) -> None:
    """Write ``payload`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, mode) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY), "wb") as handle:
        handle.write(payload)  # atomic_path fsyncs before the rename


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any, **dumps: Any) -> None:
    """``json.dumps(value, **dumps)`` written atomically."""
    atomic_write_bytes(path, json.dumps(value, **dumps).encode("utf-8"))


def check_format_marker(
    content: Any,
    path: str | Path,
    what: str,
    marker: tuple[str, str],
    version: tuple[str, int],
    error: type[Exception],
    advice: str = "",
) -> None:
    """Refuse a loaded file that does not carry our format marker and version.

    ``content`` must be a dict whose ``marker[0]`` entry is ``marker[1]`` and whose
    ``version[0]`` entry is ``version[1]``; otherwise ``error`` is raised naming ``path``,
    ``what`` the file should be (e.g. ``"handnerf checkpoint"``) and, for a version this
    handnerf does not read, ``advice`` on what to do instead.
    """
    key, expected = marker
    if not isinstance(content, dict) or content.get(key) != expected:
        raise error(f"{path}: not a {what} ({key!r} is not {expected!r})")
    key, readable = version
    if content.get(key) != readable:
        raise error(
            f"{path}: {what} {key!r} is {content.get(key)!r}, this handnerf reads "
            f"{readable}{advice}"
        )


def remove_temp_files_under(folder: str | Path) -> list[Path]:
    """Delete every temporary file an atomic write left anywhere under ``folder``.

    Only safe while no other process writes there (one job per output folder).
    """
    folder = Path(folder)
    removed = sorted({p for pattern in TEMP_PATTERNS for p in folder.rglob(pattern)})
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Delete temporary files that a killed atomic write of ``path`` left behind.

    Only safe while no other process writes ``path``. Returns the files removed.
    """
    path = Path(path)
    removed = []
    for pattern in (f".{path.name}.*.tmp", f".{path.name}.*.tmp.*"):
        for tmp in path.parent.glob(pattern):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# --------------------------------------------------------------------------- machine


def cache_root() -> Path:
    """Root of handnerf's on-disk caches: ``$HANDNERF_CACHE``, or ``~/.cache/handnerf``."""
    root = os.environ.get("HANDNERF_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "handnerf"


def pick_device(name: str) -> torch.device:
    """The torch device ``name``; ``'auto'`` is the first GPU when there is one, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def machine_info() -> dict[str, Any]:
    """Python, torch, OS, CPU and accelerator of this machine, for reproducibility.

    One schema for every report (fit, evaluation, benchmarks): ``cuda`` is a bool;
    ``cuda_device`` (GPU name) and ``cuda_version`` (torch's CUDA build) are None
    without a GPU.
    """
    import torch

    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
    }
