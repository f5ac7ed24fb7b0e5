"""Where nerfacc's compiled kernels run: the one switch between the packed and batched paths.

nerfacc 0.5.3 compiles its CUDA kernels at the first call (``traverse_grids``,
``ray_aabb_intersect``, the packed scans behind ``render_weight_from_density(...,
ray_indices=...)``). The packed layout (occupancy-guided marching, per-ray segmented
scans) needs them; everything else has a batched ``(R, S)`` pure-PyTorch twin. Every
choice between the two asks :func:`nerfacc_kernels`, never ``tensor.is_cuda``.

Tests stand a pure-PyTorch module in for the compiled one (``tests/nerfacc_standin.py``)
and declare it with :func:`kernels_stood_in`, so the packed path runs, and is checked,
on a machine without a GPU.

:func:`mesh_search_kernel` is the like switch for the closest point on the posed mesh:
the fused Triton kernel of :mod:`handnerf.model.closest_kernel` on CUDA, else the torch
scan.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from types import ModuleType

import torch

#: Device types on which a stand-in for nerfacc's compiled module is installed (tests).
_stood_in: set[str] = set()


@lru_cache(maxsize=8)
def _cuda_kernels_work(device_index: int) -> bool:
    """Whether nerfacc's CUDA kernels build and run on this device (first call compiles)."""
    import nerfacc

    try:
        o = torch.zeros(1, 3, device=f"cuda:{device_index}")
        d = torch.tensor([[0.0, 0.0, 1.0]], device=o.device)
        box = torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0, 2.0]], device=o.device)
        nerfacc.ray_aabb_intersect(o, d, box)
    except Exception as exc:  # build errors come as OSError, RuntimeError, ImportError...
        warn_unusable(
            "nerfacc's CUDA kernels", exc, "the pure-PyTorch sampler and batched rendering"
        )
        return False
    return True


def nerfacc_kernels(device: torch.device | str) -> bool:
    """True when nerfacc's packed kernels serve tensors on ``device``: a CUDA device where
    they build and run, or a device type a stand-in was declared for."""
    device = torch.device(device)
    if device.type in _stood_in:
        return True
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_kernels_work(index)


@contextmanager
def kernels_stood_in(device_type: str = "cpu") -> Iterator[None]:
    """Within the block, :func:`nerfacc_kernels` answers True for ``device_type``.

    Only for tests that have replaced nerfacc's compiled module by a stand-in: without
    one, nerfacc's packed calls fail on that device.
    """
    added = device_type not in _stood_in
    _stood_in.add(device_type)
    try:
        yield
    finally:
        if added:
            _stood_in.discard(device_type)


#: Set to 0 to search the posed mesh with the torch scan on CUDA too.
MESH_KERNEL_ENV = "HANDNERF_MESH_KERNEL"
#: Set to 0 to keep the hash grid's torch backend (numba on the CPU, Triton on CUDA: off).
GRID_KERNEL_ENV = "HANDNERF_GRID_KERNEL"


def warn_unusable(what: str, exc: BaseException, fallback: str) -> None:
    """The one warning of a compiled path that does not build or run right: what, why, and
    what serves instead."""
    warnings.warn(
        f"{what} is unusable ({type(exc).__name__}: {exc}); {fallback} serves instead",
        RuntimeWarning,
        stacklevel=4,
    )


def switched_on(env: str) -> bool:
    """Each compiled kernel's off switch: False when the variable ``env`` is "0"."""
    return os.environ.get(env, "1") != "0"


def mesh_search_kernel(device: torch.device | str) -> ModuleType | None:
    """:mod:`handnerf.model.closest_kernel` where it serves tensors on ``device``: CUDA,
    Triton importable, and a first call that gives the right answer; else None (the torch
    scan serves, with a warning saying why when CUDA is there but the kernel is not)."""
    device = torch.device(device)
    if device.type != "cuda" or not switched_on(MESH_KERNEL_ENV):
        return None
    if not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _mesh_kernel_works(index)


@lru_cache(maxsize=8)
def _mesh_kernel_works(device_index: int) -> ModuleType | None:
    try:
        from handnerf.model import closest_kernel

        device = torch.device("cuda", device_index)
        # One triangle in z = 0; the point above its interior is 0.5 away, at (0.25, 0.25).
        corners = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=device)
        points = torch.tensor([[0.25, 0.25, 0.5]], device=device)
        face, bary, dist2 = closest_kernel.closest_on_mesh(points, corners)
        expected = torch.tensor([[0.5, 0.25, 0.25]])
        if int(face[0]) != 0 or not torch.allclose(bary.cpu(), expected, atol=1e-6):
            raise RuntimeError(f"wrong answer: face {int(face[0])}, barycentrics {bary.tolist()}")
        if abs(float(dist2[0]) - 0.25) > 1e-6:
            raise RuntimeError(f"wrong answer: squared distance {float(dist2[0])}")
    except Exception as exc:  # ImportError, Triton's compile errors, a wrong result...
        warn_unusable("the fused closest-point kernel", exc, "the torch scan")
        return None
    return closest_kernel


def grid_triton_enabled(device: torch.device | str) -> bool:
    """Whether inference's hash-grid lookup on ``device`` may take the fused Triton kernel
    (:mod:`handnerf.model.grid_triton`): CUDA, Triton importable, not switched off. Its
    first lookup is checked against the torch backend (``grid_triton.checked_lookup``)."""
    if torch.device(device).type != "cuda" or not switched_on(GRID_KERNEL_ENV):
        return False
    return _triton_importable()


@lru_cache(maxsize=1)
def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None
