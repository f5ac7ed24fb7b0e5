"""Tests of the self-shadow visibility: rays from posed vertices against the posed mesh."""

from __future__ import annotations

import pytest
import torch
import trimesh

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.visibility import VertexVisibility, VisibilityConfig, fibonacci_directions


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
