"""The reach grid finds libigl's closest triangles within reach, and bounds the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.model import reach_grid
from handnerf.model.marching import march_rays
from handnerf.model.rays import RayBundle
from handnerf.model.reach_grid import ReachGrid
from handnerf.model.renderer import CameraTensors, camera_rays
from handnerf.model.surface_search import TriangleTrees, within_reach
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


def test_closest_triangles_within_reach_are_libigls(posed) -> None:  # type: ignore[no-untyped-def]
    _, frames = posed
    trees = frames.deformation.triangle_trees
    assert isinstance(trees, TriangleTrees)
    vertices, faces = trees.tables.posed_vertices, trees.tables.faces
    grid = ReachGrid(vertices, faces, REACH)
    frame_ids = torch.tensor([0, 1]).repeat_interleave(3000)
    points = torch.cat([near_mesh(vertices[f], 3000, 0.008, seed=f) for f in (0, 1)])
    face, distance = grid.closest_within(points, frame_ids)
    tri_ids, _, dist2 = trees.closest(points, frame_ids)
    exact = dist2.double().sqrt()
    found = face >= 0
    # Within the limit: a triangle at libigl's distance (the same one, or one sharing
    # its closest point); beyond it: none, and a lower bound.
    within = exact < grid.limit - 1e-6
    assert int(within.sum()) > 2000 and int((~within).sum()) > 200
    assert bool(found[within].all()) and not bool(found[exact > grid.limit + 1e-6].any())
    torch.testing.assert_close(distance[within], exact[within], atol=1e-6, rtol=0)
    same = (faces[face[within]] == tri_ids[within]).all(dim=1)
    assert float(same.float().mean()) > 0.7
    assert bool((distance[~found] == grid.limit).all())
    assert bool((distance <= exact + 1e-6).all())


def test_points_far_from_the_mesh_get_no_triangle(posed) -> None:  # type: ignore[no-untyped-def]
    _, frames = posed
    tables = frames.deformation.triangle_trees.tables
    grid = ReachGrid(tables.posed_vertices, tables.faces, REACH)
    far = tables.posed_vertices[1].mean(0) + torch.tensor([[1.0, 0, 0], [0, -2.0, 0], [0, 0, 0.5]])
    face, distance = grid.closest_within(far, torch.ones(3, dtype=torch.long))
    assert face.tolist() == [-1, -1, -1] and bool((distance == grid.limit).all())
    assert grid.built_frames == [1]  # a frame's grid is built when it is first asked
    empty_face, empty_distance = grid.closest_within(torch.zeros(0, 3), torch.zeros(0).long())
    assert empty_face.shape == empty_distance.shape == (0,)


def test_tree_closest_within_matches_the_whole_mesh_search(
    posed,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, frames = posed
    trees = frames.deformation.triangle_trees
    frame_ids = torch.tensor([1, 0]).repeat_interleave(2000)
    points = torch.cat([near_mesh(trees.tables.posed_vertices[f], 2000, 0.01, 3) for f in (1, 0)])
    near, tri_ids, bary, distance = trees.closest_within(points, frame_ids, REACH)
    ref_near, ref_tri, ref_bary, ref_distance = within_reach(
        *trees.closest(points, frame_ids), REACH
    )
    assert torch.equal(near, ref_near) and len(near) > 1000
    # The closest point itself: the same, whichever of the triangles sharing it was taken.
    corners = trees.tables.posed_vertices[frame_ids[near, None], tri_ids]
    ref_corners = trees.tables.posed_vertices[frame_ids[near, None], ref_tri]
    point = (bary[..., None] * corners).sum(1)
    ref_point = (ref_bary[..., None] * ref_corners).sum(1)
    torch.testing.assert_close(point, ref_point, atol=1e-6, rtol=0)
    torch.testing.assert_close(distance[near], ref_distance[near], atol=1e-6, rtol=0)
    assert bool((distance <= ref_distance + 1e-6).all())
    # Switched off: libigl's answer itself.
    monkeypatch.setenv(reach_grid.ENV_SWITCH, "0")
    off = trees.closest_within(points, frame_ids, REACH)
    for got, want in zip(off, (ref_near, ref_tri, ref_bary, ref_distance), strict=True):
        assert torch.equal(got, want)


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
