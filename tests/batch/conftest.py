"""Fixtures for the batch tests: an InterHand2.6M root with three subjects, and plans.

The root is the session's tiny synthetic capture laid out as three captures (subjects)
of the test split (:func:`handnerf.synth.subjects.replicate_captures`), as
InterHand2.6M's files hold many captures. A plan's ``every:`` entry then expands to three
avatars, read from data.json like on the real dataset.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handnerf.config import overrides_from_yaml

N_CAPTURES = 3
TRAIN_SEQ = "ROM04_RT_Occlusion"
NOVEL_SEQ = "ROM03_RT_No_Occlusion"


@pytest.fixture(scope="session")
def three_subjects(tiny_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An InterHand2.6M root (synthetic) with captures 0, 1 and 2 of the test split."""
    from handnerf.synth.subjects import replicate_captures

    root = tmp_path_factory.mktemp("batch") / "three_subjects"
    shutil.copytree(tiny_capture, root)
    return replicate_captures(root, N_CAPTURES)


#: A plan's fit: configs/tiny.yaml, a few steps, a checkpoint every 3 steps.
PLAN_OVERRIDES = [
    *overrides_from_yaml(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"),
    "train.steps=5",
    "train.val_every=0",
    "train.log_every=1",
    "train.checkpoint_every=3",
]


def tiny_plan(root: Path, **changes: Any) -> dict[str, Any]:
    """A plan of every subject's training sequence at unit-test sizes."""
    plan: dict[str, Any] = {
        "interhand": str(root),
        "protocol": {"name": "handnerf-default", "crop_size": 32},
        "prepare": {"crop": "1.3:48", "filters": False},
        "overrides": PLAN_OVERRIDES,
        "eval": {"max_views": 1},
        "render": {"modes": ["orbit", "pose"], "frames": 2, "size": 24, "fps": 4},
        "resources": {stage: {"num_cpus": 1} for stage in ("prepare", "fit", "eval", "render")},
        "max_retries": 2,
        "entries": [{"every": {"split": "test", "sequences": "ROM04_*", "novel_pose": "ROM03_*"}}],
    }
    plan.update(changes)
    return plan


@pytest.fixture
def write_plan(tmp_path: Path) -> Callable[..., Path]:
    """``write_plan(root, name="plan.yaml", **changes)``: a tiny plan file in tmp_path."""
    import yaml

    def write(root: Path, name: str = "plan.yaml", **changes: Any) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(tiny_plan(root, **changes), sort_keys=False))
        return path

    return write
