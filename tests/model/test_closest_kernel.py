"""The fused closest-point kernel (handnerf.model.closest_kernel): on the CPU through
Triton's interpreter (``TRITON_INTERPRET=1``), on CUDA compiled."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

from handnerf.model.kernels import MESH_KERNEL_ENV, mesh_search_kernel
from handnerf.model.surface_search import MeshTables, TriangleScan, closest_point_on_triangles
from tests.model.test_deformer_coarse import CoarseHand, make_coarse_hand

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def hand() -> CoarseHand:
    return make_coarse_hand()


@pytest.fixture
def interpreted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The kernel module with its kernels decorated in Triton's interpreter mode; it is
    decorated again (compiled mode) afterwards, for any CUDA test later in the session."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from handnerf.model import closest_kernel

    yield importlib.reload(closest_kernel)
    monkeypatch.undo()
    importlib.reload(closest_kernel)


def near_surface_points(hand: CoarseHand, n: int, seed: int) -> torch.Tensor:
    """(n, 3) points within 12 mm of the posed surface (around its vertices)."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(hand.posed), (n,), generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=1)
    return hand.posed[picks] + 0.012 * torch.rand(n, 1, generator=generator) * direction


def test_kernel_finds_the_closest_point_of_the_whole_mesh(
    hand: CoarseHand, interpreted: ModuleType
) -> None:
    points = near_surface_points(hand, 128, seed=1)
    points[0] = hand.posed[hand.faces[7]].mean(dim=0)  # on a triangle: distance 0
    corners = hand.posed[hand.faces]  # (T, 3, 3)
    face, bary, dist2 = interpreted.closest_on_mesh(points, corners)
    assert face.dtype == torch.int64 and bary.shape == (128, 3) and dist2.shape == (128,)
    # The float64 closest point over every triangle.
    _, all_d2 = closest_point_on_triangles(points.double()[:, None], corners.double()[None])
    exact = all_d2.amin(dim=1)
    assert float((dist2.double().sqrt() - exact.sqrt()).abs().max()) < 1e-6
    assert float(dist2[0]) < 1e-12 and int(face[0]) == 7
    # The barycentrics give that point on that triangle, at that distance.
    assert bool((bary >= -1e-6).all()) and torch.allclose(bary.sum(1), torch.ones(128))
    on_mesh = (bary[:, :, None] * corners[face]).sum(dim=1)
    assert torch.allclose((points - on_mesh).square().sum(1), dist2, atol=1e-9, rtol=1e-4)
    empty = interpreted.closest_on_mesh(points[:0], corners)
    assert [t.shape[0] for t in empty] == [0, 0, 0]


@pytest.mark.parametrize(
    "triangle",
    [
        [[0.0, 0.0, 0.0], [0.03, 0.0, 0.0], [0.01, 0.02, 0.005]],
        [[0.0, 0.0, 0.0], [0.02, 0.01, 0.0], [0.04, 0.02, 0.0]],  # degenerate: a segment
    ],
    ids=["triangle", "degenerate"],
)
def test_kernel_matches_the_closest_point_of_one_triangle_in_every_region(
    triangle: list[list[float]], interpreted: ModuleType
) -> None:
    """Points all around one triangle (above it, beyond each edge, beyond each corner):
    each part of the kernel is checked, which a closed mesh hides (every edge of one
    triangle is an edge of its neighbour)."""
    corners = torch.tensor([triangle])
    generator = torch.Generator().manual_seed(9)
    points = corners[0].mean(0) + 0.04 * (torch.rand(128, 3, generator=generator) - 0.5)
    face, bary, dist2 = interpreted.closest_on_mesh(points, corners)
    bary64, d2_64 = closest_point_on_triangles(points.double(), corners.double().expand(128, 3, 3))
    assert bool((face == 0).all())
    assert float((dist2.double().sqrt() - d2_64.sqrt()).abs().max()) < 1e-6
    point = (bary.double()[:, :, None] * corners.double()).sum(1)
    expected = (bary64[:, :, None] * corners.double()).sum(1)
    assert float((point - expected).norm(dim=1).max()) < 1e-6


def test_triangle_scan_with_the_kernel_agrees_with_the_torch_scan(
    hand: CoarseHand, interpreted: ModuleType
) -> None:
    """Two frames (the second moved), points of both in one call: per-frame launches."""
    moved = hand.posed + torch.tensor([0.01, -0.02, 0.005])
    tables = MeshTables.build(torch.stack([hand.posed, moved]), hand.faces)
    points = torch.cat([near_surface_points(hand, 100, seed=2), moved[:28] + 0.003])
    frame_ids = torch.cat([torch.zeros(100), torch.ones(28)]).long()
    by_kernel = TriangleScan(tables, kernel=interpreted).closest(points, frame_ids)
    by_scan = TriangleScan(tables, kernel=None).closest(points, frame_ids)
    tri_k, bary_k, d2_k = by_kernel
    tri_s, bary_s, d2_s = by_scan
    assert float((d2_k.sqrt() - d2_s.sqrt()).abs().max()) < 1e-6
    # The same closest points (a tie between triangles may name either of them).
    corners = tables.posed_vertices[frame_ids[:, None], tri_k]
    corners_s = tables.posed_vertices[frame_ids[:, None], tri_s]
    point_k = (bary_k[:, :, None] * corners).sum(1)
    point_s = (bary_s[:, :, None] * corners_s).sum(1)
    assert float((point_k - point_s).norm(dim=1).max()) < 1e-5
    # float64 queries keep the scan (the kernel computes in float32).
    tables64 = MeshTables.build(tables.posed_vertices.double(), hand.faces)
    _, _, d2_64 = TriangleScan(tables64, kernel=interpreted).closest(points.double(), frame_ids)
    assert d2_64.dtype == torch.float64
    assert float((d2_64.sqrt() - d2_s.double().sqrt()).abs().max()) < 1e-6


def test_with_the_kernel_the_closest_point_keeps_its_gradients(
    hand: CoarseHand, interpreted: ModuleType
) -> None:
    """A fit differentiates the closest point w.r.t. the samples and, when poses are
    refined, the posed mesh: with the kernel, as with the scan."""
    points = near_surface_points(hand, 64, seed=5)
    frame_ids = torch.zeros(64, dtype=torch.long)
    grads = []
    for kernel in (interpreted, None):
        posed = hand.posed[None].clone().requires_grad_()
        queries = points.clone().requires_grad_()
        tables = MeshTables.build(posed, hand.faces)
        tri, bary, dist2 = TriangleScan(tables, kernel=kernel).closest(queries, frame_ids)
        # The closest point and its distance: the same whichever of two triangles that
        # share it is named (the kernel and the scan may name different ones in a tie).
        closest = (bary[:, :, None] * posed[0][tri]).sum(1)
        (dist2.sum() + closest.sum()).backward()
        assert queries.grad is not None and posed.grad is not None
        grads.append((queries.grad, posed.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-4)


def test_the_kernel_is_chosen_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert mesh_search_kernel("cpu") is None
    monkeypatch.setenv(MESH_KERNEL_ENV, "0")
    assert mesh_search_kernel("cuda") is None
    monkeypatch.delenv(MESH_KERNEL_ENV)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert mesh_search_kernel("cuda") is None
    tables = MeshTables.build(make_coarse_hand().posed[None], make_coarse_hand().faces)
    assert TriangleScan(tables).kernel is None  # CPU tables: the scan


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_kernel_serves_and_agrees_with_the_scan(hand: CoarseHand) -> None:
    tables = MeshTables.build(hand.posed[None].cuda(), hand.faces.cuda())
    search = TriangleScan(tables)
    assert search.kernel is not None, "the fused kernel should build and run on CUDA"
    points = near_surface_points(hand, 20000, seed=3).cuda()
    frame_ids = torch.zeros(20000, dtype=torch.long, device="cuda")
    _, _, d2_k = search.closest(points, frame_ids)
    _, _, d2_s = TriangleScan(tables, kernel=None).closest(points, frame_ids)
    assert float((d2_k.sqrt() - d2_s.sqrt()).abs().max()) < 1e-6
