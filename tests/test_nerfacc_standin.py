"""The nerfacc stand-in itself (tests/nerfacc_standin.py): its ops against plain loops,
and its input contracts, which catch on the CPU what the CUDA kernels would misread."""

from __future__ import annotations

import nerfacc
import pytest
import torch

from handnerf.model.kernels import nerfacc_kernels
from tests.nerfacc_standin import NerfaccStandIn, install, pack_info


def test_segmented_sums_and_their_backward_match_loops_over_chunks() -> None:
    gen = torch.Generator().manual_seed(0)
    cnts = torch.tensor([3, 0, 5, 1, 4])
    starts = torch.cumsum(cnts, 0) - cnts
    x = torch.rand(int(cnts.sum()), generator=gen)
    standin = NerfaccStandIn()
    excl = standin.exclusive_sum(starts, cnts, x, False, False)
    incl = standin.inclusive_sum(starts, cnts, x, False, False)
    excl_back = standin.exclusive_sum(starts, cnts, x, False, True)
    incl_back = standin.inclusive_sum(starts, cnts, x, False, True)
    for s, c in zip(starts.tolist(), cnts.tolist(), strict=True):
        chunk = x[s : s + c].double()
        for j in range(c):
            assert float(excl[s + j]) == pytest.approx(float(chunk[:j].sum()), abs=1e-6)
            assert float(incl[s + j]) == pytest.approx(float(chunk[: j + 1].sum()), abs=1e-6)
            assert float(excl_back[s + j]) == pytest.approx(float(chunk[j + 1 :].sum()), abs=1e-6)
            assert float(incl_back[s + j]) == pytest.approx(float(chunk[j:].sum()), abs=1e-6)
    # Through nerfacc's own autograd wrapper: the gradient of a weighted exclusive sum.
    with install():
        leaf = x.clone().requires_grad_(True)
        w = torch.rand(len(x), generator=gen)
        (nerfacc.exclusive_sum(leaf, torch.stack([starts, cnts], -1)) * w).sum().backward()
        assert leaf.grad is not None
        for s, c in zip(starts.tolist(), cnts.tolist(), strict=True):
            for j in range(c):
                expected = float(w[s + j + 1 : s + c].sum())
                assert float(leaf.grad[s + j]) == pytest.approx(expected, abs=1e-6)


def test_the_kernels_input_contracts_fail_on_the_cpu() -> None:
    standin = NerfaccStandIn()
    cnts = torch.tensor([2, 2])
    starts = torch.tensor([0, 2])
    with pytest.raises(AssertionError, match="float32"):
        standin.exclusive_sum(starts, cnts, torch.rand(4, dtype=torch.float16), False, False)
    with pytest.raises(AssertionError, match="int64"):
        standin.exclusive_sum(starts.int(), cnts, torch.rand(4), False, False)
    with pytest.raises(AssertionError, match="contiguous"):
        standin.exclusive_sum(starts, cnts, torch.rand(8)[::2], False, False)
    o, d = torch.zeros(2, 3), torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    box = torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0, 2.0]])
    with pytest.raises(AssertionError, match="float32"):
        standin.ray_aabb_intersect(o.double(), d, box, 0.0, 1e10, 1e10)
    with pytest.raises(NotImplementedError, match="normalize"):
        standin.exclusive_sum(starts, cnts, torch.rand(4), True, False)
    with pytest.raises(NotImplementedError, match="not stood in"):
        standin.importance_sampling  # noqa: B018
    with pytest.raises(AssertionError, match="sorted"):
        pack_info(torch.tensor([1, 0]))
    with install():
        grid = torch.ones(1, 4, 4, 4, dtype=torch.bool)
        # rays_mask does nothing in nerfacc 0.5.3 without over_allocate: refused here.
        with pytest.raises(AssertionError, match="rays_mask"):
            nerfacc.traverse_grids(o, d, grid, box, rays_mask=torch.tensor([True, False]))
        with pytest.raises(AssertionError, match="bool"):
            nerfacc.traverse_grids(o, d, grid.float(), box)


def test_ray_box_hits_and_marching_on_hand_written_rays() -> None:
    with install() as standin:
        assert nerfacc_kernels("cpu")
        o = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
        d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        box = torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0, 2.0]])
        t_min, t_max, hit = nerfacc.ray_aabb_intersect(o, d, box)
        assert hit[:, 0].tolist() == [True, False, False]  # the third starts past the box
        assert (float(t_min[0, 0]), float(t_max[0, 0])) == (1.0, 2.0)
        # Four cells along z, the second empty: steps of 0.1 from t = 1 whose middles fall
        # in occupied cells; runs of steps share their edges.
        grid = torch.ones(1, 1, 1, 4, dtype=torch.bool)
        grid[0, 0, 0, 1] = False
        near = torch.tensor([1.0, 0.0, 0.0])
        far = torch.tensor([2.0, 0.0, 0.0])
        intervals, samples, _ = nerfacc.traverse_grids(
            o, d, grid, box, near_planes=near, far_planes=far, step_size=0.1
        )
        assert standin.calls["traverse_grids"] == 1
        mids = samples.vals.tolist()
        expected = [1.05, 1.15, 1.55, 1.65, 1.75, 1.85, 1.95]
        assert mids == pytest.approx(expected, abs=1e-6)
        assert samples.ray_indices.tolist() == [0] * 7
        starts = intervals.vals[intervals.is_left]
        ends = intervals.vals[intervals.is_right]
        assert torch.allclose(0.5 * (starts + ends), samples.vals, atol=1e-6)
        assert len(intervals.vals) == 7 + 2, "two runs of steps: 7 samples, 9 edges"
    assert not nerfacc_kernels("cpu"), "the declaration ends with the block"
