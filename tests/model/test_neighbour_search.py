"""The deformer's neighbour search (:mod:`handnerf.model.neighbour_search`) on its own."""

from __future__ import annotations

import pytest
import torch

from handnerf.model.deformer_config import DeformerConfig
from handnerf.model.neighbour_search import (
    build_grid,
    build_trees,
    knn,
    knn_cdist,
    neighbour_weights,
    sample_grid,
)
from tests.host_syncs import count_host_syncs


def _cloud(seed: int, frames: int = 2, vertices: int = 300) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(frames, vertices, 3, generator=generator, dtype=torch.float64)


def test_kdtree_and_cdist_find_the_same_neighbours() -> None:
    vertices = _cloud(0)
    generator = torch.Generator().manual_seed(1)
    points = 0.05 * torch.randn(500, 3, generator=generator, dtype=torch.float64)
    frame_ids = torch.randint(2, (500,), generator=generator)
    cfg = DeformerConfig(max_distance=1.0)  # every point in reach: no bounded misses
    d_tree, i_tree = knn(vertices, points, frame_ids, 4, cfg, build_trees(vertices))
    d_cdist, i_cdist = knn(vertices, points, frame_ids, 4, cfg)
    torch.testing.assert_close(d_tree, d_cdist, rtol=0, atol=1e-12)
    assert torch.equal(i_tree, i_cdist)
    assert bool((d_tree[:, 1:] >= d_tree[:, :-1]).all())  # ascending
    # brute force on one frame
    rows = frame_ids == 0
    brute = (points[rows, None] - vertices[0][None]).norm(dim=-1).topk(4, largest=False)
    torch.testing.assert_close(d_cdist[rows], brute.values, rtol=0, atol=1e-12)


def test_knn_host_syncs_do_not_grow_with_the_prepared_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch from 3 of F prepared frames: the same results and the same number of host
    syncs whether F is 3 or 60 (a deform per step must not wait once per frame)."""
    generator = torch.Generator().manual_seed(2)
    points = 0.05 * torch.randn(400, 3, generator=generator, dtype=torch.float64)
    frame_ids = torch.tensor([0, 1, 2]).repeat(134)[:400]
    cfg = DeformerConfig(max_distance=1.0)
    results, syncs = [], []
    base = _cloud(3, frames=3)
    for n_frames in (3, 60):
        vertices = base[[*range(3)] + [0] * (n_frames - 3)]
        with count_host_syncs(monkeypatch) as counts:
            results.append(knn(vertices, points, frame_ids, 4, cfg))
        syncs.append(sum(counts.values()))
    assert torch.equal(results[0][1], results[1][1])
    assert syncs[0] == syncs[1] <= 3, syncs


def test_kdtree_search_is_bounded_by_the_max_distance() -> None:
    vertices = _cloud(2, frames=1)
    far = torch.full((3, 3), 10.0, dtype=torch.float64)
    cfg = DeformerConfig(max_distance=0.01)
    distances, ids = knn(
        vertices, far, torch.zeros(3, dtype=torch.long), 2, cfg, build_trees(vertices)
    )
    assert bool(torch.isinf(distances).all())  # beyond the bound: not found, invalid
    assert bool(((ids >= 0) & (ids < vertices.shape[1])).all())  # yet valid ids to gather


def test_neighbour_weights_are_normalised_and_exact_on_a_vertex() -> None:
    vertices = _cloud(3, frames=1)[0]
    points = torch.cat([vertices[:5], 0.05 * torch.randn(20, 3, dtype=torch.float64)])
    distances, _ = knn_cdist(vertices, points, 4)
    for blend in ("inverse_distance", "gaussian"):
        weights = neighbour_weights(distances, DeformerConfig(blend=blend))
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(points), dtype=torch.float64))
    on_vertex = neighbour_weights(distances[:5], DeformerConfig())
    assert bool((on_vertex[:, 0] > 0.999).all())
    nothing = neighbour_weights(
        torch.full((2, 3), torch.inf, dtype=torch.float64), DeformerConfig()
    )
    assert torch.equal(nothing, torch.tensor([[1.0, 0.0, 0.0]] * 2, dtype=torch.float64))


def test_grid_reproduces_its_nodes() -> None:
    vertices = _cloud(4)
    num = vertices.shape[0] * vertices.shape[1]
    generator = torch.Generator().manual_seed(5)
    affine = torch.randn(num, 12, generator=generator, dtype=torch.float64)
    quaternion = torch.nn.functional.normalize(
        torch.randn(num, 4, generator=generator, dtype=torch.float64), dim=1
    )
    cfg = DeformerConfig(blend="nearest", grid_voxel_size=0.01, max_distance=0.01)
    grid = build_grid(vertices, affine, quaternion, cfg)
    assert grid.values.shape == (2 * grid.dims[0] * grid.dims[1] * grid.dims[2], 17)
    # a node of frame 1: its stored values come back exactly (all trilinear weight on it)
    node = torch.tensor([[3, 4, 5]], dtype=torch.float64)
    point = grid.origin[1] + node * grid.voxel_size
    got_affine, got_quaternion, distance = sample_grid(grid, point, torch.tensor([1]))
    index = grid.dims[0] * grid.dims[1] * grid.dims[2] + (3 * grid.dims[1] + 4) * grid.dims[2] + 5
    torch.testing.assert_close(got_affine[0], grid.values[index, :12])
    torch.testing.assert_close(got_quaternion[0].abs(), grid.values[index, 12:16].abs())
    torch.testing.assert_close(distance[0], grid.values[index, 16])
    # outside the box: infinitely far
    _, _, outside = sample_grid(grid, grid.origin[:1] - 1.0, torch.tensor([0]))
    assert bool(torch.isinf(outside).all())
