"""The ``handnerf`` command line: one subcommand per job.

Each subcommand lives in ``handnerf.commands.<name>`` and exposes ``HELP`` (one line),
``configure(parser)`` and ``run(args) -> int``. Command modules keep heavy imports
(torch, trimesh) inside ``run`` so that ``handnerf --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from handnerf import __version__
from handnerf.errors import HandnerfError

#: Subcommands in the order a user meets them.
COMMANDS: tuple[str, ...] = ("hand", "synth", "prepare", "fit", "render", "eval")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except HandnerfError as exc:
        print(f"handnerf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"handnerf {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
