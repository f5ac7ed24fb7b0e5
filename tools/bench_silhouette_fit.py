"""The silhouette fit of the given MANO poses alone (no field): how close it brings the
training frames to the exact fits, how far it moves exact fits, and how long it takes.

    python tools/bench_silhouette_fit.py CAPTURE [--config configs/demo.yaml] [--steps 150]

CAPTURE is a synthetic capture with known fit errors (``handnerf synth --preset demo``
writes ``exact_mano.json`` beside the InterHand files). Loads the training views as the
config's fit does (MANO masks), runs ``fit_silhouette_corrections`` once from the given
fits and once from the exact ones (same images), one torch thread, and prints JSON: the
mean vertex error (mm) against the exact fits before and after, the distance (mm) the
fit moves an exact fit, the losses and the seconds each fit took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from handnerf.config import load_config, overrides_from_yaml
from handnerf.errors import HandnerfError
from handnerf.hand.hand_model import ManoParams
from handnerf.synth.writer import load_exact_mano
from handnerf.train.config import FitConfig
from handnerf.train.fit_data import FitData, load_fit_data
from handnerf.train.pose_refinement import PoseCorrections
from handnerf.train.silhouette_fit import SilhouetteFitConfig, fit_silhouette_corrections

DEMO_YAML = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def vertex_error_mm(data: FitData, a: ManoParams, b: ManoParams) -> float:
    """Mean distance (mm) between the posed vertices of ``a`` and ``b``."""
    with torch.no_grad():
        va, vb = data.hand_model(a).vertices, data.hand_model(b).vertices
    return float((va - vb).norm(dim=-1).mean()) * 1000.0


def measure(capture: Path, config: Path, steps: int, overrides: list[str]) -> dict[str, Any]:
    """The fit from the given and from the exact poses of ``capture``'s training frames."""
    cfg = load_config(
        FitConfig, None, [*overrides_from_yaml(config), "data.mask_source=mano", *overrides]
    )
    data = load_fit_data(capture, cfg.data, progress=False)
    m = data.train_mano
    betas = data.betas[None].expand(len(m), -1)
    given = ManoParams(m.global_orient, m.hand_pose, betas, m.transl)
    frames = [f for _, f in data.train.frame_keys]
    e = load_exact_mano(capture, frames, data.fit_hands.first.side)
    exact = ManoParams(e.global_orient, e.hand_pose, betas, e.transl)
    result: dict[str, Any] = {"capture": str(capture), "steps": steps, "overrides": overrides}
    for start, mano in (("given", given), ("exact", exact)):
        corrections = PoseCorrections(len(mano))
        began = time.perf_counter()
        losses = fit_silhouette_corrections(
            data.hand_model, mano, corrections, data.train_views, SilhouetteFitConfig(steps=steps)
        )
        seconds = time.perf_counter() - began
        with torch.no_grad():
            fitted = corrections.apply(mano)
        result[f"from_{start}"] = {
            "vertex_error_mm_before": vertex_error_mm(data, mano, exact),
            "vertex_error_mm_after": vertex_error_mm(data, fitted, exact),
            "moved_mm": vertex_error_mm(data, fitted, mano),
            "seconds": seconds,
            **losses,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capture", type=Path, help="synthetic capture with exact_mano.json")
    parser.add_argument("--config", type=Path, default=DEMO_YAML, help="fit config (its data)")
    parser.add_argument("--steps", type=int, default=150, help="silhouette-fit steps")
    parser.add_argument("--set", action="append", default=[], help="extra key=value")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        result = measure(args.capture, args.config, args.steps, args.set)
    except HandnerfError as exc:
        print(f"bench_silhouette_fit: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
