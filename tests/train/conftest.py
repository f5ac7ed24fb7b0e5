"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def noisy_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny capture (tests/conftest.py's seed, so the same poses and images) with
    4 deg / 4 mm MANO fit errors in its annotations."""
    from handnerf.synth.presets import get_preset
    from handnerf.synth.writer import synthesize_capture

    root = tmp_path_factory.mktemp("synth") / "noisy"
    preset = get_preset("tiny").with_overrides(mano_noise_deg=4.0, mano_noise_mm=4.0)
    synthesize_capture(root, preset, seed=7, workers=1)
    return root
