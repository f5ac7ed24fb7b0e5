"""Placeholder for `handnerf hand` (being built)."""

from __future__ import annotations

import argparse

from handnerf.errors import HandnerfError

HELP = "(not built yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise HandnerfError("handnerf hand is not built yet")
