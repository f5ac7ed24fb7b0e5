"""Training ray batches: pixel-centre and jittered rays, and the mesh silhouette masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handnerf.config import load_config
from handnerf.errors import ParameterError
from handnerf.model.rays import pixel_rays
from handnerf.train.config import FitConfig
from handnerf.train.fit_data import load_fit_data
from handnerf.train.rays import RaySampler, ViewStack
from handnerf.train.silhouette import MeshSilhouette
from handnerf.train.trainer import Trainer


def ramp_views() -> ViewStack:
    """Two 6x8 views whose red channel is the pixel's x and green its y (centres)."""
    h, w = 6, 8
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    image = torch.stack([xs / 10, ys / 10, torch.zeros_like(xs)], -1)
    K = torch.tensor([[10.0, 0, 4], [0, 10.0, 3], [0, 0, 1]])
    return ViewStack(
        images=torch.stack([image, image]),
        masks=torch.ones(2, h, w, dtype=torch.bool),
        K=K.expand(2, 3, 3).clone(),
        R=torch.eye(3).expand(2, 3, 3).clone(),
        t=torch.tensor([[0.0, 0, 0], [0.1, 0, 0]]),
        frame_ids=torch.tensor([0, 1]),
        camera_ids=torch.tensor([0, 1]),
    )


def test_jittered_rays_sample_their_pixel_and_interpolate_its_colour() -> None:
    views = ramp_views()
    sampler = RaySampler(views, fg_fraction=0.5, seed=3, jitter=True)
    flat = torch.randint(0, 2 * 6 * 8, (500,), generator=torch.Generator().manual_seed(1))
    batch = sampler.gather(flat, jitter=True)
    # Project each ray back into its camera: it lands inside its own pixel, not on its centre.
    view = flat // 48
    u, v = (flat % 48) % 8, (flat % 48) // 8
    cam = batch.rays.origins + batch.rays.directions  # a point along the ray, world
    x_cam = torch.einsum("nij,nj->ni", views.R[view], cam) + views.t[view]
    pix = torch.einsum("nij,nj->ni", views.K[view], x_cam)
    px, py = pix[:, 0] / pix[:, 2], pix[:, 1] / pix[:, 2]
    fx, fy = px - u, py - v
    assert bool(((fx >= 0) & (fx <= 1) & (fy >= 0) & (fy <= 1)).all())
    assert float(fx.std()) > 0.2 and float(fy.std()) > 0.2
    # The ramp interpolates linearly between centres (clamped at the border).
    expected_r = (px - 0.5).clamp(0, 7) / 10
    expected_g = (py - 0.5).clamp(0, 5) / 10
    torch.testing.assert_close(batch.rgb[:, 0], expected_r, atol=1e-4, rtol=0)
    torch.testing.assert_close(batch.rgb[:, 1], expected_g, atol=1e-4, rtol=0)
    # Without jitter: the pixel centres and the stored colours.
    centre = sampler.gather(flat)
    origins, dirs = pixel_rays(views.K[view], views.R[view], views.t[view], u, v)
    torch.testing.assert_close(centre.rays.origins, origins)
    torch.testing.assert_close(centre.rays.directions, dirs)
    torch.testing.assert_close(centre.rgb, views.images[view, v, u])


def test_sample_draws_jittered_rays_only_when_asked() -> None:
    views = ramp_views()
    plain = RaySampler(views, seed=0).sample(64)
    centres = plain.rgb[:, :2] * 10
    assert torch.allclose(centres, centres.round(), atol=1e-5)
    jittered = RaySampler(views, seed=0, jitter=True).sample(64)
    off_centre = (jittered.rgb[:, :2] * 10 - (jittered.rgb[:, :2] * 10).round()).abs()
    assert float(off_centre.max()) > 0.1


@pytest.fixture(scope="module")
def trainer_with_jitter(tiny_capture: Path, small_fit: list[str], tmp_path_factory):
    cfg = load_config(FitConfig, None, [*small_fit, "train.jitter_rays=true"])
    data = load_fit_data(tiny_capture, cfg.data, progress=False)
    return Trainer(cfg, data, tmp_path_factory.mktemp("jitter")), data


def test_mesh_silhouette_agrees_with_the_mano_masks(trainer_with_jitter) -> None:
    trainer, data = trainer_with_jitter
    silhouette = trainer.rays.silhouette
    assert isinstance(silhouette, MeshSilhouette)
    views = data.train_views
    hw = views.height * views.width
    flat = torch.arange(min(len(views), 6) * hw)
    centre = trainer.rays.gather(flat)
    rays = centre.rays
    hit = silhouette(rays.origins, rays.directions, rays.frame_ids)
    # The masks are the mesh rasterised with coverage; pixel-centre hits differ only on
    # the silhouette's edge pixels.
    agree = float((hit == centre.mask).float().mean())
    assert agree > 0.97, agree
    assert int(hit.sum()) > 0.5 * int(centre.mask.sum())
    # Jittered batches take their mask from the hit test of the jittered ray itself.
    batch = trainer.rays.sample(512)
    rays = batch.rays
    assert torch.equal(batch.mask, silhouette(rays.origins, rays.directions, rays.frame_ids))
    stats = trainer.training_step()
    assert torch.isfinite(torch.tensor(stats["loss"]))


def test_mesh_silhouette_rejects_bad_input() -> None:
    vertices = torch.tensor([[[0.0, 0, 1], [1, 0, 1], [0, 1, 1]]])
    faces = torch.tensor([[0, 1, 2]])
    silhouette = MeshSilhouette(vertices, faces)
    origins = torch.zeros(2, 3)
    dirs = torch.tensor([[0.1, 0.1, 1.0], [-0.5, -0.5, 1.0]])
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    assert silhouette(origins, dirs, torch.zeros(2, dtype=torch.long)).tolist() == [True, False]
    with pytest.raises(ParameterError, match="frame_ids"):
        silhouette(origins, dirs, torch.ones(2, dtype=torch.long))
    with pytest.raises(ParameterError, match="vertices"):
        MeshSilhouette(vertices[0], faces)
    with pytest.raises(ParameterError, match="faces"):
        MeshSilhouette(vertices, faces[:, :2])


def test_rays_are_never_drawn_from_a_crops_padding() -> None:
    views = ramp_views()
    views.valid = torch.ones(2, 6, 8, dtype=torch.bool)
    views.valid[0, :, 5:] = False  # view 0 reaches past its image's right border
    views.masks[:] = False
    views.masks[0, 2:4, 3:7] = True  # a hand cut by that border
    batch = RaySampler(views, fg_fraction=0.5, dilate=1, seed=0).sample(4000)
    u = (batch.rgb[:, 0] * 10).round().long()  # the ramp: red is the pixel's x
    in_view0 = batch.rays.camera_ids == 0
    assert int(in_view0.sum()) > 500 and int((~in_view0).sum()) > 500
    assert int(u[in_view0].max()) == 4  # never x >= 5 in view 0
    assert int(u[~in_view0].max()) == 7  # view 1 has no padding
    # Without padding the draws are the same as without a validity map.
    plain = ramp_views()
    all_valid = ramp_views()
    all_valid.valid = torch.ones(2, 6, 8, dtype=torch.bool)
    a = RaySampler(plain, seed=5).sample(64)
    b = RaySampler(all_valid, seed=5).sample(64)
    assert torch.equal(a.rgb, b.rgb)


def test_band_rays_take_the_images_coverage_as_their_mask() -> None:
    # The given mask says "hand" everywhere; the image's coverage ramps across column 3.5
    # (x, pixel centres at +0.5): 0 left of it, 1 right of it, linear in between.
    views = ramp_views()
    coverage = ((torch.arange(8.0) - 3.0).clamp(0, 1)).expand(2, 6, 8).clone()
    uncertain = torch.zeros(2, 6, 8, dtype=torch.bool)
    uncertain[:, :, 2:6] = True  # the band: columns 2-5
    sampler = RaySampler(views, seed=0, uncertain=uncertain, band_coverage=coverage)
    flat = torch.arange(2 * 6 * 8)
    centre = sampler.gather(flat)
    col = flat % 8
    # In the band, the coverage; outside it, the given mask (all hand); no flags left.
    expected = torch.where((col >= 2) & (col <= 5), coverage.reshape(-1) > 0.5, True)
    assert torch.equal(centre.mask, expected)
    assert centre.uncertain is None
    # Jittered rays read the coverage where they pass: hand exactly right of x = 4.0
    # (the point between column 3's centre, 0, and column 4's, 1, where it is 1/2).
    jittered = sampler.gather(flat.repeat(4), jitter=True)
    cam = jittered.rays.origins + jittered.rays.directions
    view = flat.repeat(4) // 48
    x_cam = torch.einsum("nij,nj->ni", views.R[view], cam) + views.t[view]
    px = (x_cam[:, 0] * 10 / x_cam[:, 2]) + 4  # K: fx 10, cx 4
    in_band = (flat.repeat(4) % 8 >= 2) & (flat.repeat(4) % 8 <= 5)
    assert torch.equal(jittered.mask[in_band], px[in_band] > 4.0 + 1e-6)
    # Without coverage the band is flagged, masks untouched.
    flagged = RaySampler(views, seed=0, uncertain=uncertain).gather(flat)
    assert torch.equal(flagged.uncertain, uncertain.reshape(-1))
    assert bool(flagged.mask.all())
    with pytest.raises(ParameterError, match="band_coverage"):
        RaySampler(views, uncertain=uncertain, band_coverage=coverage[:, :, :4])
