"""A full disk while writing checkpoints, logs and caches: the previous file stays usable.

ENOSPC is simulated by monkeypatching the write path (the temp file's ``write`` or
``os.fsync``), the way a real full disk fails: mid-write or at flush time.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import handnerf.files as files_module
from handnerf.cli import main
from handnerf.data.masks import MaskCache, MaskKey
from handnerf.errors import CheckpointError, DataError
from handnerf.train.checkpoint import LATEST, load_checkpoint, save_checkpoint


def _disk_full(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _FillsUp:
    """A file handle that writes half of what it is given, then reports a full disk."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, data: bytes) -> int:
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _FillsUp:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("where", ["fsync", "mid-write"])
def test_full_disk_during_checkpoint_write_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    path = tmp_path / "checkpoints" / LATEST
    save_checkpoint(path, {"step": 3, "model": {"w": torch.arange(4.0)}})
    if where == "fsync":
        monkeypatch.setattr(files_module.os, "fsync", _disk_full)
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(
            files_module.os, "fdopen", lambda *a, **k: _FillsUp(real_fdopen(*a, **k))
        )
    with pytest.raises(CheckpointError, match=r"No space left on device.*previous checkpoint"):
        save_checkpoint(path, {"step": 6, "model": {"w": torch.zeros(4)}})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.arange(4.0))
    assert _leftovers(path.parent) == [], "a half-written temp file was left behind"


def test_fit_stops_cleanly_when_the_disk_fills_up(
    tiny_capture: Path,
    tmp_path: Path,
    small_fit: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    real_fsync = os.fsync
    saves = {"n": 0}

    def fsync_fills_on_second_checkpoint(fd: int) -> None:
        if f".{LATEST}." in os.readlink(f"/proc/self/fd/{fd}"):  # not config.yaml, run.json
            saves["n"] += 1
            if saves["n"] >= 2:
                _disk_full()
        real_fsync(fd)

    monkeypatch.setattr(files_module.os, "fsync", fsync_fills_on_second_checkpoint)
    args = ["fit", "--data", str(tiny_capture), "--out", str(run), "--no-progress", *small_fit]
    assert main([*args, "train.steps=6"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
    latest = run / "checkpoints" / LATEST
    assert load_checkpoint(latest)["step"] == 3  # checkpoint_every=3: the first save
    assert _leftovers(latest.parent) == []
    # once space is back, --resume continues from that checkpoint to the end
    monkeypatch.undo()
    assert main([*args, "train.steps=6", "--resume"]) == 0
    assert load_checkpoint(latest)["step"] == 6


def test_full_disk_while_logging_names_the_log_and_the_checkpoint(
    tiny_capture: Path,
    tmp_path: Path,
    small_fit: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    real_open = open

    def open_fails_for_the_log(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            _disk_full()
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr("builtins.open", open_fails_for_the_log)
    args = ["fit", "--data", str(tiny_capture), "--out", str(run), "--no-progress", *small_fit]
    assert main([*args, "train.steps=4"]) == 2
    err = capsys.readouterr().err
    assert "cannot append to" in err and "metrics.jsonl" in err and "No space left" in err


def test_full_disk_while_caching_a_mask_keeps_the_cached_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = MaskCache(tmp_path / "masks")
    key = MaskKey(
        model_sha="0" * 64,
        capture=0,
        seq_name="ROM04_RT_Occlusion",
        camera_id="400002",
        frame_idx=1,
        hand="right",
        supersample=2,
    )
    good = np.zeros((6, 5), dtype=bool)
    good[2:4, 1:3] = True
    path = cache.put(key, good)
    real_fdopen = os.fdopen
    monkeypatch.setattr("handnerf.files.os.fdopen", lambda *a, **k: _FillsUp(real_fdopen(*a, **k)))
    with pytest.raises(DataError, match=f"cannot write mask cache {path}"):
        cache.put(key, ~good)
    monkeypatch.undo()
    cached = cache.get(key)
    assert cached is not None and np.array_equal(cached, good)
    assert _leftovers(path.parent) == []
