"""CanonicalOccupancyGrid: EMA updates (nerfacc semantics), mesh seeding, queries, state."""

from __future__ import annotations

import pytest
import torch

from handnerf.errors import ConfigError, ParameterError
from handnerf.model import march_kernel
from handnerf.model.occupancy import CanonicalOccupancyGrid, OccupancyConfig

AABB = [-0.1, -0.1, -0.1, 0.1, 0.1, 0.1]
BALL_CENTRE = torch.tensor([0.04, 0.0, 0.0])
BALL_RADIUS = 0.04


def ball_density(x: torch.Tensor) -> torch.Tensor:
    """1000 /m inside a ball, 0 outside."""
    return 1000.0 * ((x - BALL_CENTRE).norm(dim=-1) < BALL_RADIUS).float()


def make_grid(resolution: int = 16, **overrides: object) -> CanonicalOccupancyGrid:
    cfg = OccupancyConfig(resolution=resolution)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return CanonicalOccupancyGrid(AABB, cfg)


def ball_cells(grid: CanonicalOccupancyGrid, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells surely inside / surely outside the ball (by centre distance and cell size)."""
    dist = (grid.cell_centers() - BALL_CENTRE).norm(dim=-1)
    half_diag = float(grid.cell_size.norm()) / 2
    inside = dist < BALL_RADIUS - half_diag - margin
    outside = dist > BALL_RADIUS + half_diag + margin
    return inside.view_as(grid.binaries), outside.view_as(grid.binaries)


def test_update_marks_the_occupied_region_and_clears_empty_space() -> None:
    torch.manual_seed(0)
    grid = make_grid()
    # Seed a wrong region (around the opposite side); the field says it is empty.
    grid.init_from_points(torch.tensor([[-0.05, 0.0, 0.0]]), init_radius=0.03, keep_radius=None)
    seeded = grid.binaries.clone()
    assert seeded.any()
    inside, outside = ball_cells(grid, margin=0.0)
    version = grid.version
    for step in range(0, 16 * 12, 16):
        assert grid.update(step, ball_density, ema_decay=0.5, warmup_steps=16 * 8)
    assert grid.version == version + 12
    assert grid.binaries[inside].all(), "cells inside the ball must be occupied"
    assert not grid.binaries[outside].any(), "empty space (incl. the wrong seed) must be cleared"
    assert not (grid.binaries & seeded).any()
    assert (grid.occs <= 1000.0 * float(grid.cell_size.min()) + 1e-6).all()


def test_update_runs_only_every_n_steps_and_in_eval_mode() -> None:
    grid = make_grid(resolution=8).eval()
    before = grid.occs.clone()
    assert not grid.update(3, ball_density, n=16)
    assert torch.equal(grid.occs, before)
    assert grid.update(32, ball_density, n=16)
    assert grid.binaries.any()


def test_post_warmup_updates_keep_occupied_cells() -> None:
    torch.manual_seed(1)
    grid = make_grid(warmup_steps=1)
    grid.update(0, ball_density)  # one full pass
    inside, _ = ball_cells(grid, margin=0.0)
    assert grid.binaries[inside].all()
    for step in range(16, 16 * 6, 16):  # subset updates: uniform quarter + occupied cells
        grid.update(step, ball_density)
    assert grid.binaries[inside].all()


def test_init_from_points_seeds_and_excludes_cells() -> None:
    grid = make_grid(resolution=20)
    points = torch.tensor([[0.0, 0.0, 0.0], [0.05, 0.05, 0.0]])
    grid.init_from_points(points, init_radius=0.012, keep_radius=0.03)
    dist = torch.cdist(grid.cell_centers(), points).min(dim=1).values
    assert torch.equal(grid.binaries.reshape(-1), dist <= 0.012)
    assert torch.equal(grid.occs < 0, dist > 0.03)
    # Excluded cells are never evaluated again, so a density there cannot occupy them.
    grid.update(0, lambda x: torch.full((x.shape[0],), 1e4))
    assert torch.equal(grid.binaries.reshape(-1), dist <= 0.03)
    with pytest.raises(ParameterError):
        grid.init_from_points(torch.zeros(0, 3))
    with pytest.raises(ConfigError, match="keep_radius"):
        grid.init_from_points(points, init_radius=0.02, keep_radius=0.01)


def test_query_matches_cells_and_rejects_points_outside() -> None:
    grid = make_grid(resolution=10)
    # Cells are 2 cm wide; cell 5 spans [0, 0.02] with its centre at 0.01.
    grid.init_from_points(torch.tensor([[0.01, 0.01, 0.01]]), init_radius=0.001, keep_radius=None)
    assert int(grid.binaries.sum()) == 1 and bool(grid.binaries[5, 5, 5])
    pts = torch.tensor(
        [
            [0.001, 0.019, 0.0101],  # in the cell
            [0.021, 0.01, 0.01],  # next cell in x
            [0.01, 0.01, 0.5],  # outside the box
            [-0.5, -0.5, -0.5],  # outside, clamps to a corner cell
        ]
    )
    assert grid.query(pts).tolist() == [True, False, False, False]
    with pytest.raises(ParameterError):
        grid.query(torch.zeros(3))


@pytest.mark.skipif(not march_kernel.available(), reason="numba is not installed")
def test_compiled_query_equals_the_torch_version(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = make_grid(resolution=16)
    grid.update(0, ball_density, warmup_steps=1, n=1)
    generator = torch.Generator().manual_seed(0)
    # Inside and beyond the box, points on cell faces, and NaNs.
    points = torch.rand(10000, 3, generator=generator) * 0.3 - 0.15
    ball = BALL_CENTRE + 0.03 * torch.randn(10000, 3, generator=generator)
    # Cell corners around the ball, where float rounding decides between neighbours.
    low, cell = grid.aabb[:3], grid.cell_size
    faces = low + torch.round((ball - low) / cell) * cell
    away = torch.where(torch.rand(faces.shape, generator=generator) < 0.5, -1.0, 1.0)
    faces = torch.nextafter(faces, faces + away)  # a float step to either side
    points = torch.cat([points, ball, faces, torch.tensor([[float("nan"), 0.0, 0.0]])])
    compiled = grid.query(points)
    monkeypatch.setenv(march_kernel.ENV_SWITCH, "0")
    reference = grid.query(points)
    assert 1000 < int(reference.sum()) < len(points) - 1000
    assert torch.equal(compiled, reference)


def test_state_dict_round_trip() -> None:
    torch.manual_seed(2)
    grid = make_grid(resolution=12)
    grid.update(0, ball_density)
    other = make_grid(resolution=12)
    version = other.version
    other.load_state_dict(grid.state_dict())
    assert torch.equal(other.occs, grid.occs) and torch.equal(other.binaries, grid.binaries)
    assert other.version > version
    pts = torch.rand(1000, 3) * 0.2 - 0.1
    assert torch.equal(other.query(pts), grid.query(pts))


def test_bad_configs_raise() -> None:
    with pytest.raises(ConfigError):
        make_grid(resolution=1)
    with pytest.raises(ParameterError, match="aabb"):
        CanonicalOccupancyGrid([0, 0, 0, 0, 1, 1])
