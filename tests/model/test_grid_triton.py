"""The fused hash-grid lookup (handnerf.model.grid_triton): on the CPU through Triton's
interpreter (``TRITON_INTERPRET=1``), on CUDA compiled."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

from handnerf.model import grid_kernel, kernels
from handnerf.model.encoding import EncodingConfig, HashGridEncoding
from tests.model.test_encoding import random_encoding

pytest.importorskip("triton")

#: The project default (dense then hashed levels, 2 features), and a grid of 4 features.
CONFIGS = {
    "default": EncodingConfig(backend="torch"),
    "four features": EncodingConfig(n_levels=5, n_features_per_level=4, backend="torch"),
}


def random_grid(cfg: EncodingConfig) -> HashGridEncoding:
    """O(1) table values, which make index mistakes visible above float noise."""
    return random_encoding(cfg)


@pytest.fixture
def fused(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The encoding's inference takes the fused lookup on the CPU: the kernel decorated in
    Triton's interpreter mode (and decorated again, compiled, afterwards), the numba kernel
    out of the way, and the CUDA-only switch saying yes."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from handnerf.model import grid_triton

    module = importlib.reload(grid_triton)
    monkeypatch.setattr(grid_kernel, "available", lambda: False)
    monkeypatch.setattr(kernels, "grid_triton_enabled", lambda device: True)
    yield module
    monkeypatch.undo()
    importlib.reload(grid_triton)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_lookup_equals_the_torch_backend(
    name: str, fused: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = random_grid(CONFIGS[name])
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(300, 3, generator=generator)
    x[:4] = torch.tensor([0.0, 1.0, 0.5, 1 - 1e-7])[:, None]  # the cube's edges and centre
    expected = enc(x).detach()  # parameters want a gradient: the torch backend
    calls = []
    lookup = fused.grid_lookup
    monkeypatch.setattr(fused, "grid_lookup", lambda *a: calls.append(1) or lookup(*a))
    with torch.no_grad():
        first = enc(x)  # checked against the torch backend's first points
        second = enc(x)  # trusted from then on
    assert len(calls) == 2
    torch.testing.assert_close(first, expected, atol=2e-6, rtol=0)
    assert torch.equal(second, first)


def test_a_fused_lookup_that_disagrees_is_dropped_with_a_warning(
    fused: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = random_grid(CONFIGS["default"])
    x = torch.rand(64, 3)
    expected = enc(x).detach()
    monkeypatch.setattr(fused, "grid_lookup", lambda x, *a: torch.zeros(len(x), 32))
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="hash-grid kernel is unusable"):
        assert torch.equal(enc(x), expected)  # the torch backend's features
    calls = []
    monkeypatch.setattr(fused, "grid_lookup", lambda *a: calls.append(1))
    with torch.no_grad():
        assert torch.equal(enc(x), expected)
    assert calls == []  # not tried again


def test_the_fused_lookup_is_for_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not kernels.grid_triton_enabled("cpu")
    monkeypatch.setenv(kernels.GRID_KERNEL_ENV, "0")
    assert not kernels.grid_triton_enabled("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_inference_takes_the_fused_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    from handnerf.model import grid_triton

    calls = []
    lookup = grid_triton.grid_lookup
    monkeypatch.setattr(grid_triton, "grid_lookup", lambda *a: calls.append(1) or lookup(*a))
    enc = random_grid(CONFIGS["default"]).cuda()
    x = torch.rand(100_000, 3, device="cuda")
    expected = enc(x).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernel must build and agree: no fallback
        with torch.no_grad():
            got = enc(x)
    assert calls == [1]
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)
