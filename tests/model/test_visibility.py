"""Tests of the self-shadow visibility: rays from posed vertices against the posed mesh."""

from __future__ import annotations

import pytest
import torch
import trimesh

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.visibility import (
    PosedMesh,
    VertexVisibility,
    VisibilityConfig,
    fibonacci_directions,
)


def _sphere(centre: tuple[float, float, float], radius: float = 0.01) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    mesh.apply_translation(centre)
    return mesh


def _as_frames(mesh: trimesh.Trimesh) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)[None]
    normals = torch.tensor(mesh.vertex_normals, dtype=torch.float32)[None]
    return verts, normals, torch.tensor(mesh.faces, dtype=torch.long)


def test_directions_are_unit_and_evenly_spread() -> None:
    d = fibonacci_directions(64)
    assert d.shape == (64, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(64))
    # Evenly spread: no hemisphere is favoured, and no two directions nearly coincide.
    assert d.mean(0).abs().max() < 0.05
    cos = d @ d.T - 2 * torch.eye(64)
    assert cos.max() < 0.95


def test_convex_mesh_sees_exactly_its_outer_hemisphere() -> None:
    verts, normals, faces = _as_frames(_sphere((0.0, 0.0, 0.0)))
    vis = VertexVisibility(VisibilityConfig(n_directions=32))
    seen = vis(verts, normals, faces)[0]  # (V, K)
    facing = normals[0] @ vis.directions.T  # (V, K) cos between normal and direction
    clear = facing.abs() > 0.2  # grazing rays depend on the facets: not tested
    assert torch.equal(seen[clear] > 0.5, facing[clear] > 0)


def test_an_occluder_casts_a_shadow_that_moves_with_the_pose() -> None:
    """The top of a lower sphere cannot see straight up while another sphere hangs above it;
    move the upper sphere aside (a new pose) and the same vertex sees the sky again."""
    cfg = VisibilityConfig(n_directions=48)
    vis = VertexVisibility(cfg)
    up = int(torch.argmax(vis.directions[:, 2]))
    lower = _sphere((0.0, 0.0, 0.0))
    top = int(torch.argmax(torch.tensor(lower.vertices[:, 2])))
    stacked = trimesh.util.concatenate([lower, _sphere((0.0, 0.0, 0.03))])
    apart = trimesh.util.concatenate([lower, _sphere((0.08, 0.0, 0.03))])
    v0, n0, faces = _as_frames(stacked)
    v1, n1, _ = _as_frames(apart)
    seen = vis(torch.cat([v0, v1]), torch.cat([n0, n1]), faces)  # two "frames"
    assert seen.shape == (2, v0.shape[1], 48)
    assert seen[0, top, up] == 0.0
    assert seen[1, top, up] == 1.0


def _plate(centre: tuple[float, float, float], half: float, frames: int = 1) -> PosedMesh:
    """A horizontal square (two triangles) of side ``2 * half`` around ``centre``, posed the
    same in ``frames`` frames: vertices (frames,4,3), faces (2,3)."""
    x, y, z = centre
    corners = [
        (x - half, y - half),
        (x + half, y - half),
        (x + half, y + half),
        (x - half, y + half),
    ]
    verts = torch.tensor([[cx, cy, z] for cx, cy in corners], dtype=torch.float32)
    return PosedMesh(
        verts[None].expand(frames, -1, -1).clone(), torch.tensor([[0, 1, 2], [0, 2, 3]])
    )


def test_an_occluding_mesh_blocks_exactly_the_directions_it_covers() -> None:
    """The top vertex of a sphere (hand A) under a plate (hand B's mesh) loses the upward
    directions whose rays reach the plate, and keeps every other one; no other vertex gains
    any. Only A's vertices get visibilities."""
    vis = VertexVisibility(VisibilityConfig(n_directions=96))
    sphere = _sphere((0.0, 0.0, 0.0))
    verts, normals, faces = _as_frames(sphere)
    top = int(torch.argmax(verts[0, :, 2]))
    plate = _plate((0.0, 0.0, 0.03), half=0.02)
    alone = vis(verts, normals, faces)
    shadowed = vis(verts, normals, faces, plate)
    assert shadowed.shape == alone.shape == (1, verts.shape[1], 96)
    assert bool((shadowed <= alone).all())

    # Where the ray from the top vertex (plus the offset along its normal) crosses the
    # plate's height, and whether that is inside the square.
    d = vis.directions.double()
    start = verts[0, top].double() + normals[0, top].double() * vis.cfg.offset
    up = d[:, 2] > 0.1
    reach = (0.03 - start[2]) / d[:, 2].clamp(min=1e-9)
    at_plate = start[None, :2] + reach[:, None] * d[:, :2]  # (K, 2)
    inside = at_plate.abs().amax(-1)
    blocked = up & (inside < 0.02)
    clear = ~up | ((inside - 0.02).abs() > 2e-3)  # rays grazing the plate's rim: not tested
    assert int(blocked.sum()) >= 8 and int((up & ~blocked & clear).sum()) >= 8
    lost = (alone[0, top] > 0.5) & (shadowed[0, top] < 0.5)
    assert torch.equal(lost[clear], blocked[clear])
    # The sphere alone sees every clearly upward direction from its top.
    assert bool((alone[0, top][up & clear] == 1.0).all())


def test_an_occluder_out_of_every_rays_way_changes_nothing_and_follows_each_frame() -> None:
    vis = VertexVisibility(VisibilityConfig(n_directions=48))
    verts, normals, faces = _as_frames(_sphere((0.0, 0.0, 0.0)))
    alone = vis(verts, normals, faces)
    # Inside the sphere: a ray leaving a vertex of a convex mesh in a direction in front of
    # its surface never enters the mesh, so it cannot meet the plate.
    hidden = _plate((0.0, 0.0, 0.0), half=0.002)
    assert torch.equal(vis(verts, normals, faces, hidden), alone)
    # Two frames: the plate above the sphere, then moved aside (per-frame occluder vertices).
    v2, n2 = torch.cat([verts, verts]), torch.cat([normals, normals])
    above = _plate((0.0, 0.0, 0.03), half=0.02, frames=2)
    above.vertices[1, :, 0] += 0.5
    seen = vis(v2, n2, faces, above)
    assert torch.equal(seen[1], alone[0])
    assert float(seen[0].sum()) < float(alone[0].sum())


def test_off_gives_no_directions_and_bad_input_is_named() -> None:
    off = VertexVisibility(VisibilityConfig(n_directions=0))
    assert not off.enabled
    verts, normals, faces = _as_frames(_sphere((0.0, 0.0, 0.0)))
    assert off(verts, normals, faces).shape == (1, verts.shape[1], 0)
    with pytest.raises(ConfigError, match="n_directions"):
        VertexVisibility(VisibilityConfig(n_directions=-1))
    with pytest.raises(ConfigError, match="offset"):
        VertexVisibility(VisibilityConfig(offset=float("nan")))
    on = VertexVisibility()
    with pytest.raises(ParameterError, match=r"\(T,V,3\)"):
        on(verts[0], normals[0], faces)
    bad = verts.clone()
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ParameterError, match="non-finite"):
        on(bad, normals, faces)
    plate = _plate((0.0, 0.0, 0.03), half=0.02, frames=2)
    with pytest.raises(ParameterError, match="occluder"):
        on(verts, normals, faces, plate)  # 2 occluder frames for 1 frame
    plate.vertices[1, 0, 0] = float("nan")
    with pytest.raises(ParameterError, match="non-finite occluder"):
        on(torch.cat([verts, verts]), torch.cat([normals, normals]), faces, plate)
