"""Multiresolution hash-grid encoding (Instant-NGP), compatible with tiny-cuda-nn.

:class:`HashGridEncoding` maps points ``x`` of shape ``(N, D)`` in ``[0, 1]^D`` to features
of shape ``(N, n_levels * n_features_per_level)`` (float32, level 0 first). Two backends
share one flat parameter vector ``params`` with tiny-cuda-nn's layout, so a state dict
trained with one loads into the other:

* ``"torch"``: a pure-PyTorch twin of tiny-cuda-nn's ``GridEncodingTemplated`` (hash grid,
  linear interpolation, ``CoherentPrime`` hash), vectorised over levels and corners, with a
  custom autograd function whose backward scatters into the flat gradient with
  ``index_add_``. It runs on CPU and GPU.
* ``"tcnn"``: ``tinycudann.Encoding`` (CUDA only, imported lazily, never required).

On the CPU, inference (nothing to differentiate) of the torch backend runs the same lookup
compiled with numba (:mod:`handnerf.model.grid_kernel`, equal to a few float32 ulp).

``"auto"`` picks ``tcnn`` when the encoding is made for a CUDA device and ``tinycudann``
imports there, else ``torch``: the choice follows the device the model will run on, not
whether the machine has a GPU (a CPU fit on a GPU machine must not get a CUDA-only grid).

The grid's geometry (tiny-cuda-nn's scheme, and what of it was verified against its source)
and the torch backend's lookup live in :mod:`handnerf.model.grid_tables`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from handnerf.config import choice
from handnerf.errors import ConfigError, ParameterError
from handnerf.model import kernels
from handnerf.model.grid_tables import GridFunction, GridTables, grid_levels

BACKENDS = ("auto", "torch", "tcnn")

_MAX_N_LEVELS = 128  # multi_level_interface.h MAX_N_LEVELS
_TCNN_FEATURES_PER_LEVEL = (1, 2, 4, 8)
_TCNN_INPUT_DIMS = (2, 3, 4)


@dataclass
class EncodingConfig:
    """Settings of :class:`HashGridEncoding`."""

    #: Grid levels, coarse to fine (the output has n_levels * n_features_per_level numbers).
    n_levels: int = 16
    #: Features stored per table entry (tcnn supports 1, 2, 4 and 8).
    n_features_per_level: int = 2
    #: log2 of the entries per hashed level; levels with fewer cells are dense, not hashed.
    log2_hashmap_size: int = 19
    #: Cells per axis of the coarsest level over the unit cube.
    base_resolution: int = 16
    # Growth of the resolution per level; 1.4 spans 16 .. ~2500 over 16 levels. Unlike
    # 1.5 (16 * 1.5**l is a whole number for l <= 4), 16 * 1.4**l is never whole, so
    # tcnn's fast-math exp2f cannot round a level's resolution differently from ours
    # and tcnn checkpoints keep the same table layout as the torch grid.
    per_level_scale: float = 1.4
    #: Which implementation: tiny-cuda-nn where it can run, else the PyTorch twin.
    backend: str = choice("auto", ("auto", "torch", "tcnn"))


class HashGridEncoding(nn.Module):
    """tiny-cuda-nn-compatible multiresolution hash grid (torch twin + lazy ``tcnn``).

    ``forward(x)``: ``x`` (N, D) in [0, 1]^D (clamped) -> (N, n_levels * F) float32.
    The single parameter ``params`` (``n_params``,) has ``tcnn.Encoding(...).params``'s
    layout, so state dicts move between backends.
    """

    def __init__(
        self,
        cfg: EncodingConfig | None = None,
        n_input_dims: int = 3,
        device: torch.device | str = "cpu",
    ) -> None:
        """``device``: where the encoding will run (it decides ``backend="auto"``; a
        ``tcnn`` grid is made on that CUDA device). The parameters start on the CPU like
        any module's; move the module there with ``.to(device)``."""
        super().__init__()
        cfg = cfg if cfg is not None else EncodingConfig()
        _validate(cfg, n_input_dims)
        self.cfg = cfg
        self.n_input_dims = n_input_dims
        self.levels = grid_levels(
            cfg.n_levels,
            cfg.log2_hashmap_size,
            cfg.base_resolution,
            cfg.per_level_scale,
            n_input_dims,
        )
        self.n_params = (self.levels[-1].offset + self.levels[-1].n_entries) * (
            cfg.n_features_per_level
        )
        self.n_output_dims = cfg.n_levels * cfg.n_features_per_level
        device = torch.device(device)
        self.backend_name = select_backend(cfg.backend, device)
        self._tables: GridTables | None = None
        #: Whether the fused CUDA lookup's first call agreed with the torch backend (None:
        #: not tried yet).
        self._fused_agrees: bool | None = None
        # Kept out of nn.Module's registry so the state dict key is "params" for both
        # backends; forward hands it our Parameter.
        self._tcnn_module: list[Any] = []
        if self.backend_name == "tcnn":
            # tinycudann allocates on the current CUDA device: make it the target one.
            with torch.cuda.device(device):
                module = _make_tcnn_encoding(n_input_dims, self.encoding_config())
            if module.params.numel() != self.n_params:
                raise ConfigError(
                    f"hash grid: tinycudann allocated {module.params.numel()} parameters for "
                    f"{self.encoding_config()}, the torch layout expects {self.n_params}; "
                    "this tinycudann version is not layout-compatible"
                )
            self.params = nn.Parameter(module.params.detach().float().clone())
            module.params = self.params
            self._tcnn_module.append(module)
        else:
            init = torch.empty(self.n_params, dtype=torch.float32).uniform_(-1e-4, 1e-4)
            self.params = nn.Parameter(init)

    def encoding_config(self) -> dict[str, Any]:
        """tiny-cuda-nn's JSON encoding config for this grid."""
        return {
            "otype": "HashGrid",
            "n_levels": self.cfg.n_levels,
            "n_features_per_level": self.cfg.n_features_per_level,
            "log2_hashmap_size": self.cfg.log2_hashmap_size,
            "base_resolution": self.cfg.base_resolution,
            "per_level_scale": float(self.cfg.per_level_scale),
            "interpolation": "Linear",
            "hash": "CoherentPrime",
        }

    def extra_repr(self) -> str:
        res = [lv.resolution for lv in self.levels]
        n_dense = sum(lv.dense for lv in self.levels)
        return (
            f"backend={self.backend_name}, n_params={self.n_params}, "
            f"resolutions={res[0]}..{res[-1]}, dense_levels={n_dense}/{len(res)}"
        )

    def _grid_tables(self, device: torch.device) -> GridTables:
        if self._tables is None or self._tables.device != device:
            self._tables = GridTables(
                self.levels, self.n_input_dims, self.cfg.n_features_per_level, device
            )
        return self._tables

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode points.

        Args:
            x: (N, D) positions in [0, 1]^D; values outside are clamped.
        Returns:
            (N, n_levels * n_features_per_level) float32 features, level 0 first
            (float64 if the parameters were converted to float64).
        """
        if x.ndim != 2 or x.shape[1] != self.n_input_dims:
            raise ParameterError(
                f"hash grid input: expected shape (N, {self.n_input_dims}), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ParameterError(f"hash grid input: expected floating point, got {x.dtype}")
        x = x.clamp(0.0, 1.0)
        if self.backend_name == "tcnn":
            if x.device.type != "cuda" or self.params.device != x.device:
                raise ParameterError(
                    "hash grid: the tcnn backend runs on CUDA only, with its parameters on the "
                    f"input's device; got input on {x.device}, parameters on "
                    f"{self.params.device} (use backend=torch off the GPU)"
                )
            module = self._tcnn_module[0]
            if module.params is not self.params:  # after load_state_dict(assign=True), .to()
                module.params = self.params
            # tinycudann launches on the current CUDA device: the input's (cuda:1, say).
            with torch.cuda.device(x.device):
                return module(x.float().contiguous()).float()
        if x.shape[0] == 0:
            return x.new_zeros((0, self.n_output_dims), dtype=self.params.dtype)
        tables = self._grid_tables(x.device)
        if self._compiled_lookup(x):
            from handnerf.model import grid_kernel  # numba: imported on first use only

            return grid_kernel.grid_lookup(x, self.params, *tables.kernel_arrays())
        if self._fused_lookup(x):
            from handnerf.model import grid_triton  # Triton: imported on first use only

            if self._fused_agrees:
                return grid_triton.grid_lookup(x, self.params, *tables.triton_constants())
            out = grid_triton.checked_lookup(
                x,
                self.params,
                tables.triton_constants(),
                lambda head: GridFunction.apply(head, self.params, tables),
            )
            self._fused_agrees = out is not None
            if out is not None:
                return out
        return GridFunction.apply(x.to(self.params.dtype), self.params, tables)

    def _fused_lookup(self, x: torch.Tensor) -> bool:
        """Whether :mod:`handnerf.model.grid_triton` encodes ``x``: inference of a 3-D grid
        with float32 parameters where :func:`kernels.grid_triton_enabled` (CUDA), unless
        its first lookup disagreed with the torch backend."""
        wants_grad = torch.is_grad_enabled() and (x.requires_grad or self.params.requires_grad)
        return (
            not wants_grad
            and self._fused_agrees is not False
            and self.n_input_dims == 3
            and self.params.dtype == torch.float32
            and kernels.grid_triton_enabled(x.device)
        )

    def _compiled_lookup(self, x: torch.Tensor) -> bool:
        """Whether :mod:`handnerf.model.grid_kernel` encodes ``x``: inference (nothing to
        differentiate) of a 3-D grid on the CPU with float32 parameters, where numba
        imports."""
        wants_grad = torch.is_grad_enabled() and (x.requires_grad or self.params.requires_grad)
        if (
            wants_grad
            or self.n_input_dims != 3
            or x.device.type != "cpu"
            or self.params.device.type != "cpu"
            or self.params.dtype != torch.float32
        ):
            return False
        from handnerf.model import grid_kernel

        return grid_kernel.available()


def make_hash_grid(
    cfg: EncodingConfig, n_input_dims: int = 3, device: torch.device | str = "cpu"
) -> HashGridEncoding:
    """Build the encoding for ``cfg`` to run on ``device`` (see :class:`HashGridEncoding`)."""
    return HashGridEncoding(cfg, n_input_dims=n_input_dims, device=device)


def _validate(cfg: EncodingConfig, n_input_dims: int) -> None:
    def bad(field: str, rule: str, value: Any) -> ConfigError:
        return ConfigError(f"hash grid config: '{field}' {rule}, got {value!r}")

    if not 1 <= cfg.n_levels <= _MAX_N_LEVELS:
        raise bad("n_levels", f"must be in [1, {_MAX_N_LEVELS}]", cfg.n_levels)
    if cfg.n_features_per_level not in _TCNN_FEATURES_PER_LEVEL:
        raise bad("n_features_per_level", "must be 1, 2, 4 or 8", cfg.n_features_per_level)
    if not 1 <= cfg.log2_hashmap_size <= 31:
        raise bad("log2_hashmap_size", "must be in [1, 31]", cfg.log2_hashmap_size)
    if cfg.base_resolution < 1:
        raise bad("base_resolution", "must be >= 1", cfg.base_resolution)
    if not (math.isfinite(cfg.per_level_scale) and cfg.per_level_scale >= 1.0):
        raise bad("per_level_scale", "must be a finite number >= 1", cfg.per_level_scale)
    if cfg.backend not in BACKENDS:
        raise bad("backend", f"must be one of {', '.join(BACKENDS)}", cfg.backend)
    if not 1 <= n_input_dims <= 7:
        raise bad("n_input_dims", "must be in [1, 7]", n_input_dims)
    if cfg.backend == "tcnn" and n_input_dims not in _TCNN_INPUT_DIMS:
        raise bad("n_input_dims", "must be 2, 3 or 4 for the tcnn backend", n_input_dims)


def tcnn_available() -> bool:
    """Whether the ``tcnn`` backend can run here (CUDA and an importable ``tinycudann``)."""
    if not torch.cuda.is_available():
        return False
    try:
        importlib.import_module("tinycudann")
    except Exception:  # a broken CUDA extension raises more than ImportError
        return False
    return True


def select_backend(backend: str, device: torch.device | str) -> str:
    """The hash grid backend ``backend`` (auto|torch|tcnn) gives on ``device``.

    ``auto``: ``tcnn`` on a CUDA device where ``tinycudann`` imports, else ``torch``.
    ``tcnn`` anywhere else is a :class:`ConfigError` naming the device.
    """
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "tcnn" if device.type == "cuda" and tcnn_available() else "torch"
    if device.type != "cuda" or not torch.cuda.is_available():
        raise ConfigError(
            f"hash grid config: 'backend' is 'tcnn' but the model runs on {device} "
            "(tiny-cuda-nn runs on CUDA only); use backend=torch or backend=auto"
        )
    try:
        importlib.import_module("tinycudann")
    except Exception as exc:
        raise ConfigError(
            "hash grid config: 'backend' is 'tcnn' but tinycudann cannot be imported "
            f"({exc}); install it with `pip install git+https://github.com/NVlabs/"
            "tiny-cuda-nn/#subdirectory=bindings/torch` or use backend=torch"
        ) from exc
    return "tcnn"


def _make_tcnn_encoding(n_input_dims: int, config: dict[str, Any]) -> Any:
    tcnn = importlib.import_module("tinycudann")
    try:
        return tcnn.Encoding(n_input_dims, config)
    except Exception as exc:
        raise ConfigError(f"hash grid config: tinycudann rejected {config}: {exc}") from exc
