"""The fast inference path: front-to-back marching renders what the reference path renders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.marching import MIN_TRANSMITTANCE, march_rays
from handnerf.model.rays import RayBundle
from handnerf.model.renderer import CameraTensors, camera_rays, render_camera
from handnerf.render.jobs import framing_camera, hand_sphere
from handnerf.runs.loader import TrainedRun, load_run
from handnerf.train.fit_data import sequence_mano

SIZE = 24


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def scene(tiny_run: Path, density_scale: float | None = None):  # type: ignore[no-untyped-def]
    """The tiny fit, its first training pose and a camera looking at the hand. With
    ``density_scale`` the field is made that much denser: the 6-step fit is nearly
    transparent, a trained avatar is opaque (where early termination matters)."""
    run: TrainedRun = load_run(tiny_run, device="cpu")
    if density_scale is not None:
        run.avatar.field.cfg.density_scale = density_scale
    mano = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 1).index(0)
    frames = run.avatar.pose_frames(mano)
    center, radius = hand_sphere(frames.vertices[0])
    cam = framing_camera(center + np.array([0.05, -0.3, 0.3]), center, radius, size=SIZE)
    return run, frames, cam


@pytest.mark.parametrize("density_scale", [None, 3e4])
def test_fast_path_renders_the_reference_image(tiny_run: Path, density_scale: float | None) -> None:
    run, frames, cam = scene(tiny_run, density_scale)
    reference = render_camera(run.avatar, frames, cam, 0, 0, marching=False)
    fast = render_camera(run.avatar, frames, cam, 0, 0)
    assert float(reference.amax(-1).gt(0.05).float().mean()) > 0.02, "the hand is visible"
    # What early termination and colour skipping leave out changes a pixel by at most
    # about 1e-4 (the stop transmittance, plus 1e-5 per uncoloured sample).
    assert float((fast - reference).abs().max()) < 1e-3
    assert psnr(fast, reference) > 60.0

    # Without the cut and the colour threshold every sample the reference takes is
    # visited (distance skipping is exact): the same image up to float rounding.
    exact = render_camera(run.avatar, frames, cam, 0, 0, min_transmittance=0.0)
    origins, dirs = camera_rays(CameraTensors.of(cam), run.device)
    ids = torch.zeros(len(origins), dtype=torch.long)
    rays = RayBundle(origins=origins, directions=dirs, frame_ids=ids, camera_ids=ids)
    run.avatar.cfg.early_stop_eps = 0.0  # render_rays on every sample, no early stop
    with torch.no_grad():
        ref = run.avatar.render_rays(frames, rays, torch.zeros(3))
        marched = march_rays(run.avatar, frames, rays, torch.zeros(3), 0.0, 0.0)
    torch.testing.assert_close(marched["rgb"], ref["rgb"], atol=2e-6, rtol=0)
    torch.testing.assert_close(marched["opacity"], ref["opacity"], atol=2e-6, rtol=0)
    assert int(marched["n_evaluated"]) == int(ref["n_evaluated"])
    assert float((exact - reference).abs().max()) < 1e-3


def test_fast_path_does_less_work_where_the_hand_is_opaque(tiny_run: Path) -> None:
    run, frames, cam = scene(tiny_run, density_scale=3e4)
    origins, dirs = camera_rays(CameraTensors.of(cam), run.device)
    ids = torch.zeros(len(origins), dtype=torch.long)
    rays = RayBundle(origins=origins, directions=dirs, frame_ids=ids, camera_ids=None)
    run.avatar.cfg.early_stop_eps = 0.0  # render_rays on every sample, no early stop
    with torch.no_grad():
        ref = run.avatar.render_rays(frames, rays, torch.zeros(3))
        fast = march_rays(run.avatar, frames, rays, torch.zeros(3))
        every = march_rays(run.avatar, frames, rays, torch.zeros(3), 0.0, 0.0)
    assert float(ref["opacity"].max()) > 1 - MIN_TRANSMITTANCE, "some rays are opaque"
    # Early termination: fewer densities than the reference; colour only where seen.
    assert int(fast["n_evaluated"]) < int(ref["n_evaluated"]) == int(every["n_evaluated"])
    assert int(fast["n_colored"]) < int(fast["n_evaluated"])
    # Distance skipping: fewer samples deformed than the shell holds, even visiting all.
    assert int(every["n_deformed"]) >= int(every["n_evaluated"])
    assert int(fast["n_deformed"]) < int(every["n_deformed"])
    torch.testing.assert_close(fast["rgb"], ref["rgb"], atol=1e-3, rtol=0)


def test_fast_path_refuses_bad_thresholds(tiny_run: Path) -> None:
    run, frames, cam = scene(tiny_run)
    with pytest.raises(ParameterError, match="min_transmittance must lie in"):
        render_camera(run.avatar, frames, cam, 0, None, min_transmittance=1.0)
    rays = RayBundle(
        origins=torch.zeros(2, 3),
        directions=torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3),
        frame_ids=torch.zeros(2, dtype=torch.long),
    )
    with pytest.raises(ParameterError, match="round_samples >= 1"):
        march_rays(run.avatar, frames, rays, torch.zeros(3), round_samples=0)


def test_fewer_samples_per_ray_give_a_coarser_cheaper_preview(tiny_run: Path) -> None:
    run, frames, cam = scene(tiny_run, density_scale=3e4)
    n = run.avatar.sampler.n_samples
    full = render_camera(run.avatar, frames, cam, 0, None)
    assert torch.equal(render_camera(run.avatar, frames, cam, 0, None, n_samples=n), full)
    coarse = render_camera(run.avatar, frames, cam, 0, None, n_samples=n // 2)
    assert not torch.equal(coarse, full)
    assert psnr(coarse, full) > 20.0, "the same hand, sampled more coarsely"
    origins, dirs = camera_rays(CameraTensors.of(cam), run.device)
    rays = RayBundle(origins, dirs, torch.zeros(len(origins), dtype=torch.long))
    with torch.no_grad():
        fine = march_rays(run.avatar, frames, rays, torch.zeros(3))
        half = march_rays(run.avatar, frames, rays, torch.zeros(3), n_samples=n // 2)
    assert int(half["n_deformed"]) < int(fine["n_deformed"])
    with pytest.raises(ConfigError, match="applies to the fast path only"):
        render_camera(run.avatar, frames, cam, 0, None, marching=False, n_samples=8)


def test_inference_blends_each_vertexs_light_mix_as_training_blends_the_directions(
    tiny_run: Path,
) -> None:
    """The lights are a linear mix of the visibility directions, so inference mixes each
    vertex's once and blends the lights: the colour training computes, and the mix is
    recomputed when the lights change."""
    run, frames, _ = scene(tiny_run)
    avatar = run.avatar
    assert avatar.field.light_logits is not None
    assert frames.deformation.vertex_attributes is not None
    gen = torch.Generator().manual_seed(0)
    verts = frames.vertices[0]
    points = verts[torch.randint(0, len(verts), (300,), generator=gen)]
    points = points + 0.002 * torch.randn(300, 3, generator=gen)
    ids = torch.zeros(300, dtype=torch.long)
    dirs = torch.nn.functional.normalize(torch.randn(300, 3, generator=gen), dim=-1)

    def colour() -> torch.Tensor:
        result = frames.deformation.deform(points, ids)
        _, geo = avatar.sample_density(frames, points, result)
        return avatar.sample_color(frames, result, geo, dirs)

    with torch.no_grad():
        avatar.field.light_logits.copy_(torch.randn(avatar.field.light_logits.shape, generator=gen))
        mixed = colour()
    with torch.enable_grad():
        directions = colour()
    assert directions.requires_grad  # the training path: per-sample directions, mixed
    torch.testing.assert_close(mixed, directions.detach(), atol=1e-5, rtol=0)
    with torch.no_grad():
        avatar.field.light_logits.mul_(-3.0)
        changed = colour()
    with torch.enable_grad():
        torch.testing.assert_close(changed, colour().detach(), atol=1e-5, rtol=0)
    assert float((changed - mixed).abs().max()) > 1e-3  # the new lights took effect
