"""The fast path's compiled bookkeeping picks what the torch version picks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.model import march_kernel
from handnerf.model.marching import composite_round, live_samples, march_rays
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
    widths = torch.rand(5, 8)
    origins = torch.randn(5, 3)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3), dim=1)
    rays = (origins, dirs)
    rows, t, dt, points, stay = march_kernel.take_round(
        active, shell, mid, widths, cursor, skip_to, optical, 9.0, 3, *rays
    )
    assert rows.tolist() == [0, 0, 0, 1, 3, 4, 4, 4]
    cols = torch.tensor([0, 1, 3, 2, 4, 0, 1, 2])
    assert torch.equal(t, mid[rows, cols]) and torch.equal(dt, widths[rows, cols])
    assert stay.tolist() == [0]
    assert cursor[0] == 4 and cursor[3] == 8  # ray 3 looked at all its samples
    # Each sample's point, as torch computes it.
    assert torch.equal(points, origins[rows] + dirs[rows] * t[:, None])
    # The next round goes on from the cursor.
    rows, t, dt, points, stay = march_kernel.take_round(
        stay, shell, mid, widths, cursor, skip_to, optical, 9.0, 3, *rays
    )
    assert rows.tolist() == [0, 0] and stay.tolist() == []
    assert torch.equal(t, mid[0, 4:6]) and torch.equal(dt, widths[0, 4:6])
    assert torch.equal(points, origins[0] + dirs[0] * mid[0, 4:6, None])


def test_composite_round_equals_the_torch_version() -> None:
    generator = torch.Generator().manual_seed(3)
    n_rays = 50
    counts = torch.randint(0, 9, (n_rays,), generator=generator)
    rows = torch.repeat_interleave(torch.arange(n_rays), counts)  # sorted, some rays empty
    n = len(rows)
    # Thin and thick samples: weights from ~0 to ~1, many near the threshold's scale.
    sigma_dt = torch.rand(n, generator=generator) ** 4 * 3.0
    depths = torch.rand(n, generator=generator)
    before = torch.rand(n_rays, generator=generator, dtype=torch.float64) * 12.0
    state = (
        before,
        torch.rand(n_rays, generator=generator),
        torch.rand(n_rays, generator=generator),
    )
    results = {}
    for name, composite in (("compiled", march_kernel.composite_round), ("torch", composite_round)):
        ray_state = tuple(x.clone() for x in state)
        weights, seen = composite(rows, sigma_dt, depths, *ray_state, 1e-5)
        results[name] = (weights, seen, *ray_state)
    assert 0 < len(results["torch"][1]) < n
    for got, want in zip(results["compiled"], results["torch"], strict=True):
        assert got.dtype == want.dtype
        if got.dtype == torch.int64:
            assert torch.equal(got, want)  # the same samples get a colour
        else:  # exp may round differently by an ulp
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


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


def test_live_samples_equal_the_torch_versions(scene, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    run, frames, rays = scene
    sampler = run.avatar.sampler
    args = (run.avatar, sampler, frames, rays.origins, rays.directions, rays.frame_ids)
    compiled = live_samples(*args)
    monkeypatch.setenv(march_kernel.ENV_SWITCH, "0")
    reference = live_samples(*args)  # the sampler's bins, then the torch shell test
    live, shell = reference[0], reference[1]
    # Some rays have shell samples, some do not; the live ones have samples outside it too.
    assert 0 < len(live) < len(rays.origins)
    assert int(shell.sum()) > 100 and int((~shell).sum()) > 100
    for name, got, want in zip(
        ("live", "shell", "mid", "widths"), compiled, reference, strict=True
    ):
        assert got.dtype == want.dtype, name
        assert torch.equal(got, want), name


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
