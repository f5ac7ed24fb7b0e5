"""LPIPS that never downloads and never scores with a random backbone.

``lpips`` 0.1.4 ships only its linear heads; the AlexNet / VGG16 backbones are
torchvision's ImageNet weights, fetched into ``$TORCH_HOME/hub/checkpoints`` on first
use. This toolkit must run with no network, so :class:`PerceptualMetric`:

1. uses standard LPIPS (``lpips.LPIPS(pretrained=True, pnet_rand=False)``) only when the
   torchvision checkpoint is already in torch's hub cache, checked *before* anything is
   constructed, and with downloads disabled while it is (a missing file fails at once
   instead of hanging on a socket);
2. otherwise falls back to ST-LPIPS (``stlpips-pytorch``, Ghildyal & Liu, ECCV 2022),
   whose wheel ships the whole network (backbone and linear heads) for AlexNet and
   VGG16. The packaged state dict is loaded strictly: every parameter of the network
   must come from the file, so a random backbone cannot slip through.

The network actually used is always named in :attr:`PerceptualMetric.net_name`
(``"lpips-alex"``, ``"lpips-vgg"`` or ``"stlpips-alex (fallback: ...)"``); ST-LPIPS
scores are close to but not the same as LPIPS and must never be reported as LPIPS.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from handnerf.errors import HandnerfError, ParameterError

# File names of torchvision's ImageNet weights (torchvision/models/alexnet.py and vgg.py:
# AlexNet_Weights.IMAGENET1K_V1 and VGG16_Weights.IMAGENET1K_V1), the files lpips loads.
TORCHVISION_CHECKPOINTS: dict[str, str] = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
}
_NET_ALIASES = {
    "alex": "alex",
    "lpips-alex": "alex",
    "alexnet": "alex",
    "vgg": "vgg",
    "vgg16": "vgg",
    "lpips-vgg": "vgg",
}
# Both backbones need inputs large enough to survive their five downsamplings.
MIN_SIDE = 32


class PerceptualUnavailableError(HandnerfError):
    """No perceptual network can be built offline (or the standard one was required)."""


class _DownloadBlockedError(RuntimeError):
    pass


def _refuse_download(url: str, *args: Any, **kwargs: Any) -> None:
    raise _DownloadBlockedError(f"download of {url} blocked: handnerf never downloads weights")


@contextlib.contextmanager
def _downloads_blocked() -> Iterator[None]:
    """Make any torch.hub download (what torchvision's weights use) fail immediately."""
    import torch.hub

    original = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = _refuse_download
    try:
        yield
    finally:
        torch.hub.download_url_to_file = original


def canonical_net(net: str) -> str:
    """``"alex"`` or ``"vgg"`` for any accepted spelling (``"lpips-alex"``, ``"vgg16"``...)."""
    try:
        return _NET_ALIASES[net.lower()]
    except (KeyError, AttributeError):
        raise ParameterError(
            f"perceptual net: unknown network {net!r}; choose one of: "
            "lpips-alex, lpips-vgg (or alex, vgg)"
        ) from None


def backbone_checkpoint(net: str) -> Path:
    """Where torchvision keeps (or would download) the ImageNet backbone of ``net``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_CHECKPOINTS[canonical_net(net)]


def standard_weights_available(net: str) -> bool:
    """Whether standard LPIPS-``net`` can be built without a download."""
    return backbone_checkpoint(net).is_file()


def _import_stlpips() -> types.ModuleType:
    """Import ``stlpips_pytorch.stlpips``.

    The 0.0.2 wheel imports ``IPython.embed`` and ``torchsummary.summary`` for debugging
    helpers it never calls on the scoring path, without declaring either dependency.
    Where they are missing, placeholder modules stand in during the import only.
    """
    placeholders: dict[str, types.ModuleType] = {}
    for module_name, attribute in (("IPython", "embed"), ("torchsummary", "summary")):
        if module_name not in sys.modules and importlib.util.find_spec(module_name) is None:
            placeholder = types.ModuleType(module_name)

            def unavailable(*args: Any, _name: str = module_name, **kwargs: Any) -> None:
                raise HandnerfError(f"{_name} is not installed")

            setattr(placeholder, attribute, unavailable)
            placeholders[module_name] = placeholder
    sys.modules.update(placeholders)
    try:
        from stlpips_pytorch import stlpips
    except ImportError as exc:
        raise PerceptualUnavailableError(
            "no perceptual network available offline: torchvision's ImageNet weights are "
            f"not in {Path(torch.hub.get_dir()) / 'checkpoints'} and the fallback package "
            f"stlpips-pytorch cannot be imported ({exc}); install it with "
            "`pip install stlpips-pytorch==0.0.2`"
        ) from exc
    finally:
        for module_name, placeholder in placeholders.items():
            if sys.modules.get(module_name) is placeholder:
                del sys.modules[module_name]
    return stlpips


def stlpips_weights_file(net: str) -> Path:
    """The ST-LPIPS state dict (backbone + linear heads) shipped inside the wheel."""
    stlpips = _import_stlpips()
    return (
        Path(stlpips.__file__).parent
        / "weights"
        / "vST0.0"
        / f"{canonical_net(net)}_shift_tolerant.pth"
    )


def _build_standard(net: str) -> torch.nn.Module:
    try:
        import lpips
    except ImportError as exc:
        raise PerceptualUnavailableError(f"the lpips package cannot be imported: {exc}") from exc
    try:
        with _downloads_blocked(), warnings.catch_warnings():
            # lpips 0.1.4 still passes torchvision's deprecated `pretrained=` argument.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            return lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)
    except _DownloadBlockedError as exc:
        raise PerceptualUnavailableError(
            f"{backbone_checkpoint(net)}: standard LPIPS-{net} tried to download its "
            f"backbone ({exc})"
        ) from None


def _build_fallback(net: str) -> torch.nn.Module:
    stlpips = _import_stlpips()
    weights_file = stlpips_weights_file(net)
    if not weights_file.is_file():
        raise PerceptualUnavailableError(
            f"{weights_file}: ST-LPIPS weights missing from the stlpips-pytorch install"
        )
    with _downloads_blocked():
        # pretrained=False: the library would load its file with strict=False, which
        # silently leaves any parameter it does not find at its random initial value.
        model = stlpips.LPIPS(net=net, variant="shift_tolerant", pretrained=False, verbose=False)
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    parameter_names = {name for name, _ in model.named_parameters()}
    missing_parameters = sorted(set(missing) & parameter_names)
    if missing_parameters or unexpected:
        raise PerceptualUnavailableError(
            f"{weights_file}: does not match the ST-LPIPS-{net} network (missing "
            f"{missing_parameters[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return model


class PerceptualMetric:
    """LPIPS distance between image batches, usable as a metric and as a training loss.

    Args:
        net: ``"lpips-alex"`` / ``"alex"`` or ``"lpips-vgg"`` / ``"vgg"``.
        require_standard: raise :class:`PerceptualUnavailableError` instead of falling
            back to ST-LPIPS when torchvision's weights are not cached.
        device: where the network lives (it follows the inputs' device if they differ).

    Attributes:
        net_name: the network actually used, to be printed next to every score.
        is_standard: True for genuine LPIPS, False for the ST-LPIPS fallback.
    """

    def __init__(
        self,
        net: str = "alex",
        *,
        require_standard: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.net = canonical_net(net)
        checkpoint = backbone_checkpoint(self.net)
        if standard_weights_available(self.net):
            self._model = _build_standard(self.net)
            self.is_standard = True
            self.net_name = f"lpips-{self.net}"
        elif require_standard:
            raise PerceptualUnavailableError(
                f"{checkpoint}: torchvision's ImageNet {self.net} weights are not cached, so "
                f"standard LPIPS-{self.net} cannot be computed offline; copy the file there "
                "(or set TORCH_HOME to a folder holding hub/checkpoints/"
                f"{checkpoint.name}), or allow the ST-LPIPS fallback"
            )
        else:
            self._model = _build_fallback(self.net)
            self.is_standard = False
            self.net_name = f"stlpips-{self.net} (fallback: ST-LPIPS, torchvision weights absent)"
        self._model.eval()
        self._model.requires_grad_(False)
        self._model.to(device)

    @property
    def device(self) -> torch.device:
        """The device the network is on."""
        return next(self._model.parameters()).device

    def to(self, device: str | torch.device) -> PerceptualMetric:
        """Move the network to ``device``; returns self."""
        self._model.to(device)
        return self

    @property
    def module(self) -> torch.nn.Module:
        """The underlying (frozen, eval-mode) network."""
        return self._model

    def __call__(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Perceptual distance per image.

        Args:
            pred: (B, 3, H, W) float tensor in [0, 1]; gradients flow through it.
            gt: (B, 3, H, W) float tensor in [0, 1], same shape as ``pred``.

        Returns:
            (B,) distances (0 for identical images; larger is more different).
        """
        if not isinstance(pred, torch.Tensor) or not isinstance(gt, torch.Tensor):
            raise ParameterError("pred, gt: expected torch tensors of shape (B, 3, H, W)")
        if pred.ndim != 4 or pred.shape[1] != 3 or pred.shape != gt.shape:
            raise ParameterError(
                f"pred, gt: expected two (B, 3, H, W) tensors of one shape, got "
                f"{tuple(pred.shape)} and {tuple(gt.shape)}"
            )
        if min(pred.shape[2:]) < MIN_SIDE:
            raise ParameterError(
                f"pred: {self.net_name} needs images of at least {MIN_SIDE}x{MIN_SIDE} "
                f"pixels, got {pred.shape[2]}x{pred.shape[3]}"
            )
        if self.device != pred.device:
            self._model.to(pred.device)
        gt = gt.to(device=pred.device, dtype=pred.dtype)
        if next(self._model.parameters()).dtype != pred.dtype:
            pred, gt = pred.float(), gt.float()
        # Both libraries take [-1, 1] images; normalize=True maps [0, 1] onto that.
        distance = self._model(pred, gt, normalize=True)
        return distance.reshape(pred.shape[0])

    def score(self, pred: Any, gt: Any) -> float:
        """Distance between two (H, W, 3) float images in [0, 1] (numpy or torch)."""
        from handnerf.evaluation.metrics import to_image_tensor

        pred_t, gt_t = to_image_tensor(pred, "pred"), to_image_tensor(gt, "gt")
        if pred_t.shape != gt_t.shape:
            raise ParameterError(
                f"pred and gt differ in shape: {tuple(pred_t.shape)} vs {tuple(gt_t.shape)}"
            )
        pred_b, gt_b = (
            image.permute(2, 0, 1).unsqueeze(0).float().to(self.device) for image in (pred_t, gt_t)
        )
        with torch.no_grad():
            return float(self(pred_b, gt_b)[0])

    def __repr__(self) -> str:
        return f"PerceptualMetric(net_name={self.net_name!r}, device={self.device})"
