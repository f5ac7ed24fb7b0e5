"""Count the operations one render issues on the CUDA code path, on a machine without a GPU.

On CUDA every torch operation is a kernel launch, and the render is launch-bound
(docs/benchmarks.md, "First run on a GPU"). This renders one held-out view of ``--run`` on
the CPU the way the CUDA path runs, and counts the aten operations it dispatches,
grouped by the handnerf function that issued them:
- the torch twins (no numba kernels);
- the deformer's ``cdist`` backend, with TriangleScan's CUDA chunks;
- the hash grid's all-levels gather.

``--kernels`` stands the fused Triton kernels (``closest_kernel``, ``grid_triton``) in by
counted single calls. The mesh search is done by libigl, the grid lookup by the torch
backend, neither counted. It is the launch count the CUDA path has with them.

    python tools/count_launches.py --run demo_out/run --size 256 [--kernels]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _pop_mode_temporarily

from handnerf.errors import HandnerfError
from handnerf.evaluation.evaluate import ViewSource, select_views
from handnerf.evaluation.protocols import get_protocol
from handnerf.hand.hand_model import ManoParams
from handnerf.model import grid_tables, surface_search
from handnerf.model.renderer import CameraTensors, render_camera, resized_camera
from handnerf.runs.loader import load_run

#: The CPU's compiled kernels, off during the count: the CUDA path runs the torch twins.
CPU_KERNEL_SWITCHES = ("HANDNERF_GRID_KERNEL", "HANDNERF_MARCH_KERNEL", "HANDNERF_REACH_GRID")


class OperationCounter(TorchDispatchMode):
    """Counts dispatched aten operations by the innermost handnerf function calling them."""

    def __init__(self) -> None:
        super().__init__()
        self.by_caller: collections.Counter[str] = collections.Counter()
        self.launches = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        frame = sys._getframe(1)
        while frame is not None and "/handnerf/" not in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is not None:
            where = frame.f_code.co_filename.split("/handnerf/")[-1]
            self.by_caller[f"{where}:{frame.f_code.co_name}"] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def fused(self, name: str) -> Iterator[None]:
        """One counted launch of kernel ``name``; what its stand-in runs is not counted."""
        if not torch._C._len_torch_dispatch_stack():
            yield
            return
        self.launches[name] += 1
        with _pop_mode_temporarily():
            yield


class StandInMeshKernel:
    """``closest_kernel.closest_on_mesh`` by libigl (closest triangle) and the torch
    closest point on it."""

    def __init__(self, counter: OperationCounter) -> None:
        self.counter = counter

    def closest_on_mesh(self, points: torch.Tensor, corners: torch.Tensor) -> Any:
        import igl

        with self.counter.fused("closest_kernel"):
            vertices = corners.reshape(-1, 3).double().numpy()
            faces = np.arange(len(vertices), dtype=np.int64).reshape(-1, 3)
            _, face, _ = igl.point_mesh_squared_distance(points.double().numpy(), vertices, faces)
            face = torch.from_numpy(np.asarray(face, dtype=np.int64))
            bary, dist2 = surface_search.closest_point_on_triangles(points, corners[face])
            return face, bary, dist2


def count(run_dir: Path, size: int, kernels: bool) -> dict[str, Any]:
    run = load_run(run_dir, device="cpu")
    deformer = run.avatar.deformer
    deformer.config = dataclasses.replace(deformer.config, backend="cdist")
    counter = OperationCounter()
    with _patched() as patch:
        for switch in CPU_KERNEL_SWITCHES:
            patch(os.environ, switch, "0")
        patch(surface_search, "SCAN_CHUNK_PAIRS", surface_search.SCAN_CHUNK_PAIRS_CUDA)
        patch(grid_tables, "gather_levels_at_once", lambda device: True)
        if kernels:
            _stand_in_kernels(patch, counter)
        item = select_views(run, ("novel_view",), 1)[0]
        view, source = item.view, ViewSource(run, get_protocol("handavatar"))
        mask, image = source.source_mask(item), source.source_image(item)
        mano = run.frame_mano(
            view.seq_name, view.frame_idx, ManoParams.from_interhand(view.mano, view.mano_where)
        )
        posed = run.avatar.pose_frames(mano)
        crop = source.crop(item, mask, posed.vertices[0].numpy(), image)
        cam = resized_camera(CameraTensors.of(crop.camera), size, size)
        camera_id = run.camera_index(view.camera_id)
        with counter:
            render_camera(run.avatar, posed, cam, 0, camera_id, "cpu")
    operations = sum(counter.by_caller.values())
    return {
        "run": str(run_dir),
        "view": f"{view.seq_name}/{view.camera_id}/{view.frame_idx}",
        "size": f"{size}x{size}",
        "fused_kernels": kernels,
        "operations": operations,
        "kernel_launches": dict(counter.launches),
        "total": operations + sum(counter.launches.values()),
        "by_caller": dict(counter.by_caller.most_common()),
    }


@contextlib.contextmanager
def _patched() -> Iterator[Any]:
    """``patch(obj, name, value)``, undone on exit."""
    undo: list[tuple[Any, str, Any]] = []

    missing = object()

    def patch(obj: Any, name: str, value: Any) -> None:
        """An attribute of ``obj``, or a key of the environment when ``obj`` is it."""
        if obj is os.environ:
            undo.append((obj, name, os.environ.get(name, missing)))
            os.environ[name] = value
            return
        undo.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    try:
        yield patch
    finally:
        for obj, name, value in reversed(undo):
            if obj is not os.environ:
                setattr(obj, name, value)
            elif value is missing:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _stand_in_kernels(patch: Any, counter: OperationCounter) -> None:
    from handnerf.model import grid_triton, kernels

    mesh = StandInMeshKernel(counter)
    patch(surface_search, "mesh_search_kernel", lambda device: mesh)
    patch(kernels, "grid_triton_enabled", lambda device: True)

    # The torch backend of each encoding (by its parameters), learnt from its first call.
    references: dict[int, Any] = {}

    def checked_lookup(x: torch.Tensor, params: Any, constants: Any, reference: Any) -> Any:
        references[id(params)] = reference
        with counter.fused("grid_triton"):
            return reference(x)

    def grid_lookup(x: torch.Tensor, params: Any, *constants: Any) -> Any:
        with counter.fused("grid_triton"):
            return references[id(params)](x)

    patch(grid_triton, "checked_lookup", checked_lookup)
    patch(grid_triton, "grid_lookup", grid_lookup)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a fitted run folder")
    parser.add_argument("--size", type=int, default=256, help="crop size rendered")
    parser.add_argument("--kernels", action="store_true", help="the fused Triton kernels in")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    args = parser.parse_args(argv)
    try:
        report = count(args.run, args.size, args.kernels)
    except HandnerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"{report['size']} render of {report['view']}: {report['operations']} operations + "
        f"{sum(report['kernel_launches'].values())} fused kernel launches = {report['total']}"
    )
    for caller, n in list(report["by_caller"].items())[:12]:
        print(f"{n:8d}  {caller}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
