"""The reach grid finds libigl's closest triangles within reach, and bounds the rest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.model import reach_grid
from handnerf.model.marching import march_rays
from handnerf.model.rays import RayBundle
from handnerf.model.reach_grid import ReachGrid
from handnerf.model.renderer import CameraTensors, camera_rays
from handnerf.model.surface_search import TriangleTrees
from handnerf.render.jobs import framing_camera, hand_sphere
from handnerf.runs.loader import load_run
from handnerf.train.fit_data import sequence_mano

pytestmark = pytest.mark.skipif(not reach_grid.available(), reason="numba is not installed")

REACH = 0.008


@pytest.fixture(scope="module")
def posed(tiny_run: Path):  # type: ignore[no-untyped-def]
    """The tiny fit's avatar and two posed frames of its training sequence."""
    run = load_run(tiny_run, device="cpu")
    mano = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 2)
    return run, run.avatar.pose_frames(mano)


def near_mesh(vertices: torch.Tensor, n: int, spread: float, seed: int = 0) -> torch.Tensor:
    """(n, 3) points scattered around random vertices of one frame (V, 3)."""
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(vertices), (n,), generator=gen)
    return vertices[picks] + torch.randn(n, 3, generator=gen) * spread


def deform(grid: ReachGrid, deformation, points, frame_ids):  # type: ignore[no-untyped-def]
    """``grid.deform_within`` with the posed frames' tables."""
    return grid.deform_within(
        points,
        frame_ids,
        deformation.vertex_affine,
        deformation.posed_vertices,
        deformation.canonical_vertices,
        REACH,
        1e-6,
    )


def test_closest_triangles_within_reach_are_libigls(posed) -> None:  # type: ignore[no-untyped-def]
    _, frames = posed
    trees = frames.deformation.triangle_trees
    assert isinstance(trees, TriangleTrees)
    vertices, faces = trees.tables.posed_vertices, trees.tables.faces
    grid = ReachGrid(vertices, faces, REACH)
    frame_ids = torch.tensor([0, 1]).repeat_interleave(3000)
    points = torch.cat([near_mesh(vertices[f], 3000, 0.008, seed=f) for f in (0, 1)])
    _, valid, distance, ids, weights = deform(grid, frames.deformation, points, frame_ids)
    tri_ids, bary, dist2 = trees.closest(points, frame_ids)
    exact = dist2.double().sqrt()
    # Up to the limit (reach + margin) the distance is libigl's; beyond it, the limit: a
    # lower bound.
    below = exact < grid.limit - 1e-6
    assert int((exact <= REACH).sum()) > 2000 and int((~below).sum()) > 200
    torch.testing.assert_close(distance[below].double(), exact[below], atol=1e-6, rtol=0)
    assert bool((distance[exact > grid.limit + 1e-6] == grid.limit).all())
    assert bool((distance.double() <= exact + 1e-6).all())
    # Within reach: the closest point of libigl's triangle (or of one sharing it).
    near = exact < REACH - 1e-6
    assert bool(valid[near].all()) and not bool(valid[exact > REACH + 1e-6].any())
    flat = vertices.reshape(-1, 3)
    point = (weights[near, :, None] * flat[ids[near]]).sum(1)
    ref_ids = frame_ids[near, None] * vertices.shape[1] + tri_ids[near]
    ref = (bary[near, :, None] * flat[ref_ids]).sum(1)
    torch.testing.assert_close(point, ref, atol=1e-6, rtol=0)
    same = (ids[near] == ref_ids).all(dim=1)
    assert float(same.float().mean()) > 0.7


def test_points_far_from_the_mesh_get_nothing(posed) -> None:  # type: ignore[no-untyped-def]
    _, frames = posed
    tables = frames.deformation.triangle_trees.tables
    grid = ReachGrid(tables.posed_vertices, tables.faces, REACH)
    far = tables.posed_vertices[1].mean(0) + torch.tensor([[1.0, 0, 0], [0, -2.0, 0], [0, 0, 0.5]])
    canonical, valid, distance, _, weights = deform(
        grid, frames.deformation, far, torch.ones(3, dtype=torch.long)
    )
    assert not bool(valid.any()) and bool((distance == grid.limit).all())
    assert torch.equal(canonical, far) and bool((weights == 0).all())
    assert grid.built_frames == [1]  # a frame's grid is built when it is first asked
    empty = deform(grid, frames.deformation, torch.zeros(0, 3), torch.zeros(0).long())
    assert [tuple(t.shape) for t in empty] == [(0, 3), (0,), (0,), (0, 3), (0, 3)]


@pytest.mark.parametrize("anchored", [True, False], ids=["correctives", "plain"])
def test_fused_deformation_equals_the_torch_one(
    posed,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    anchored: bool,
) -> None:
    """The fast path's deformation (``orient=False, reach_only=True``) from the grid's
    fused kernel and from libigl + torch: the same samples in reach, canonical points,
    blend and distances (exact within reach, a lower bound beyond)."""
    _, frames = posed
    deformation = frames.deformation
    if anchored:
        assert deformation.canonical_vertices is not None
    else:
        deformation = dataclasses.replace(deformation, canonical_vertices=None)
    vertices = deformation.posed_vertices
    frame_ids = torch.tensor([1, 0]).repeat_interleave(2000)
    points = torch.cat([near_mesh(vertices[f], 2000, 0.01, 3) for f in (1, 0)])
    fused = deformation.deform(points, frame_ids, orient=False, reach_only=True)
    monkeypatch.setenv(reach_grid.ENV_SWITCH, "0")
    plain = deformation.deform(points, frame_ids, orient=False, reach_only=True)
    assert int(plain.valid.sum()) > 1000 and int((~plain.valid).sum()) > 500
    assert torch.equal(fused.valid, plain.valid)
    valid = plain.valid
    torch.testing.assert_close(fused.canonical[valid], plain.canonical[valid], atol=2e-6, rtol=0)
    torch.testing.assert_close(fused.canonical[~valid], points[~valid])
    torch.testing.assert_close(fused.distance[valid], plain.distance[valid], atol=1e-6, rtol=0)
    assert bool((fused.distance <= plain.distance + 1e-6).all())
    # The blend: the same closest point, whichever triangle sharing it was taken.
    flat = vertices.reshape(-1, 3)
    assert fused.neighbor_ids is not None and fused.neighbor_weights is not None
    assert plain.neighbor_ids is not None and plain.neighbor_weights is not None
    point = (fused.neighbor_weights[valid, :, None] * flat[fused.neighbor_ids[valid]]).sum(1)
    ref = (plain.neighbor_weights[valid, :, None] * flat[plain.neighbor_ids[valid]]).sum(1)
    torch.testing.assert_close(point, ref, atol=1e-6, rtol=0)
    assert bool((fused.neighbor_weights[~valid] == 0).all())


def test_march_renders_the_same_with_libigl_or_the_grid(
    posed,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no early stop or colour skip every shell sample in reach is visited either way
    (distance skipping is exact with both): the same image up to float rounding."""
    run, _ = posed
    run.avatar.field.cfg.density_scale = 3e4  # opaque, as a trained avatar
    mano = sequence_mano(run.data_root, run.cfg.data, run.cfg.data.train_seq, 1)
    center, radius = hand_sphere(run.avatar.pose_frames(mano).vertices[0])
    cam = framing_camera(center + np.array([0.05, -0.3, 0.3]), center, radius, size=32)
    origins, dirs = camera_rays(CameraTensors.of(cam), run.device)
    ids = torch.zeros(len(origins), dtype=torch.long)
    rays = RayBundle(origins=origins, directions=dirs, frame_ids=ids, camera_ids=ids)
    background = torch.zeros(3)
    grid = march_rays(run.avatar, run.avatar.pose_frames(mano), rays, background, 0.0, 0.0)
    monkeypatch.setenv(reach_grid.ENV_SWITCH, "0")
    trees = march_rays(run.avatar, run.avatar.pose_frames(mano), rays, background, 0.0, 0.0)
    assert float(trees["opacity"].max()) > 0.9
    assert int(grid["n_evaluated"]) == int(trees["n_evaluated"])
    for key in ("rgb", "opacity"):
        torch.testing.assert_close(grid[key], trees[key], atol=2e-6, rtol=0)
