"""Plan files: expansion from the root's annotations, and bad plans refused before anything runs.

Every refusal goes through ``handnerf batch`` (exit status 2, the message on stderr) and
must name the plan entry or field at fault, start no Ray and leave no output folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handnerf.batch.plan import load_plan
from handnerf.batch.runner import check_entry_folders
from handnerf.batch.stages import EntryPaths
from handnerf.cli import main
from handnerf.errors import ConfigError

TRAIN, NOVEL = "ROM04_RT_Occlusion", "ROM03_RT_No_Occlusion"


def explicit(name: str, capture: int = 0, **more: Any) -> dict[str, Any]:
    return {"name": name, "capture": capture, "sequences": [TRAIN, NOVEL], **more}


def test_check_lists_the_expanded_entries_and_runs_nothing(
    three_subjects: Path,
    write_plan: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    assert main(["batch", str(write_plan(three_subjects)), "--out", str(out), "--check"]) == 0
    printed = capsys.readouterr().out
    for capture in range(3):
        assert f"test-c{capture}-{TRAIN}-right: test Capture{capture} right" in printed
    assert "3 entries" in printed and not out.exists()


def test_every_expands_to_each_subject_and_matching_sequence(
    three_subjects: Path, write_plan: Callable[..., Path], tmp_path: Path
) -> None:
    entries = [
        {"every": {"split": "test", "sequences": "ROM0*", "novel_pose": "ROM03_*"}},
        explicit("single", capture=1, sequences=[NOVEL]),
    ]
    plan = load_plan(write_plan(three_subjects, entries=entries), out=tmp_path / "out")
    found = [(e.capture, e.train_seq, e.novel_pose_seq) for e in plan.entries]
    # ROM03_* is the novel-pose pattern, so only ROM04 is trained on, once per capture.
    assert found == [(0, TRAIN, NOVEL), (1, TRAIN, NOVEL), (2, TRAIN, NOVEL), (1, NOVEL, None)]
    assert [e.name for e in plan.entries][:3] == [f"test-c{c}-{TRAIN}-right" for c in range(3)]
    overrides = plan.entries[3].fit_overrides(None)
    assert "data.novel_pose_seq=null" in overrides and "data.capture=1" in overrides
    assert "train.steps=5" in overrides  # the plan's own overrides come first


def refused(plan: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the plan; it must exit 2 before writing anything. Returns stderr."""
    import ray

    assert main(["batch", str(plan), "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()
    assert not ray.is_initialized()
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (
            [explicit("good"), explicit("typo", sequences=[TRAIN, "ROM03_RT_Nope"])],
            ["entries[1] (typo)", "ROM03_RT_Nope", NOVEL],
        ),
        (
            [explicit("good"), explicit("elsewhere", interhand="/no/such/interhand")],
            ["entries[1] (elsewhere)", "/no/such/interhand", "root not found"],
        ),
        ([explicit("far", capture=9)], ["entries[0] (far)", "capture 9", "captures: 0, 1, 2"]),
        (
            [{"every": {"sequences": "XYZ*"}}],
            ["entries[0] (every)", "'XYZ*'", TRAIN],
        ),
        ([explicit("a"), explicit("a", capture=1)], ["entries[1] (a)", "name 'a'"]),
        (
            [explicit("bad-key", overrides=["train.stepz=3"])],
            ["entries[0] (bad-key)", "stepz"],
        ),
        (
            [explicit("own-data", overrides=["data.capture=2"])],
            ["entries[0] (own-data)", "data.capture is set by the entry"],
        ),
        ([explicit("hand", hand="both")], ["entries[0] (hand)", "hand"]),
    ],
    ids=[
        "unknown-sequence",
        "missing-entry-root",
        "unknown-capture",
        "pattern-matches-nothing",
        "duplicate-name",
        "bad-config-key",
        "override-of-selection",
        "bad-hand",
    ],
)
def test_bad_entry_is_refused_naming_it(
    three_subjects: Path,
    write_plan: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    entries: list[dict[str, Any]],
    expected: list[str],
) -> None:
    err = refused(write_plan(three_subjects, entries=entries), tmp_path / "out", capsys)
    for text in expected:
        assert text in err


def test_missing_root_is_refused_naming_the_entry(
    write_plan: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = write_plan(tmp_path / "no_root", entries=[explicit("first")])
    err = refused(plan, tmp_path / "out", capsys)
    assert "entries[0] (first): interhand" in err and str(tmp_path / "no_root") in err


def test_root_without_annotations_is_refused_naming_the_entry(
    write_plan: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty_root").mkdir()
    plan = write_plan(tmp_path / "empty_root", entries=[explicit("first")])
    err = refused(plan, tmp_path / "out", capsys)
    assert "entries[0] (first)" in err and "InterHand2.6M_test_data.json" in err


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"protocol": "nope"}, "protocol: unknown evaluation protocol 'nope'"),
        ({"prepare": {"split": "val"}}, "prepare.split"),
        ({"prepare": {"crop": "big"}}, "prepare: --crop must look like SCALE:SIZE"),
        ({"render": {"modes": ["spin"]}}, "render.modes"),
        ({"resources": {"fit": {"num_cpus": 0}}}, "resources.fit"),
        ({"max_retries": -1}, "max_retries"),
        ({"entries": []}, "entries: expected a non-empty list"),
        ({"config": "missing.yaml"}, "config: file not found"),
        ({"colour": "red"}, "unknown key(s) colour"),
    ],
)
def test_bad_plan_field_is_refused_naming_it(
    three_subjects: Path,
    write_plan: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    expected: str,
) -> None:
    plan = write_plan(three_subjects, **changes)
    err = refused(plan, tmp_path / "out", capsys)
    assert str(plan) in err and expected in err


def test_an_entry_folder_of_another_definition_is_refused(
    three_subjects: Path, write_plan: Callable[..., Path], tmp_path: Path
) -> None:
    """Changing an entry (here its overrides) under the same name would mix old finished
    stages with new ones: the plan is refused until the folder or the name changes."""
    out = tmp_path / "out"
    plan = load_plan(write_plan(three_subjects, entries=[explicit("first")]), out=out)
    paths = EntryPaths.of(plan, plan.entries[0])
    paths.root.mkdir(parents=True)
    definition = plan.entry_definition(plan.entries[0])
    paths.definition.write_text(json.dumps(definition))
    check_entry_folders(plan)  # the same definition: accepted
    changed = load_plan(
        write_plan(three_subjects, entries=[explicit("first", overrides=["train.seed=1"])]),
        out=out,
    )
    with pytest.raises(ConfigError, match=r"entries\[0\] \(first\).*another definition"):
        check_entry_folders(changed)


def test_a_stage_larger_than_the_local_ray_is_refused(
    three_subjects: Path,
    write_plan: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import ray

    plan = write_plan(three_subjects, resources={"fit": {"num_cpus": 3}})
    out = tmp_path / "out"
    assert main(["batch", str(plan), "--out", str(out), "--num-cpus", "2", "--no-progress"]) == 2
    assert not out.exists() and not ray.is_initialized()
    assert "resources.fit.num_cpus=3 but the local Ray has 2 CPUs" in capsys.readouterr().err


def test_a_real_root_without_mano_dir_is_refused_naming_the_entry(
    three_subjects: Path,
    write_plan: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The procedural hand stands in for MANO only in synthetic captures."""
    import shutil

    real = tmp_path / "real"
    shutil.copytree(three_subjects / "annotations", real / "annotations")  # no synth.json
    err = refused(write_plan(real, entries=[explicit("first")]), tmp_path / "out", capsys)
    assert "entries[0] (first): no mano_dir in the plan" in err and "real capture" in err
