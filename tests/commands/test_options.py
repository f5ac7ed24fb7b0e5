"""The options several commands share read the same everywhere (one wording, one default)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from handnerf.cli import main
from handnerf.commands import eval as eval_command
from handnerf.commands import export, hand, prepare, render, synth, view


def _parser(command: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    command.configure(parser)  # type: ignore[attr-defined]
    return parser


@pytest.mark.parametrize("command", [eval_command, export, render, view])
def test_commands_reading_a_run_require_the_run_folder(command: object) -> None:
    parser = _parser(command)
    extra = ["--out", "o"] if command in (eval_command, render) else []
    assert parser.parse_args(["--run", "runs/a", *extra]).run == Path("runs/a")
    with pytest.raises(SystemExit):
        parser.parse_args(extra)


@pytest.mark.parametrize(
    ("command", "chunk", "has_progress"),
    [(eval_command, None, True), (render, None, True), (view, None, False)],
)
def test_rendering_commands_share_chunk_device_and_progress(
    command: object, chunk: int | None, has_progress: bool
) -> None:
    argv = ["--run", "r"] + (["--out", "o"] if has_progress else [])
    args = _parser(command).parse_args(argv)
    assert (args.chunk, args.device) == (chunk, "auto")
    assert hasattr(args, "no_progress") is has_progress
    args = _parser(command).parse_args([*argv, "--chunk", "512", "--device", "cpu"])
    assert (args.chunk, args.device) == (512, "cpu")


def test_a_missing_run_folder_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no_run"
    status = main(["export", "--run", str(missing)])
    err = capsys.readouterr().err
    assert status == 2 and str(missing) in err and "Traceback" not in err


@pytest.mark.parametrize("command", [prepare, synth])
def test_commands_choosing_the_captured_hand_share_its_choices(command: object) -> None:
    parser = _parser(command)
    base = ["--out", "o"] + (["--interhand", "i"] if command is prepare else [])
    assert parser.parse_args(base).hand is None  # the command's own default applies
    for side in ("right", "left", "both"):
        assert parser.parse_args([*base, "--hand", side]).hand == side
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        parser.parse_args([*base, "--hand", "middle"])


@pytest.mark.parametrize(
    ("command", "flag"), [(hand, "--resolution"), (synth, "--procedural-hand")]
)
def test_procedural_hand_resolution_reads_the_same_in_hand_and_synth(
    command: object, flag: str
) -> None:
    parser = _parser(command)
    base = ["--out", "o"]
    dest = flag.lstrip("-").replace("-", "_")
    assert getattr(parser.parse_args(base), dest) == "mano"
    assert getattr(parser.parse_args([*base, flag, "dense"]), dest) == "dense"
    with pytest.raises((SystemExit, argparse.ArgumentError)):
        parser.parse_args([*base, flag, "coarse"])
