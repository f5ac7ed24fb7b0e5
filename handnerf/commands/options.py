"""Options that several commands share, with one wording each: the run folder a command
reads (eval, export, render, view), how it renders (eval, render, view), the progress
bar, the captured hand (prepare, synth) and the procedural hand's resolution (hand,
synth)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_run_folder(parser: argparse.ArgumentParser) -> None:
    """``--run RUN`` (required): a run folder written by ``handnerf fit``."""
    parser.add_argument(
        "--run", type=Path, required=True, help="run folder written by 'handnerf fit'"
    )


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bar (e.g. in logs)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_rendering(
    parser: argparse.ArgumentParser, chunk: int | None = 16384, progress: bool = True
) -> None:
    """``--chunk`` (rays per rendering chunk, default ``chunk``; None: the renderer picks
    one for the device), ``--device`` and, with ``progress``, ``--no-progress``."""
    default = "automatic" if chunk is None else str(chunk)
    parser.add_argument(
        "--chunk",
        type=int,
        default=chunk,
        help=f"rays per rendering chunk (default: {default}); lower it if memory runs out",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    if progress:
        add_no_progress(parser)


def add_hand(parser: argparse.ArgumentParser, help: str) -> None:
    """``--hand right|left|both`` (default None: the command's own default, said in
    ``help``)."""
    parser.add_argument("--hand", choices=("right", "left", "both"), default=None, help=help)


def add_procedural_resolution(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    """``flag mano|dense`` (default mano): the resolution of the procedural hand, as
    :func:`handnerf.hand.procedural.write_procedural_mano_dir` takes it."""
    parser.add_argument(flag, choices=("mano", "dense"), default="mano", help=help)
