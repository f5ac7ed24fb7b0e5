"""Session fixtures of the synth tests; ``tiny_capture`` is reusable by other test packages."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SEED = 7


@pytest.fixture(scope="session")
def tiny_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a ``tiny``-preset synthetic capture (procedural hand, seed 7), made once per session."""
    from handnerf.synth.presets import get_preset
    from handnerf.synth.writer import synthesize_capture

    root = tmp_path_factory.mktemp("synth") / "tiny_capture"
    synthesize_capture(root, get_preset("tiny"), seed=TINY_SEED, workers=1)
    return root
