"""Benchmark the inverse-LBS deformer's lookup backends and blending schemes.

For a posed procedural hand (the license-free MANO-format hand) it measures, per backend
and device: the time to prepare a frame, the throughput of ``deform()`` on ~200k samples
(half near the surface, half uniform in the padded bounding box, like ray samples), and
the accuracy of the canonical reconstruction for points ON the surface (vertices, and
points on triangles with barycentric-interpolated weights) and NEAR it (surface points
moved along the canonical normal, skinned with the same weights).

Usage::

    python tools/bench_deformer.py --points 200000 --out bench_out
    # writes bench_out/deformer_bench.json and bench_out/deformer_bench.md
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from handnerf.hand.hand_model import HandModel, ManoParams
from handnerf.model.deformer import InverseLBSDeformer
from handnerf.model.deformer_config import DeformerConfig


def skin(points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Forward LBS: (N, 3) canonical points, (N, J) weights, (J, 4, 4) → (N, 3) posed."""
    blended = torch.einsum("nj,jab->nab", weights.double(), transforms.double())
    homogeneous = torch.cat([points.double(), torch.ones(len(points), 1, dtype=torch.float64)], 1)
    return torch.einsum("nab,nb->na", blended, homogeneous)[:, :3].float()


def make_scene(seed: int, num_points: int) -> dict[str, Any]:
    """A posed procedural hand plus query points with ground-truth canonical positions."""
    generator = torch.Generator().manual_seed(seed)
    model = HandModel.from_folder(None, "right")
    params = ManoParams(
        global_orient=torch.tensor([[0.3, -0.4, 0.2]]),
        hand_pose=0.35 * torch.randn(1, 45, generator=generator),
        betas=torch.zeros(1, 10),
        transl=torch.tensor([[0.05, -0.02, 0.6]]),
    )
    with torch.no_grad():
        output = model(params)
    faces = model.faces.long()
    weights = model.skinning_weights.float()
    canonical_vertices = output.canonical_vertices[0].float()
    transforms = output.bone_transforms[0].float()
    posed_vertices = skin(canonical_vertices, weights, transforms)

    count = 20000
    face_ids = torch.randint(len(faces), (count,), generator=generator)
    bary = -torch.log(torch.rand(count, 3, generator=generator))
    bary = bary / bary.sum(dim=1, keepdim=True)
    corners = canonical_vertices[faces[face_ids]]  # (n, 3, 3)
    surface = (bary[..., None] * corners).sum(dim=1)
    surface_weights = (bary[..., None] * weights[faces[face_ids]]).sum(dim=1)
    normals = torch.nn.functional.normalize(
        torch.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1), dim=1
    )
    offset = 0.005 * (2 * torch.rand(count, 1, generator=generator) - 1)  # ±5 mm
    near = surface + offset * normals

    # Throughput queries: half near the posed surface, half uniform in the padded box.
    half = num_points // 2
    picks = torch.randint(len(posed_vertices), (half,), generator=generator)
    around = posed_vertices[picks] + 0.01 * torch.randn(half, 3, generator=generator)
    lower = posed_vertices.amin(dim=0) - 0.02
    upper = posed_vertices.amax(dim=0) + 0.02
    box = lower + (upper - lower) * torch.rand(num_points - half, 3, generator=generator)
    return {
        "posed_vertices": posed_vertices,
        "faces": faces,
        "transforms": transforms,
        "weights": weights,
        "canonical_vertices": canonical_vertices,
        "accuracy_sets": {
            "vertices": (posed_vertices, canonical_vertices),
            "surface": (skin(surface, surface_weights, transforms), surface),
            "near_5mm": (skin(near, surface_weights, transforms), near),
        },
        "queries": torch.cat([around, box]),
    }


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    """Best wall time (s) of ``repeats`` calls after one warm-up, and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def run_case(
    scene: dict[str, Any], config: DeformerConfig, device: torch.device, repeats: int
) -> dict[str, Any]:
    deformer = InverseLBSDeformer(config)
    args = [scene[key].to(device) for key in ("posed_vertices", "transforms", "weights")]
    vertices, transforms, weights = args
    faces = scene["faces"].to(device)
    canonical = scene["canonical_vertices"].to(device)
    prepare_s, frames = timed(
        lambda: deformer.prepare_frames(
            vertices[None], transforms[None], weights, faces=faces, canonical_vertices=canonical
        ),
        device,
        repeats,
    )
    queries = scene["queries"].to(device)
    deform_s, result = timed(lambda: frames.deform(queries), device, repeats)
    row: dict[str, Any] = {
        "device": device.type,
        "backend": config.backend,
        "blend": config.blend,
        "k": config.k_neighbors,
        "near": config.near,
        "correctives": config.correctives,
        "prepare_ms": 1000 * prepare_s,
        "deform_ms": 1000 * deform_s,
        "points_per_s": len(queries) / deform_s,
        "valid_fraction": float(result.valid.float().mean()),
    }
    for name, (posed, canonical) in scene["accuracy_sets"].items():
        out = frames.deform(posed.to(device))
        error = (out.canonical.cpu() - canonical).norm(dim=1)
        row[f"{name}_mean_mm"] = 1000 * float(error.mean())
        row[f"{name}_p99_mm"] = 1000 * float(error.quantile(0.99))
        row[f"{name}_max_mm"] = 1000 * float(error.max())
    return row


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    columns = [
        ("device", "device"),
        ("backend", "backend"),
        ("blend", "blend"),
        ("k", "k"),
        ("near", "near"),
        ("correctives", "correctives"),
        ("prepare_ms", "prepare ms"),
        ("deform_ms", "deform ms"),
        ("points_per_s", "Mpts/s"),
        ("vertices_max_mm", "vertex max mm"),
        ("surface_mean_mm", "surface mean mm"),
        ("surface_p99_mm", "surface p99 mm"),
        ("surface_max_mm", "surface max mm"),
        ("near_5mm_mean_mm", "near mean mm"),
        ("near_5mm_p99_mm", "near p99 mm"),
        ("near_5mm_max_mm", "near max mm"),
    ]
    lines = [
        f"# Inverse-LBS deformer benchmark ({meta['num_points']} points, {meta['torch_threads']} CPU threads)",
        "",
        "| " + " | ".join(title for _, title in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row[key]
            if key == "points_per_s":
                cells.append(f"{value / 1e6:.2f}")
            elif isinstance(value, float):
                cells.append(f"{value:.4f}" if key.endswith("_mm") else f"{value:.1f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA even if present")
    parser.add_argument(
        "--max-distance", type=float, default=0.015, help="metres (the avatar uses 0.008)"
    )
    parser.add_argument(
        "--blends-only", action="store_true", help="only the blending schemes (kdtree, CPU)"
    )
    args = parser.parse_args()

    scene = make_scene(args.seed, args.points)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    cases = []
    for device in devices if not args.blends_only else []:
        backends = ["kdtree", "cdist", "grid"] if device.type == "cpu" else ["cdist", "grid"]
        cases += [(device, DeformerConfig(backend=b)) for b in backends]
    # Blending schemes, compared on the exact CPU backend (accuracy does not depend on it).
    blends = (("nearest", 1), ("inverse_distance", 8), ("gaussian", 4), ("gaussian", 8))
    for blend, k in (("inverse_distance", 4), *blends, ("surface", 4)):
        cases.append((devices[0], DeformerConfig(backend="kdtree", blend=blend, k_neighbors=k)))
    # The coarse-mesh modes: distance to the mesh, pose correctives undone.
    for near, correctives in (("mesh", False), ("vertex", True), ("mesh", True)):
        config = DeformerConfig(
            backend="kdtree", blend="surface", near=near, correctives=correctives
        )
        cases.append((devices[0], config))
    rows = []
    for device, config in cases:
        config.max_distance = args.max_distance
        row = run_case(scene, config, device, args.repeats)
        rows.append(row)
        print(json.dumps(row))

    meta = {
        "num_points": args.points,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name() if len(devices) > 1 else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "deformer_bench.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    markdown = to_markdown(rows, meta)
    (args.out / "deformer_bench.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
