"""Placeholder for `handnerf fit` (being built)."""

from __future__ import annotations

import argparse

from handnerf.errors import HandnerfError

HELP = "(not built yet)"


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise HandnerfError("handnerf fit is not built yet")
