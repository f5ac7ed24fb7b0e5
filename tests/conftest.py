"""Session-wide fixtures shared by every test package.

The procedural hand and a ``tiny`` synthetic capture are generated once per session (the
capture takes tens of seconds on 2 cores) into a private cache, never into ``~/.cache``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# MKL picks its thread count per call under load (MKL_DYNAMIC defaults to true), and a GEMM's
# rounding depends on it: the same computation twice in one process could then differ by
# 1e-7 and flip a near-tie in a closest-point pick. Fixed before torch loads MKL.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

import pytest
from hypothesis import settings

from handnerf.config import overrides_from_yaml

# Property tests draw the same examples on every run and machine (CI included): a red run
# must be reproducible, not a roll of the dice. HANDNERF_FUZZ_EXPLORE=1 draws fresh random
# examples (and keeps hypothesis' example database) to look for new failures.
settings.register_profile("reproducible", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(
    "explore" if os.environ.get("HANDNERF_FUZZ_EXPLORE") == "1" else "reproducible"
)

#: configs/tiny.yaml as key=value overrides: the unit-test size of a fit.
TINY_FIT_OVERRIDES = overrides_from_yaml(
    Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
)

TINY_SEED = 7


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``$HANDNERF_CACHE`` at a per-session folder (tests/hand narrows it per test)."""
    cache = tmp_path_factory.mktemp("handnerf_cache")
    old = os.environ.get("HANDNERF_CACHE")
    os.environ["HANDNERF_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("HANDNERF_CACHE", None)
    else:
        os.environ["HANDNERF_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a ``tiny``-preset synthetic capture (procedural hand, seed 7), made once."""
    from handnerf.synth.presets import get_preset
    from handnerf.synth.writer import synthesize_capture

    root = tmp_path_factory.mktemp("synth") / "tiny_capture"
    synthesize_capture(root, get_preset("tiny"), seed=TINY_SEED, workers=1)
    return root


@pytest.fixture(scope="session")
def noisy_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny capture (same seed, so the same poses and images) with 4 deg / 4 mm MANO
    fit errors in its annotations and the exact fits in ``exact_mano.json``."""
    from handnerf.synth.presets import get_preset
    from handnerf.synth.writer import synthesize_capture

    root = tmp_path_factory.mktemp("synth") / "noisy"
    preset = get_preset("tiny").with_overrides(mano_noise_deg=4.0, mano_noise_mm=4.0)
    synthesize_capture(root, preset, seed=TINY_SEED, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_two_hand_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a two-hand capture (``tiny`` preset, 2 frames per interaction), made once."""
    from handnerf.synth.presets import get_preset
    from handnerf.synth.writer import synthesize_capture

    root = tmp_path_factory.mktemp("synth") / "tiny_two_hands"
    preset = get_preset("tiny").with_overrides(train_frames=2)
    synthesize_capture(root, preset, seed=TINY_SEED, workers=1, both_hands=True)
    return root


#: A fit small enough for unit tests: tiny grid, small crops, few rays.
SMALL_FIT = [
    *TINY_FIT_OVERRIDES,
    # Pinned: the tests compare against the torch grid's numbers on any machine (a CUDA
    # test that wants tiny-cuda-nn asks for it after these).
    "model.field.encoding.backend=torch",
    "train.val_every=0",
    "train.val_views=1",
    "train.log_every=2",
    "train.checkpoint_every=3",
]


@pytest.fixture(scope="session")
def small_fit() -> list[str]:
    """``key=value`` overrides of a unit-test-sized fit."""
    return list(SMALL_FIT)


@pytest.fixture(scope="session")
def tiny_run(tiny_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder fitted for a few steps on the tiny capture (for render/eval tests)."""
    from handnerf.train.fit_job import run_fit

    run = tmp_path_factory.mktemp("runs") / "tiny_run"
    run_fit(tiny_capture, run, overrides=[*SMALL_FIT, "train.steps=6"], progress=False)
    return run


@pytest.fixture
def nerfacc_standin() -> Iterator[object]:
    """nerfacc's compiled kernels stood in for by pure PyTorch on the CPU (see
    tests/nerfacc_standin.py): the packed/nerfacc path runs here; yields the stand-in
    (its ``calls`` count the kernel calls made)."""
    from tests.nerfacc_standin import install

    with install() as standin:
        yield standin


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread for the test: fits of many small steps run faster so on 2 cores
    (measured: 20 s on one thread, over 200 s with torch's default threads on a busy
    2-core machine). Modules use it with ``pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
