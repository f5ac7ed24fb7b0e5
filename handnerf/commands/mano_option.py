"""The ``--mano-dir`` option, one wording for the commands that pose a capture's MANO."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_mano_dir(parser: argparse.ArgumentParser) -> None:
    """``--mano-dir DIR`` (default None: the procedural hand, synthetic captures only)."""
    parser.add_argument(
        "--mano-dir",
        type=Path,
        default=None,
        help=(
            "your MANO folder (MANO_RIGHT.pkl, MANO_LEFT.pkl); required for real captures, "
            "synthetic ones (with synth.json) default to the procedural hand"
        ),
    )
