"""Crafted files that try to run code are refused before anything runs.

Already covered elsewhere (not repeated here): a MANO pickle calling ``os.system`` or
``eval`` (tests/hand/test_mano_file.py) and a raw-pickle checkpoint, a truncated one and a
foreign one (tests/train/test_fit.py). This file adds the paths those leave open: a
checkpoint in torch's own zip format, the same through ``handnerf eval``/``render``, code
hidden in a numpy object array inside a MANO pickle, and a poisoned conversion cache.
Each crafted payload would create a sentinel file; the tests check it never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.cli import main
from handnerf.errors import CheckpointError, UnsafePickleError
from handnerf.hand import mano_file
from handnerf.hand.mano_file import load_mano_file
from handnerf.hand.procedural import procedural_mano_dir
from handnerf.train.checkpoint import FORMAT, FORMAT_VERSION, LATEST, load_checkpoint


class _TouchesSentinel:
    """Unpickling this runs ``os.system('touch <sentinel>')``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.sentinel}",))


def _evil_checkpoint(path: Path, sentinel: Path) -> Path:
    """A checkpoint in torch's zip format with the right marker and a code-running object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "step": 1,
            "model": {"w": torch.ones(2)},
            "hook": _TouchesSentinel(sentinel),
        },
        path,
    )
    return path


def test_zip_format_checkpoint_with_code_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    path = _evil_checkpoint(tmp_path / LATEST, sentinel)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not sentinel.exists()


@pytest.mark.parametrize("command", ["eval", "render"])
def test_cli_refuses_a_crafted_run_checkpoint(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sentinel = tmp_path / "pwned"
    run = tmp_path / "run"
    _evil_checkpoint(run / "checkpoints" / LATEST, sentinel)
    (run / "run.json").write_text(json.dumps({"data_root": str(tmp_path)}))
    out = tmp_path / ("report" if command == "eval" else "out.gif")
    status = main([command, "--run", str(run), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "refused to load" in err and "Traceback" not in err
    assert not sentinel.exists()


def test_mano_pickle_hiding_code_in_an_object_array_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _TouchesSentinel(sentinel)
    path = tmp_path / "MANO_RIGHT.pkl"
    # numpy's array reconstruction is allowed; the objects inside must still be refused
    path.write_bytes(pickle.dumps({"v_template": payload}, protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        load_mano_file(path)
    assert not sentinel.exists()


def test_poisoned_conversion_cache_is_ignored_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The .npz conversion cache loads with allow_pickle=False: a pickle in it never runs."""
    source = Path(procedural_mano_dir()) / "MANO_RIGHT.pkl"
    path = tmp_path / "MANO_RIGHT.pkl"
    shutil.copyfile(source, path)
    monkeypatch.setenv("HANDNERF_CACHE", str(tmp_path / "cache"))
    honest = load_mano_file(path)
    cache_file = mano_file._cache_path(honest.sha256)
    assert cache_file.is_file()

    sentinel = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _TouchesSentinel(sentinel)
    with open(cache_file, "wb") as handle:
        np.savez(handle, v_template=payload, f=payload)  # object arrays are pickled inside
    reloaded = load_mano_file(path)
    assert not sentinel.exists()
    assert np.array_equal(reloaded.v_template, honest.v_template)
    with np.load(cache_file, allow_pickle=False) as npz:  # rebuilt with plain arrays
        assert npz["v_template"].dtype == np.float64
