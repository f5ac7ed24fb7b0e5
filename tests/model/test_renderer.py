"""The ray type and the inference renderer: a camera's image is the avatar's render of its rays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.model.rays import RayBundle, fields_to
from handnerf.model.renderer import CameraTensors, camera_rays, render_camera
from handnerf.render.jobs import framing_camera, hand_sphere
from handnerf.runs.loader import load_run
from handnerf.train.fit_data import sequence_mano
from handnerf.train.rays import RayBatch


def bundle(n: int, first_frame: int, cameras: bool) -> RayBundle:
    return RayBundle(
        origins=torch.zeros(n, 3),
        directions=torch.tensor([[0.0, 0.0, 1.0]]).expand(n, 3),
        frame_ids=torch.full((n,), first_frame),
        camera_ids=torch.arange(n) if cameras else None,
    )


def test_ray_bundles_join_and_move_with_their_fields() -> None:
    joined = bundle(3, 0, True).cat(bundle(2, 5, True))
    assert len(joined) == 5
    assert joined.frame_ids.tolist() == [0, 0, 0, 5, 5]
    assert joined.camera_ids is not None and joined.camera_ids.tolist() == [0, 1, 2, 0, 1]
    plain = bundle(2, 1, False).cat(bundle(1, 2, False)).to("cpu")
    assert plain.camera_ids is None and plain.directions.shape == (3, 3)
    with pytest.raises(ValueError, match="camera ids"):
        bundle(1, 0, True).cat(bundle(1, 0, False))


def test_ray_types_move_every_field_and_keep_missing_ones_missing() -> None:
    # "meta" is a real second device on any machine: every tensor must land there.
    moved = fields_to(bundle(2, 3, True), "meta")
    assert isinstance(moved, RayBundle)
    assert {t.device.type for t in (moved.origins, moved.directions, moved.frame_ids)} == {"meta"}
    assert moved.camera_ids is not None and moved.camera_ids.device.type == "meta"
    assert bundle(2, 3, False).to("meta").camera_ids is None
    batch = RayBatch(bundle(2, 3, True), torch.zeros(2, 3), torch.ones(2, dtype=torch.bool))
    on_meta = batch.to(torch.device("meta"))
    assert isinstance(on_meta, RayBatch) and on_meta.uncertain is None
    assert on_meta.rays.origins.device.type == on_meta.rgb.device.type == "meta"
    assert on_meta.mask.device.type == "meta" and on_meta.mask.dtype == torch.bool


def test_camera_rays_are_the_pinhole_cameras_pixel_centre_rays() -> None:
    cam = framing_camera(np.array([0.3, -0.2, 0.5]), np.zeros(3), 0.1, size=9)
    origins, dirs = camera_rays(CameraTensors.of(cam), torch.device("cpu"))
    expected_origins, expected_dirs = cam.world_rays()
    assert origins.shape == dirs.shape == (81, 3)
    np.testing.assert_allclose(origins.numpy(), expected_origins, atol=1e-6)
    np.testing.assert_allclose(dirs.numpy(), expected_dirs, atol=1e-6)


def test_render_camera_is_the_avatars_render_of_the_camera_rays(tiny_run: Path) -> None:
    run = load_run(tiny_run, device="cpu")
    mano = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 1).index(0)
    frames = run.avatar.pose_frames(mano.to(run.device))
    center, radius = hand_sphere(frames.vertices[0])
    cam = framing_camera(center + np.array([0.0, -0.3, 0.3]), center, radius, size=20)

    image = render_camera(run.avatar, frames, cam, 0, 0, chunk=64, marching=False)
    assert image.shape == (20, 20, 3) and image.dtype == torch.float32
    assert float(image.amax(-1).gt(0.05).float().mean()) > 0.02, "the hand is visible"
    # The same camera as tensors renders the same image.
    same = render_camera(run.avatar, frames, CameraTensors.of(cam), 0, 0, marching=False)
    assert torch.equal(same, image)

    # ... and is what the avatar renders for the camera's rays in one call.
    origins, dirs = camera_rays(CameraTensors.of(cam), run.device)
    ids = torch.zeros(len(origins), dtype=torch.long)
    rays = RayBundle(origins=origins, directions=dirs, frame_ids=ids, camera_ids=ids)
    with torch.no_grad():
        direct = run.avatar.render_rays(frames, rays, torch.zeros(len(rays), 3))["rgb"]
    torch.testing.assert_close(image, direct.clamp(0, 1).reshape(20, 20, 3), atol=1e-5, rtol=0)
    # The default (fast) path renders the same image within its stated bound, in any chunks
    # (tests/model/test_marching.py has the details).
    fast = render_camera(run.avatar, frames, cam, 0, 0, chunk=64)
    torch.testing.assert_close(fast, image, atol=1e-3, rtol=0)
    torch.testing.assert_close(
        render_camera(run.avatar, frames, cam, 0, 0), fast, atol=1e-6, rtol=0
    )
