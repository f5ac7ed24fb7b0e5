"""Pose refinement on a tiny synthetic capture with known MANO errors: how far it brings
the training frames back to the exact fit, and what a step costs, with and without it.

    python tools/bench_pose_refinement.py --noise 4,4 --steps 600 \
        --set data.mask_source=mano --set train.pose_mask_band=6

Runs one fit without refinement and one with it, back to back in this process (one
thread), on the same capture, and prints JSON: the mean vertex error (mm) of the given
and refined training frames against the exact fits, and ms per step of each fit. Timings
are only comparable between the two fits of one run (the machine's load moves both).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from handnerf.config import load_config, overrides_from_yaml
from handnerf.hand.hand_model import ManoParams
from handnerf.synth.presets import get_preset
from handnerf.synth.writer import load_exact_mano, synthesize_capture
from handnerf.train.config import FitConfig
from handnerf.train.fit_data import FitData, load_fit_data
from handnerf.train.trainer import Trainer

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def vertex_error_mm(data: FitData, mano: ManoParams, exact: ManoParams) -> float:
    """Mean distance (mm) between the posed vertices of ``mano`` and ``exact``."""
    betas = data.betas[None].expand(len(mano), -1)
    with torch.no_grad():
        a = data.hand_model(ManoParams(mano.global_orient, mano.hand_pose, betas, mano.transl))
        b = data.hand_model(ManoParams(exact.global_orient, exact.hand_pose, betas, exact.transl))
    return float((a.vertices - b.vertices).norm(dim=-1).mean()) * 1000.0


def fit(root: Path, out: Path, overrides: list[str]) -> tuple[Trainer, FitData, float]:
    """A fit of ``overrides`` on ``root``; returns it, its data and ms per step."""
    cfg = load_config(FitConfig, None, overrides)
    data = load_fit_data(root, cfg.data, progress=False)
    trainer = Trainer(cfg, data, out)
    start = time.perf_counter()
    trainer.align_poses_to_silhouettes()  # what fit() does first (refinement only)
    for _ in range(cfg.train.steps):
        trainer.training_step()
        trainer.step += 1
    return trainer, data, (time.perf_counter() - start) * 1000.0 / max(cfg.train.steps, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", default="4,4", help="DEG,MM of the MANO errors")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7, help="the capture's (tests: 7)")
    parser.add_argument("--set", action="append", default=[], help="extra key=value")
    args = parser.parse_args()
    torch.set_num_threads(1)
    deg, mm = (float(x) for x in args.noise.split(","))
    base = [
        *overrides_from_yaml(TINY_YAML),
        "train.val_every=0",
        "train.checkpoint_every=0",
        "train.log_every=100000",
        f"train.steps={args.steps}",
        "loss.w_mask=0.5",
        *args.set,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "capture"
        preset = get_preset("tiny").with_overrides(mano_noise_deg=deg, mano_noise_mm=mm)
        synthesize_capture(root, preset, seed=args.seed, workers=1)
        _, _, plain_ms = fit(root, Path(tmp) / "plain", base)
        trainer, data, refine_ms = fit(
            root, Path(tmp) / "refine", [*base, "train.refine_pose=true"]
        )
        frames = [f for _, f in data.train.frame_keys]
        exact = load_exact_mano(root, frames, data.fit_hands.first.side)
        assert trainer.pose is not None
        result = {
            "noise": [deg, mm],
            "steps": args.steps,
            "overrides": args.set,
            "vertex_error_mm": {
                "given": vertex_error_mm(data, data.train_mano, exact),
                "refined": vertex_error_mm(data, trainer.pose.refined(), exact),
            },
            "ms_per_step": {"without": plain_ms, "with_refinement": refine_ms},
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
