"""The fast path's compiled bookkeeping picks what the torch version picks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.model import march_kernel
from handnerf.model.marching import march_rays, shell_mask
from handnerf.model.rays import RayBundle
from handnerf.model.renderer import CameraTensors, camera_rays
from handnerf.render.jobs import framing_camera, hand_sphere
from handnerf.runs.loader import load_run
from handnerf.train.fit_data import sequence_mano

pytestmark = pytest.mark.skipif(not march_kernel.available(), reason="numba is not installed")


def test_take_round_picks_each_rays_next_samples() -> None:
    shell = torch.tensor(
        [
            [1, 1, 0, 1, 1, 1, 0, 0],  # takes 0, 1, 3; then 4, 5 remain: stays
            [0, 0, 1, 0, 0, 0, 0, 0],  # one sample: takes it and is done
            [1, 1, 1, 1, 1, 1, 1, 1],  # opaque already: takes nothing
            [1, 1, 1, 1, 1, 0, 0, 0],  # skip depth 0.35: takes 4 (depth 0.4) and is done
            [1, 1, 1, 0, 0, 0, 0, 0],  # quota exactly: takes 0-2, nothing left: done
        ],
        dtype=torch.bool,
    )
    mid = torch.arange(8, dtype=torch.float32).mul(0.1).expand(5, 8).contiguous()
    cursor = torch.zeros(5, dtype=torch.int64)
    skip_to = torch.tensor([-math.inf, -math.inf, -math.inf, 0.35, -math.inf])
    optical = torch.tensor([0.0, 0.0, 20.0, 0.0, 0.0], dtype=torch.float64)
    active = torch.arange(5)
    rows, cols, stay = march_kernel.take_round(active, shell, mid, cursor, skip_to, optical, 9.0, 3)
    assert rows.tolist() == [0, 0, 0, 1, 3, 4, 4, 4]
    assert cols.tolist() == [0, 1, 3, 2, 4, 0, 1, 2]
    assert stay.tolist() == [0]
    assert cursor[0] == 4 and cursor[3] == 8  # ray 3 looked at all its samples
    # The next round goes on from the cursor.
    rows, cols, stay = march_kernel.take_round(stay, shell, mid, cursor, skip_to, optical, 9.0, 3)
    assert rows.tolist() == [0, 0] and cols.tolist() == [4, 5] and stay.tolist() == []


@pytest.fixture(scope="module")
def scene(tiny_run: Path):  # type: ignore[no-untyped-def]
    """The tiny fit made opaque (as a trained avatar is), a pose and a camera's rays."""
    run = load_run(tiny_run, device="cpu")
    run.avatar.field.cfg.density_scale = 3e4
    mano = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 1).index(0)
    frames = run.avatar.pose_frames(mano)
    center, radius = hand_sphere(frames.vertices[0])
    cam = framing_camera(center + np.array([0.05, -0.3, 0.3]), center, radius, size=32)
    origins, dirs = camera_rays(CameraTensors.of(cam), run.device)
    ids = torch.zeros(len(origins), dtype=torch.long)
    rays = RayBundle(origins=origins, directions=dirs, frame_ids=ids, camera_ids=ids)
    return run, frames, rays


def test_shell_mask_equals_the_torch_version(scene, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    run, frames, rays = scene
    samples = run.avatar.sampler.sample(
        rays.origins, rays.directions, rays.frame_ids, frames.aabbs, None, stratified=False
    )
    mid = 0.5 * (samples.t_starts + samples.t_ends)
    args = (run.avatar, frames, rays.origins, rays.directions, rays.frame_ids, mid, samples.mask)
    compiled = shell_mask(*args)
    monkeypatch.setenv(march_kernel.ENV_SWITCH, "0")
    reference = shell_mask(*args)
    assert int(reference.sum()) > 100 and int((~reference & samples.mask).sum()) > 100
    assert torch.equal(compiled, reference)


@pytest.mark.parametrize("min_transmittance", [1e-4, 0.0])
def test_march_renders_the_same_with_and_without_the_kernels(
    scene,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    min_transmittance: float,
) -> None:
    run, frames, rays = scene
    background = torch.zeros(3)
    compiled = march_rays(run.avatar, frames, rays, background, min_transmittance)
    monkeypatch.setenv(march_kernel.ENV_SWITCH, "0")
    reference = march_rays(run.avatar, frames, rays, background, min_transmittance)
    assert float(reference["opacity"].max()) > 0.9  # the hand is there, opaque
    for key in ("n_deformed", "n_evaluated", "n_colored"):
        assert int(compiled[key]) == int(reference[key]), key
    for key in ("rgb", "opacity", "depth"):
        torch.testing.assert_close(compiled[key], reference[key], atol=1e-6, rtol=0)
