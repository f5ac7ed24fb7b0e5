"""The compiled hash-grid lookup equals the torch backend, and serves inference only."""

from __future__ import annotations

import pytest
import torch

from handnerf.model import grid_kernel
from handnerf.model.encoding import EncodingConfig, HashGridEncoding

pytestmark = pytest.mark.skipif(not grid_kernel.available(), reason="numba is not installed")

# Each with dense levels (resolution^3 fits the table) and hashed ones.
CONFIGS = [
    EncodingConfig(n_levels=6, n_features_per_level=1, log2_hashmap_size=12, base_resolution=4),
    EncodingConfig(n_levels=12, n_features_per_level=2, log2_hashmap_size=17),
    EncodingConfig(n_levels=5, n_features_per_level=4, log2_hashmap_size=14),
    EncodingConfig(n_levels=4, n_features_per_level=8, log2_hashmap_size=10, base_resolution=4),
]


def grid(cfg: EncodingConfig, seed: int = 0) -> HashGridEncoding:
    torch.manual_seed(seed)
    enc = HashGridEncoding(cfg, device="cpu")
    with torch.no_grad():
        enc.params.uniform_(-1.0, 1.0)  # far from the tiny initial values: every bit counts
    return enc


def points(n: int, seed: int = 1) -> torch.Tensor:
    """Points in and around the unit cube (clamped by the encoding), and on cell faces."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=gen) * 1.2 - 0.1
    x[: n // 10] = torch.round(x[: n // 10] * 64) / 64  # exactly on grid lines of many levels
    return x


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"F{c.n_features_per_level}")
def test_kernel_equals_the_torch_backend(
    cfg: EncodingConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = grid(cfg)
    levels = enc.levels
    assert any(lv.dense for lv in levels) and not all(lv.dense for lv in levels)
    x = points(20000)
    with torch.no_grad():
        compiled = enc(x)
        monkeypatch.setenv(grid_kernel.ENV_SWITCH, "0")
        reference = enc(x)
    assert compiled.shape == reference.shape == (len(x), enc.n_output_dims)
    assert compiled.dtype == torch.float32
    # Only the order of the 8-corner sum may differ: a few float32 ulp of values ~1.
    torch.testing.assert_close(compiled, reference, atol=1e-6, rtol=0)
    assert float((compiled - reference).abs().max()) < 1e-6
    assert float(reference.abs().max()) > 0.1  # not a comparison of zeros


def test_forward_takes_the_kernel_for_inference_only(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = grid(CONFIGS[1])
    calls: list[int] = []
    lookup = grid_kernel.grid_lookup

    def counted(x: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(len(x))
        return lookup(x, *args)

    monkeypatch.setattr(grid_kernel, "grid_lookup", counted)
    x = points(500)
    with torch.no_grad():
        enc(x)
    with torch.inference_mode():
        enc(x)
    assert calls == [500, 500]

    # Training: the parameters want a gradient, so the autograd function runs.
    out = enc(x)
    assert calls == [500, 500] and out.requires_grad
    out.sum().backward()
    assert enc.params.grad is not None and float(enc.params.grad.abs().sum()) > 0

    # A gradient for the points only (parameters frozen): the torch backend too.
    enc.params.requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    enc(xg).sum().backward()
    assert calls == [500, 500] and xg.grad is not None

    # Switched off, and the empty batch, never reach it.
    monkeypatch.setenv(grid_kernel.ENV_SWITCH, "0")
    with torch.no_grad():
        enc(x)
    monkeypatch.delenv(grid_kernel.ENV_SWITCH)
    with torch.no_grad():
        assert enc(x[:0]).shape == (0, enc.n_output_dims)
    assert calls == [500, 500]


def test_other_grids_keep_the_torch_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-D grid and float64 parameters are the torch backend's alone."""
    monkeypatch.setattr(grid_kernel, "grid_lookup", None)  # any call would fail
    plane = HashGridEncoding(EncodingConfig(n_levels=4), n_input_dims=2)
    with torch.no_grad():
        assert plane(torch.rand(10, 2)).shape == (10, 8)
    double = grid(CONFIGS[0]).double()
    with torch.no_grad():
        assert double(torch.rand(10, 3, dtype=torch.float64)).dtype == torch.float64


def test_grid_lookup_refuses_points_of_another_dimension() -> None:
    enc = grid(CONFIGS[1])
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        grid_kernel.grid_lookup(torch.rand(4, 2), enc.params, *([None] * 6), 0)  # type: ignore[arg-type]
