"""Offline-safe LPIPS: labelling, the no-download guarantee and the ST-LPIPS fallback."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import torch

from handnerf.errors import ParameterError
from handnerf.evaluation import perceptual
from handnerf.evaluation.perceptual import (
    TORCHVISION_CHECKPOINTS,
    PerceptualMetric,
    PerceptualUnavailableError,
    backbone_checkpoint,
    standard_weights_available,
    stlpips_weights_file,
)

pytest.importorskip("stlpips_pytorch")


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch home with no cached weights: the machine state of a fresh offline install."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def fallback_alex() -> PerceptualMetric:
    """The ST-LPIPS fallback, built once for the tests that only score with it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(perceptual, "standard_weights_available", lambda net: False)
        return PerceptualMetric("lpips-alex")


def _structured_batch(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.5 + 0.4 * torch.sin(9 * xs), 0.5 + 0.4 * torch.cos(7 * ys), xs * ys])
    jitter = 0.1 * torch.rand(batch, 3, 1, 1, generator=generator)
    return (base.unsqueeze(0) * (0.9 - jitter) + jitter).clamp(0, 1)


def test_checkpoint_names_match_torchvision() -> None:
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    assert AlexNet_Weights.IMAGENET1K_V1.url.endswith("/" + TORCHVISION_CHECKPOINTS["alex"])
    assert VGG16_Weights.IMAGENET1K_V1.url.endswith("/" + TORCHVISION_CHECKPOINTS["vgg"])


def test_checkpoint_path_follows_torch_home(empty_torch_home: Path) -> None:
    expected = empty_torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert backbone_checkpoint("lpips-vgg") == expected
    assert not standard_weights_available("vgg")
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"")
    assert standard_weights_available("vgg16")


def test_weights_absent_gives_labelled_fallback(empty_torch_home: Path) -> None:
    metric = PerceptualMetric("lpips-alex")
    assert not metric.is_standard
    assert metric.net_name == "stlpips-alex (fallback: ST-LPIPS, torchvision weights absent)"
    # Nothing was fetched into the cache.
    assert not any(empty_torch_home.rglob("*.pth"))


def test_require_standard_refuses_to_fall_back(empty_torch_home: Path) -> None:
    with pytest.raises(PerceptualUnavailableError, match=r"alexnet-owt-7be5be79\.pth"):
        PerceptualMetric("alex", require_standard=True)


def test_a_download_attempt_fails_fast(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The existence check is fooled: lpips would now reach for the network.
    monkeypatch.setattr(perceptual, "standard_weights_available", lambda net: True)
    start = time.perf_counter()
    with pytest.raises(PerceptualUnavailableError, match="download"):
        PerceptualMetric("alex")
    assert time.perf_counter() - start < 30.0


def test_cached_weights_give_standard_lpips_with_those_weights(
    empty_torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lpips
    from torchvision.models import alexnet

    # A stand-in for torchvision's file (same format and keys, our own values): if the
    # metric scores with it, it loaded the cache and not a random backbone.
    torch.manual_seed(0)
    cached = alexnet(weights=None).state_dict()
    path = backbone_checkpoint("alex")
    path.parent.mkdir(parents=True)
    torch.save(cached, path)

    calls: list[dict] = []
    original = lpips.LPIPS

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(lpips, "LPIPS", spy)
    metric = PerceptualMetric("lpips-alex")
    assert metric.is_standard and metric.net_name == "lpips-alex"
    assert calls == [{"net": "alex", "pretrained": True, "pnet_rand": False, "verbose": False}]
    first_conv = metric.module.net.slice1[0].weight
    assert torch.equal(first_conv, cached["features.0.weight"])
    last_conv = metric.module.net.slice5[-2].weight  # features.10 (conv5)
    assert torch.equal(last_conv, cached["features.10.weight"])


def test_no_code_path_asks_for_a_random_backbone() -> None:
    source = Path(perceptual.__file__).read_text()
    assert "pnet_rand=True" not in source
    assert "pnet_rand=False" in source


def test_fallback_backbone_equals_the_packaged_weights(fallback_alex: PerceptualMetric) -> None:
    packaged = torch.load(stlpips_weights_file("alex"), map_location="cpu", weights_only=True)
    parameters = dict(fallback_alex.module.named_parameters())
    backbone = [name for name in parameters if name.startswith("net.")]
    assert len(backbone) >= 10  # 5 convolutions, weight and bias
    for name, value in parameters.items():
        assert torch.equal(value.detach().cpu(), packaged[name]), name


def test_fallback_rejects_weights_missing_a_backbone_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged = torch.load(stlpips_weights_file("alex"), map_location="cpu", weights_only=True)
    broken = {name: value for name, value in packaged.items() if "slice1" not in name}
    broken_file = tmp_path / "alex_shift_tolerant.pth"
    torch.save(broken, broken_file)
    monkeypatch.setattr(perceptual, "standard_weights_available", lambda net: False)
    monkeypatch.setattr(perceptual, "stlpips_weights_file", lambda net: broken_file)
    with pytest.raises(PerceptualUnavailableError, match="missing"):
        PerceptualMetric("alex")


def test_fallback_is_zero_for_identical_images_and_grows_with_distortion(
    fallback_alex: PerceptualMetric,
) -> None:
    gt = _structured_batch()
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(gt.shape, generator=generator)
    with torch.no_grad():
        assert fallback_alex(gt, gt).abs().max() < 1e-6
        distances = [
            fallback_alex((gt + level * noise).clamp(0, 1), gt) for level in (0.02, 0.08, 0.3)
        ]
    for smaller, larger in itertools.pairwise(distances):
        assert (larger > smaller).all()
    assert distances[0].shape == (2,)


def test_fallback_works_as_a_training_loss(fallback_alex: PerceptualMetric) -> None:
    gt = _structured_batch(batch=1, seed=2)
    pred = (gt + 0.1).clamp(0, 1).requires_grad_(True)
    loss = fallback_alex(pred, gt).sum()
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in fallback_alex.module.parameters())


def test_score_of_hwc_images_matches_the_batched_call(fallback_alex: PerceptualMetric) -> None:
    gt = _structured_batch(batch=1, seed=3)
    pred = (gt * 0.8).clamp(0, 1)
    with torch.no_grad():
        batched = float(fallback_alex(pred, gt)[0])
    single = fallback_alex.score(pred[0].permute(1, 2, 0).numpy(), gt[0].permute(1, 2, 0))
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
    fallback_alex: PerceptualMetric, shape_pred: tuple, shape_gt: tuple, fragment: str
) -> None:
    with pytest.raises(ParameterError) as caught:
        fallback_alex(torch.zeros(shape_pred), torch.zeros(shape_gt))
    assert fragment in str(caught.value)


def test_unknown_network_is_rejected() -> None:
    with pytest.raises(ParameterError, match="lpips-alex"):
        PerceptualMetric("squeeze")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fallback_on_cuda_matches_cpu(fallback_alex: PerceptualMetric) -> None:
    gt = _structured_batch()
    pred = (gt * 0.7 + 0.1).clamp(0, 1)
    with torch.no_grad():
        on_cpu = fallback_alex.to("cpu")(pred, gt)
        on_cuda = fallback_alex(pred.cuda(), gt.cuda())
    fallback_alex.to("cpu")
    assert on_cuda.device.type == "cuda"
    assert torch.allclose(on_cuda.cpu(), on_cpu, rtol=1e-3, atol=1e-5)
