"""Benchmark the hash-grid encoding: forward + backward throughput (points per second).

Compares handnerf's torch grid with a plain reference written here (per-level and
per-corner Python loops, autograd through advanced-indexing gathers), on CPU, and on CUDA
(plus ``tinycudann`` when it imports) where available. Prints JSON and a Markdown table;
``--out PATH`` also writes them (``PATH`` JSON, ``PATH`` with ``.md`` suffix for Markdown).

    OMP_NUM_THREADS=2 python tools/bench_encoding.py --points 131072 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from handnerf.files import machine_info
from handnerf.model.encoding import EncodingConfig, HashGridEncoding, tcnn_available
from handnerf.model.grid_tables import COHERENT_PRIMES


def plain_encode(x: torch.Tensor, params: torch.Tensor, enc: HashGridEncoding) -> torch.Tensor:
    """Straightforward grid: loop over levels and corners; autograd does the backward."""
    feats = enc.cfg.n_features_per_level
    table = params.view(-1, feats)
    outputs = []
    for level in enc.levels:
        pos = x * level.scale + 0.5
        cell = torch.floor(pos)
        frac = pos - cell
        cell = cell.long()
        acc = torch.zeros(x.shape[0], feats, dtype=params.dtype, device=x.device)
        for corner in range(2 ** x.shape[1]):
            weight = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
            index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            for d in range(x.shape[1]):
                bit = (corner >> d) & 1
                coord = cell[:, d] + bit
                weight = weight * (frac[:, d] if bit else 1 - frac[:, d])
                if level.dense:
                    index = index + coord * level.resolution**d
                else:
                    index = index ^ ((coord * COHERENT_PRIMES[d]) & 0xFFFFFFFF)
            index = (index & 0xFFFFFFFF) % level.n_entries
            acc = acc + weight[:, None] * table[level.offset + index]
        outputs.append(acc)
    return torch.cat(outputs, dim=1)


def best_time(step: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call (other jobs add noise)."""
    step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_one(
    name: str,
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: torch.nn.Parameter,
    x: torch.Tensor,
    repeats: int,
) -> dict[str, Any]:
    upstream = torch.randn(x.shape[0], forward(x[:8]).shape[1], device=x.device)

    def fwd() -> None:
        with torch.no_grad():
            forward(x)

    def fwd_bwd() -> None:
        params.grad = None
        (forward(x).float() * upstream).sum().backward()

    t_fwd = best_time(fwd, repeats, x.device)
    t_both = best_time(fwd_bwd, repeats, x.device)
    return {
        "impl": name,
        "device": str(x.device),
        "points": x.shape[0],
        "fwd_s": t_fwd,
        "fwd_bwd_s": t_both,
        "fwd_points_per_s": x.shape[0] / t_fwd,
        "fwd_bwd_points_per_s": x.shape[0] / t_both,
    }


def run(points: int, repeats: int, devices: list[str]) -> dict[str, Any]:
    cfg = EncodingConfig(backend="torch")
    results = []
    for dev in devices:
        device = torch.device(dev)
        torch.manual_seed(0)
        x = torch.rand(points, 3, device=device)
        enc = HashGridEncoding(cfg, device=device).to(device)
        plain = bench_one(
            "plain reference",
            lambda pts, e=enc: plain_encode(pts, e.params, e),
            enc.params,
            x,
            repeats,
        )
        ours = bench_one("handnerf torch grid", enc, enc.params, x, repeats)
        ours["speedup_fwd_bwd_vs_plain"] = (
            ours["fwd_bwd_points_per_s"] / plain["fwd_bwd_points_per_s"]
        )
        results += [plain, ours]
        if device.type == "cuda" and tcnn_available():
            tc = HashGridEncoding(EncodingConfig(backend="tcnn"), device=device).to(device)
            results.append(bench_one("tinycudann", tc, tc.params, x, repeats))
    return {
        "config": {**HashGridEncoding(cfg).encoding_config(), "n_params": enc.n_params},
        "machine": {**machine_info(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "repeats": repeats,
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Hash grid fwd+bwd, {report['results'][0]['points']} points, best of "
        f"{report['repeats']}; torch {m['torch']}, {m['cpu_threads']} threads, "
        f"{m['processor']} ({m['cpu_count']} cores){', ' + m['cuda_device'] if m['cuda'] else ''}",
        "",
        "| impl | device | fwd (ms) | fwd+bwd (ms) | fwd+bwd points/s | speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        speedup = r.get("speedup_fwd_bwd_vs_plain")
        lines.append(
            f"| {r['impl']} | {r['device']} | {r['fwd_s'] * 1e3:.1f} | "
            f"{r['fwd_bwd_s'] * 1e3:.1f} | {r['fwd_bwd_points_per_s']:,.0f} | "
            f"{f'{speedup:.1f}x' if speedup else ''} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2**17)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (.md written beside)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] if args.device == "cpu" else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    if args.device == "all":
        devices.insert(0, "cpu")
    if not devices:
        parser.error("CUDA is not available")
    report = run(args.points, args.repeats, devices)
    text = json.dumps(report, indent=2)
    table = markdown(report)
    print(text)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
