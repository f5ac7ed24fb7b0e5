"""The ``handnerf`` command line: one subcommand per job.

Each subcommand lives in ``handnerf.commands.<name>`` and exposes ``HELP`` (one line),
``configure(parser)`` and ``run(args) -> int``. Command modules keep heavy imports
(torch, trimesh) inside ``run`` so that ``handnerf --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from handnerf import __version__, interrupts
from handnerf.errors import HandnerfError

#: Subcommands in the order a user meets them.
COMMANDS: tuple[str, ...] = (
    "hand",
    "synth",
    "prepare",
    "fit",
    "render",
    "eval",
    "export",
    "view",
    "batch",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handnerf",
        description=(
            "Turn a multi-view capture of a hand (InterHand2.6M format) into a photorealistic, "
            "animatable avatar. Typical flow: synth (or a real InterHand2.6M root, optionally "
            "prepare-d into a cache) -> fit -> "
            "render / eval. Run 'handnerf COMMAND --help' for each command's options."
        ),
    )
    parser.add_argument("--version", action="version", version=f"handnerf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"handnerf.commands.{name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=(module.__doc__ or module.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None, keep_signal_handlers: bool = False) -> int:
    """Run one command; exit status 0 done, 2 a handnerf error, 130 interrupted.

    SIGINT and SIGTERM (see :mod:`handnerf.interrupts`) end any command with 130, and
    whatever it wrote is complete or absent. The caller's signal handlers are restored on
    return unless ``keep_signal_handlers`` (the ``handnerf`` program itself).
    """
    # First, before any slow import (command modules import torch lazily, in run()).
    previous = interrupts.install()
    command = "?"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        interrupts.reached("start", command)
        status = int(args._run(args) or 0)
        interrupts.reached("exit", status)
        return status
    except HandnerfError as exc:
        print(f"handnerf {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        name = f" by {exc.args[0]}" if isinstance(exc, interrupts.Interrupted) else ""
        print(f"handnerf {command}: interrupted{name}", file=sys.stderr)
        return 130
    finally:
        if not keep_signal_handlers:
            interrupts.restore(previous)


def entry() -> None:
    """The ``handnerf`` program: :func:`main`, then exit with its status."""
    status = main(keep_signal_handlers=True)
    # The job is over and its files are final: a signal from here to the end of the
    # interpreter changes nothing, so it must not turn a finished job into a failed one.
    for sig in interrupts.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise SystemExit(status)


if __name__ == "__main__":
    entry()
