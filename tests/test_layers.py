"""The layers contract (pyproject.toml, `lint-imports`) holds, and catches an upward import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_package_keeps_its_layers() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_is_named(tmp_path: Path) -> None:
    shutil.copytree(
        REPO / "handnerf", tmp_path / "handnerf", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    field = tmp_path / "handnerf" / "model" / "field.py"
    field.write_text(field.read_text() + "\nfrom handnerf.train import losses  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "handnerf.model is not allowed to import handnerf.train" in result.stdout
    assert "handnerf.model.field -> handnerf.train.losses" in result.stdout
