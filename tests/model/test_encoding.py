"""Tests of the tiny-cuda-nn-compatible hash-grid encoding."""

from __future__ import annotations

import importlib
import math
import sys
import types

import numpy as np
import pytest
import torch

from handnerf.errors import ConfigError, ParameterError
from handnerf.model.encoding import (
    EncodingConfig,
    HashGridEncoding,
    make_hash_grid,
    select_backend,
    tcnn_available,
)
from handnerf.model.field import FieldConfig, HashGridField
from handnerf.model.grid_tables import grid_levels

Config = EncodingConfig

# The coherent prime hash's primes, dimension 0 first (tiny-cuda-nn common_device.h).
PRIMES = (1, 2654435761, 805459861, 3674653429)


def reference_levels(cfg: EncodingConfig, dims: int) -> list[tuple[float, int, int, int]]:
    """(scale, resolution, table entries, entry offset) per level, from tcnn's formulas."""
    f32 = np.float32
    out = []
    offset = 0
    for level in range(cfg.n_levels):
        log2_scale = f32(math.log2(f32(cfg.per_level_scale)))
        scale = f32(f32(2.0 ** float(f32(level) * log2_scale)) * f32(cfg.base_resolution)) - f32(1)
        resolution = math.ceil(float(scale)) + 1
        entries = min(-(-(resolution**dims) // 8) * 8, 2**cfg.log2_hashmap_size)
        out.append((float(scale), resolution, entries, offset))
        offset += entries
    return out


def reference_encode(x: np.ndarray, params: np.ndarray, cfg: EncodingConfig) -> np.ndarray:
    """Slow, loop-per-level-and-corner encoding straight from tiny-cuda-nn's kernel."""
    n, dims = x.shape
    feats = cfg.n_features_per_level
    table = params.reshape(-1, feats).astype(np.float64)
    out = np.zeros((n, cfg.n_levels * feats))
    for level, (scale, res, entries, offset) in enumerate(reference_levels(cfg, dims)):
        pos = (x.astype(np.float64) * scale + 0.5).astype(np.float32)
        cell = np.floor(pos)
        frac = (pos - cell).astype(np.float64)
        cell = cell.astype(np.uint64)
        for corner in range(2**dims):
            weight = np.ones(n)
            coords = []
            for d in range(dims):
                bit = (corner >> d) & 1
                weight *= frac[:, d] if bit else 1 - frac[:, d]
                coords.append(cell[:, d] + np.uint64(bit))
            if res**dims <= entries:
                index = np.zeros(n, dtype=np.uint64)
                for d in range(dims):
                    index += coords[d] * np.uint64(res**d)
            else:
                index = np.zeros(n, dtype=np.uint64)
                for d in range(dims):
                    index ^= (coords[d] * np.uint64(PRIMES[d])) & np.uint64(0xFFFFFFFF)
            index = (index & np.uint64(0xFFFFFFFF)) % np.uint64(entries)
            rows = offset + index.astype(np.int64)
            out[:, level * feats : (level + 1) * feats] += weight[:, None] * table[rows]
    return out


def random_encoding(cfg: EncodingConfig, dims: int = 3, seed: int = 0) -> HashGridEncoding:
    torch.manual_seed(seed)
    enc = make_hash_grid(cfg, n_input_dims=dims)
    with torch.no_grad():  # O(1) values make index mistakes visible above float noise
        enc.params.uniform_(-1.0, 1.0)
    return enc


@pytest.mark.parametrize(
    ("cfg", "dims"),
    [
        # Every level fits densely (resolutions 4, 7, 13 -> 13^3 = 2197 <= 2^12).
        (
            Config(
                n_levels=3,
                log2_hashmap_size=12,
                base_resolution=4,
                per_level_scale=2.0,
                backend="torch",
            ),
            3,
        ),
        # Two dense levels then hashed ones (2^10-entry tables), 4 features per level.
        (
            Config(
                n_levels=5,
                n_features_per_level=4,
                log2_hashmap_size=10,
                base_resolution=6,
                per_level_scale=1.7,
                backend="torch",
            ),
            3,
        ),
        # The project default (5 dense + 11 hashed levels).
        (Config(backend="torch"), 3),
        # A 2-D grid.
        (
            Config(
                n_levels=4,
                log2_hashmap_size=8,
                base_resolution=8,
                per_level_scale=2.0,
                backend="torch",
            ),
            2,
        ),
    ],
)
def test_matches_reference(cfg: EncodingConfig, dims: int) -> None:
    enc = random_encoding(cfg, dims)
    levels = reference_levels(cfg, dims)
    dense = [res**dims <= entries for _, res, entries, _ in levels]
    assert [lv.dense for lv in enc.levels] == dense
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3000, dims, generator=gen)
    x[:4] = torch.tensor([0.0, 1.0, 0.5, 1 - 1e-7])[:, None]  # the cube's edges and centre
    out = enc(x)
    assert out.shape == (3000, cfg.n_levels * cfg.n_features_per_level)
    assert out.dtype == torch.float32
    expected = reference_encode(x.numpy(), enc.params.detach().numpy(), cfg)
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=2e-6, rtol=0)


def test_levels_of_default_config() -> None:
    # scale_l = 16 * 1.4**l - 1 -> 15, 21.4, 30.36, 42.90, 60.47, 85.06; resolution = ceil + 1.
    levels = grid_levels(16, 19, 16, 1.4, 3)
    assert [lv.resolution for lv in levels[:6]] == [16, 23, 32, 44, 62, 87]
    # 62**3 = 238328 fits 2**19 entries (dense); 87**3 = 658503 does not (hashed).
    assert [lv.dense for lv in levels] == [True] * 5 + [False] * 11
    entries = [min(-(-(lv.resolution**3) // 8) * 8, 2**19) for lv in levels]
    assert [lv.n_entries for lv in levels] == entries
    assert [lv.offset for lv in levels] == list(np.cumsum([0, *entries[:-1]]))
    enc = HashGridEncoding(Config(backend="torch"))
    assert (
        enc.n_params == sum(entries) * 2 == (4096 + 12168 + 32768 + 85184 + 238328 + 11 * 2**19) * 2
    )
    assert enc.params.shape == (enc.n_params,)
    assert enc.n_output_dims == 32
    assert enc.params.abs().max() <= 1e-4


def test_one_point_by_hand() -> None:
    # 2 levels, base 2, scale 2, 2^5-entry tables:
    #  level 0: scale 1, resolution 2, 2^3 = 8 entries (dense), entry offset 0;
    #  level 1: scale 3, resolution 4, 4^3 = 64 > 32 -> hashed, 32 entries at offset 8.
    cfg = Config(
        n_levels=2,
        n_features_per_level=2,
        log2_hashmap_size=5,
        base_resolution=2,
        per_level_scale=2.0,
        backend="torch",
    )
    enc = make_hash_grid(cfg)
    assert enc.n_params == (8 + 32) * 2
    with torch.no_grad():  # value of (entry r, feature f) = 2 r + f
        enc.params.copy_(torch.arange(enc.n_params, dtype=torch.float32))
    x = torch.tensor([[0.25, 0.5, 0.75]])
    # Level 0: pos = x + 0.5 = (0.75, 1.0, 1.25), cell (0, 1, 1), frac (0.75, 0, 0.25).
    # Corners with weight != 0 have b_y = 0; dense index cx + 2 cy + 4 cz, then % 8:
    #   (0,1,1) -> 6,  w = 0.25 * 0.75 = 0.1875     (1,1,1) -> 7,  w = 0.75 * 0.75 = 0.5625
    #   (0,1,2) -> 10 % 8 = 2, w = 0.25 * 0.25      (1,1,2) -> 11 % 8 = 3, w = 0.75 * 0.25
    # sum w * r = 1.125 + 3.9375 + 0.125 + 0.5625 = 5.75 -> features (11.5, 12.5).
    # Level 1: pos = 3 x + 0.5 = (1.25, 2.0, 2.75), cell (1, 2, 2), frac (0.25, 0, 0.75).
    # Only the low 5 bits of the hash matter: 2654435761 % 32 = 17, 805459861 % 32 = 21, so
    # index = cx ^ (17 cy % 32) ^ (21 cz % 32):
    #   (1,2,2) -> 1 ^ 2 ^ 10 = 9,   w = 0.75 * 0.25 = 0.1875  -> entry 8 + 9  = 17
    #   (2,2,2) -> 2 ^ 2 ^ 10 = 10,  w = 0.25 * 0.25 = 0.0625  -> entry 18
    #   (1,2,3) -> 1 ^ 2 ^ 31 = 28,  w = 0.75 * 0.75 = 0.5625  -> entry 36
    #   (2,2,3) -> 2 ^ 2 ^ 31 = 31,  w = 0.25 * 0.75 = 0.1875  -> entry 39
    # sum w * r = 3.1875 + 1.125 + 20.25 + 7.3125 = 31.875 -> features (63.75, 64.75).
    out = enc(x)
    np.testing.assert_allclose(out.detach().numpy(), [[11.5, 12.5, 63.75, 64.75]], rtol=1e-6)


def test_gradcheck_float64() -> None:
    cfg = Config(
        n_levels=3,
        n_features_per_level=2,
        log2_hashmap_size=6,
        base_resolution=2,
        per_level_scale=1.6,
        backend="torch",
    )
    enc = random_encoding(cfg).double()
    assert not enc.levels[-1].dense
    gen = torch.Generator().manual_seed(3)
    x = (0.05 + 0.9 * torch.rand(7, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda pts, p: enc_call(enc, pts, p), (x, enc.params))


def enc_call(enc: HashGridEncoding, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    assert params is enc.params
    return enc(x)


def test_float32_gradients_match_reference() -> None:
    cfg = Config(
        n_levels=4, log2_hashmap_size=9, base_resolution=4, per_level_scale=1.8, backend="torch"
    )
    enc = random_encoding(cfg)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(500, 3, generator=gen)
    upstream = torch.randn(500, enc.n_output_dims, generator=gen)
    (enc(x) * upstream).sum().backward()
    # The encoding is linear in the parameters: d<out, g>/d params = J^T g, and column k of J
    # is the reference encoding of a unit table (params = e_k); summing over a basis of
    # feature-0/feature-1 "indicator" tables is too slow, so probe with random tables.
    for seed in range(3):
        probe = np.random.default_rng(seed).standard_normal(enc.n_params)
        directional = reference_encode(x.numpy(), probe, cfg)
        expected = float((directional * upstream.numpy()).sum())
        got = float((enc.params.grad.double().numpy() * probe).sum())
        assert got == pytest.approx(expected, rel=1e-4)


def test_all_levels_at_once_equals_one_level_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA layout of the torch grid (one gather and one scatter for all levels, as
    launches bound the GPU) computes what the CPU's level-at-a-time loop does."""
    from handnerf.model import grid_tables

    cfg = Config(backend="torch")  # the project default: dense and hashed levels
    gen = torch.Generator().manual_seed(6)
    x = torch.rand(2000, 3, generator=gen)
    upstream = torch.randn(2000, cfg.n_levels * cfg.n_features_per_level, generator=gen)
    results = {}
    for at_once in (False, True):
        monkeypatch.setattr(grid_tables, "gather_levels_at_once", lambda device, v=at_once: v)
        enc = random_encoding(cfg)
        out = enc(x)
        (out * upstream).sum().backward()
        assert enc.params.grad is not None
        results[at_once] = (out.detach(), enc.params.grad.clone())
    assert torch.equal(results[True][0], results[False][0])
    assert torch.equal(results[True][1], results[False][1])
    monkeypatch.undo()
    assert not grid_tables.gather_levels_at_once(torch.device("cpu"))


def test_state_dict_round_trip() -> None:
    cfg = Config(n_levels=4, log2_hashmap_size=10, base_resolution=4, backend="torch")
    trained = random_encoding(cfg, seed=5)
    state = trained.state_dict()
    assert list(state) == ["params"]
    fresh = make_hash_grid(cfg)
    assert not torch.equal(fresh.params, trained.params)
    fresh.load_state_dict(state)
    x = torch.rand(100, 3)
    assert torch.equal(fresh(x), trained(x))
    other = make_hash_grid(Config(n_levels=5, log2_hashmap_size=10, base_resolution=4))
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict(state)


def test_inputs_are_clamped_and_validated() -> None:
    enc = random_encoding(Config(n_levels=3, log2_hashmap_size=8, backend="torch"))
    inside = torch.tensor([[0.0, 1.0, 0.3]])
    outside = torch.tensor([[-0.5, 1.7, 0.3]])
    assert torch.equal(enc(outside), enc(inside))
    assert enc(torch.zeros(0, 3)).shape == (0, 6)
    with pytest.raises(ParameterError, match=r"\(N, 3\)"):
        enc(torch.rand(4, 2))
    with pytest.raises(ParameterError, match="floating point"):
        enc(torch.ones(4, 3, dtype=torch.int64))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_levels", 0),
        ("n_features_per_level", 3),
        ("log2_hashmap_size", 40),
        ("base_resolution", 0),
        ("per_level_scale", 0.5),
        ("backend", "cuda"),
    ],
)
def test_bad_config_names_field(field: str, value: object) -> None:
    cfg = Config(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=field):
        make_hash_grid(cfg)


def test_encoding_config_for_tcnn() -> None:
    enc = make_hash_grid(Config(n_levels=8, per_level_scale=1.5, backend="torch"))
    conf = enc.encoding_config()
    assert conf["otype"] == "HashGrid"
    assert conf["n_levels"] == 8
    assert conf["n_features_per_level"] == 2
    assert conf["log2_hashmap_size"] == 19
    assert conf["base_resolution"] == 16
    assert conf["per_level_scale"] == 1.5
    assert conf["interpolation"] == "Linear"


@pytest.mark.skipif(tcnn_available(), reason="tinycudann is usable here")
def test_auto_backend_is_torch_without_tcnn() -> None:
    enc = make_hash_grid(Config(n_levels=2, log2_hashmap_size=8, backend="auto"))
    assert enc.backend_name == "torch"


@pytest.mark.skipif(tcnn_available(), reason="tinycudann is usable here")
def test_tcnn_backend_without_tinycudann_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="tcnn"):
        make_hash_grid(Config(backend="tcnn"))
    # With CUDA present but tinycudann missing, the message says how to install it.
    real_import = importlib.import_module

    def fake_import(name: str, *args: object) -> object:
        if name == "tinycudann":
            raise ImportError("No module named 'tinycudann'")
        return real_import(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(ConfigError, match="tinycudann cannot be imported"):
        make_hash_grid(Config(backend="tcnn"), device="cuda")
    assert make_hash_grid(Config(n_levels=2, backend="auto"), device="cuda").backend_name == "torch"


def fake_tinycudann(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make this CPU machine look like one with CUDA and an importable tinycudann (whose
    Encoding records its construction); returns the record."""
    made: list[str] = []

    class Encoding:
        def __init__(self, n_input_dims: int, config: dict) -> None:
            made.append(config["otype"])

    module = types.ModuleType("tinycudann")
    module.Encoding = Encoding  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tinycudann", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return made


def test_auto_backend_follows_the_target_device_not_the_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a GPU machine with tinycudann, a grid for the CPU (train.device=cpu) must be the
    torch one: a tcnn grid would hand CPU pointers to CUDA kernels."""
    made = fake_tinycudann(monkeypatch)
    assert tcnn_available()
    assert select_backend("auto", "cuda") == "tcnn"
    assert select_backend("auto", "cuda:1") == "tcnn"
    assert select_backend("auto", "cpu") == "torch"
    enc = make_hash_grid(Config(n_levels=2, log2_hashmap_size=8, backend="auto"), device="cpu")
    assert enc.backend_name == "torch" and made == []
    with pytest.raises(ConfigError, match=r"'tcnn' but the model runs on cpu"):
        make_hash_grid(Config(n_levels=2, backend="tcnn"), device="cpu")
    # The whole field made for the CPU, as a CPU fit makes it, gets the torch grid.
    field = HashGridField(
        FieldConfig(encoding=Config(n_levels=2, log2_hashmap_size=8)), device="cpu"
    )
    assert field.encoding.backend_name == "torch"
    assert field(
        torch.rand(5, 3) * 0.1, torch.eye(3).expand(5, 3, 3), torch.rand(5, 3), torch.rand(5, 3)
    )[0].shape == (5,)


def test_tcnn_grid_refuses_cpu_inputs_with_a_clear_error() -> None:
    enc = make_hash_grid(Config(n_levels=2, log2_hashmap_size=8, backend="torch"))
    enc.backend_name = "tcnn"  # as a tcnn grid moved to the CPU would be
    with pytest.raises(ParameterError, match="tcnn backend runs on CUDA only"):
        enc(torch.rand(4, 3))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_backend_on_cuda_matches_cpu() -> None:
    enc = random_encoding(Config(backend="torch"))
    x = torch.rand(4096, 3)
    expected = enc(x)
    got = enc.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tcnn_matches_torch() -> None:
    pytest.importorskip("tinycudann")
    cfg_t = Config(backend="tcnn")
    enc_t = make_hash_grid(cfg_t, device="cuda").cuda()
    assert enc_t.backend_name == "tcnn"
    enc_p = random_encoding(Config(backend="torch")).cuda()
    enc_t.load_state_dict(enc_p.state_dict())
    x = torch.rand(20000, 3, device="cuda")
    out_t = enc_t(x)
    assert out_t.dtype == torch.float32
    # tcnn computes in float16 by default: compare with a half-precision tolerance.
    torch.testing.assert_close(out_t, enc_p(x), atol=5e-3, rtol=5e-3)
    # Gradients land on the same parameter entries.
    upstream = torch.randn_like(out_t)
    (enc_t(x) * upstream).sum().backward()
    (enc_p(x) * upstream).sum().backward()
    torch.testing.assert_close(enc_t.params.grad, enc_p.params.grad, atol=5e-2, rtol=5e-2)
