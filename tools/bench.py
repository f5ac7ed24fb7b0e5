"""Benchmark handnerf end to end: encoding, training step, time to PSNR, render FPS, memory.

For every backend combination present on the device (hash grid: ``tcnn`` / ``torch``;
sampler: ``nerfacc`` / ``torch``; on CPU only torch + torch) on a synthetic capture:

- encoding throughput: points/s of the hash grid's forward + backward (demo config's grid,
  timed with ``tools/bench_encoding.py``);
- training step: rays/s of ``Trainer.training_step`` after a warm-up;
- time to 30 and 33 dB: training wall time (validation excluded) until the PSNR on
  held-out cameras first reaches each target, within a ``--minutes`` budget;
- render FPS of the trained avatar on a held-out view: full frame (512x334 on the
  synthetic rig) and a 256x256 hand crop, through ``render_camera`` (the inference path);
- peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on CPU.

Writes JSON (``--out PATH``) and a Markdown table (stdout, and ``PATH`` with ``.md``).
``--render-run RUN`` runs only the render benchmark of a fitted run instead
(``tools/bench_render.py``: the reference against the fast inference path at 256x256 and
128x128, their PSNR, and the interactive preview's FPS).
Without ``--data`` the ``--preset`` capture is synthesised once into
``$HANDNERF_CACHE/bench/<preset>-seed<seed>``.

    python tools/bench.py --device cuda --preset fullscale --minutes 20 --out bench/gpu.json
    OMP_NUM_THREADS=2 python tools/bench.py --device cpu --preset demo --minutes 5 --out bench/cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.util
import json
import math
import os
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from handnerf.config import load_config, overrides_from_yaml
from handnerf.errors import ConfigError, DataError, HandnerfError
from handnerf.files import cache_root, machine_info
from handnerf.model.encoding import EncodingConfig, HashGridEncoding, tcnn_available
from handnerf.model.kernels import nerfacc_kernels
from handnerf.model.renderer import CameraTensors, render_camera
from handnerf.train.config import FitConfig
from handnerf.train.fit_data import FitData, load_fit_data
from handnerf.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "demo.yaml"
PSNR_TARGETS = (30.0, 33.0)

#: Every run: the novel-pose sequence plays no part in any number measured here.
BASE_OVERRIDES = ["data.novel_pose_seq=null"]
#: ``--quick`` (tests): a unit-test-sized model and fit on top of the config.
QUICK_OVERRIDES = [*overrides_from_yaml(REPO / "configs" / "tiny.yaml"), "train.steps=6"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long each part runs (sizes depend on the device and ``--quick``)."""

    enc_points: int
    enc_repeats: int
    warmup_steps: int
    timed_steps: int
    val_every: int
    val_views: int
    render_repeats: int
    #: Full-frame render at this fraction of the camera's resolution (1: 512x334).
    full_scale: float
    crop_size: int


def settings_for(device: torch.device, quick: bool) -> Settings:
    if quick:
        return Settings(
            enc_points=4096,
            enc_repeats=1,
            warmup_steps=1,
            timed_steps=2,
            val_every=2,
            val_views=1,
            render_repeats=1,
            full_scale=0.125,
            crop_size=32,
        )
    cuda = device.type == "cuda"
    return Settings(
        enc_points=1 << 20 if cuda else 1 << 17,
        enc_repeats=10 if cuda else 3,
        warmup_steps=10 if cuda else 2,
        timed_steps=50 if cuda else 8,
        # CPU fits run a few hundred steps within a --minutes budget.
        val_every=100 if cuda else 25,
        val_views=4,
        render_repeats=10 if cuda else 2,
        full_scale=1.0,
        crop_size=256,
    )


# --------------------------------------------------------------------------- setup


def bench_encoding_module(name: str = "bench_encoding") -> ModuleType:
    """``tools/<name>.py`` (a script beside this one, not a package module)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"handnerf_tools_{name}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot load the encoding benchmark")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def capture_root(data: Path | None, preset: str, seed: int, frames: int = 0) -> Path:
    """``data`` if given (must be a folder), else the preset's cached synthetic capture.

    ``frames > 0`` keeps only that many training frames (and one novel-pose frame, which
    no benchmark looks at): a smaller capture of the same rig, quicker to synthesise.
    """
    if data is not None:
        if not data.is_dir():
            raise DataError(f"--data {data}: no such folder (an InterHand2.6M-layout root)")
        return data
    from handnerf.synth.presets import get_preset
    from handnerf.synth.writer import synthesize_capture

    spec = get_preset(preset)
    name = f"{preset}-seed{seed}"
    if frames > 0:
        spec = spec.with_overrides(train_frames=frames, novel_frames=1)
        name += f"-frames{frames}"
    root = cache_root() / "bench" / name
    # synth.json is written last: its presence means a complete capture.
    if not (root / "synth.json").is_file():
        print(f"synthesising the {preset} capture into {root} (once)", file=sys.stderr)
        synthesize_capture(root, spec, seed=seed)
    return root


def mask_cache_for(root: Path) -> Path:
    """A mask cache that outlives the run, one per capture (path and annotation files).

    MANO silhouettes of a large capture take long to render; the cache's own keys do not
    tell captures apart, so each capture (as its annotations stand now) gets a folder.
    """
    digest = hashlib.sha256(str(root.resolve()).encode())
    for path in sorted((root / "annotations").rglob("*.json")):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return cache_root() / "bench" / "masks" / digest.hexdigest()[:16]


def backend_combinations(
    device: torch.device, grid: str = "all", sampler: str = "all"
) -> list[tuple[str, str]]:
    """(grid backend, sampler kind) pairs that run on ``device``, fused ones first."""
    grids = (["tcnn"] if device.type == "cuda" and tcnn_available() else []) + ["torch"]
    samplers = (["nerfacc"] if nerfacc_kernels(device) else []) + ["torch"]
    for name, wanted, present in (("grid", grid, grids), ("sampler", sampler, samplers)):
        if wanted != "all" and wanted not in present:
            raise ConfigError(
                f"--{name} {wanted}: not usable on {device} here (usable: {', '.join(present)})"
            )
    return [(g, s) for g in grids for s in samplers if grid in ("all", g) and sampler in ("all", s)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    # ru_maxrss is KiB on Linux; a process-wide high-water mark that cannot be reset, so
    # a later combination reports at least an earlier one's peak.
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# --------------------------------------------------------------------------- parts


def bench_encoding(
    cfg: EncodingConfig, backend: str, device: torch.device, s: Settings
) -> dict[str, Any]:
    """fwd and fwd+bwd points/s of the configured grid with ``backend``."""
    tool = bench_encoding_module()
    enc = HashGridEncoding(dataclasses.replace(cfg, backend=backend), device=device).to(device)
    torch.manual_seed(0)
    x = torch.rand(s.enc_points, 3, device=device)
    result = tool.bench_one(f"{backend} grid", enc, enc.params, x, s.enc_repeats)
    result["n_params"] = enc.n_params
    return result


def bench_training_step(trainer: Trainer, s: Settings) -> dict[str, Any]:
    """Rays/s of ``training_step`` over ``timed_steps`` after ``warmup_steps``."""
    device = trainer.device
    start = time.perf_counter()
    for _ in range(s.warmup_steps):
        trainer.training_step()
        trainer.step += 1
    _sync(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(s.timed_steps):
        trainer.training_step()
        trainer.step += 1
    _sync(device)
    seconds = time.perf_counter() - start
    batch = trainer.cfg.train.batch_rays
    return {
        "warmup_steps": s.warmup_steps,
        "warmup_seconds": warmup_s,
        "steps": s.timed_steps,
        "batch_rays": batch,
        "seconds": seconds,
        "steps_per_s": s.timed_steps / seconds,
        "rays_per_s": s.timed_steps * batch / seconds,
    }


def bench_time_to_psnr(
    trainer: Trainer, minutes: float, s: Settings, trained_s: float
) -> dict[str, Any]:
    """Train on until every target is reached, ``minutes`` of training pass, or train.steps.

    Validation (held-out cameras, ``val_views`` views) runs every ``val_every`` steps and
    its time is not counted; ``trained_s`` is training time already spent (warm-up and the
    timed steps count, they are training too).
    """
    device = trainer.device
    budget_s = minutes * 60.0
    max_steps = trainer.cfg.train.steps
    history: list[dict[str, float]] = []
    reached: dict[float, dict[str, float]] = {}
    train_s = trained_s
    stopped_by = "targets"

    def validate() -> None:
        psnr = float(trainer.validate(s.val_views)["val_psnr"])
        history.append({"step": trainer.step, "train_seconds": train_s, "val_psnr": psnr})
        for target in PSNR_TARGETS:
            if target not in reached and psnr >= target:
                reached[target] = {"step": trainer.step, "train_seconds": train_s}

    while len(reached) < len(PSNR_TARGETS):
        if train_s >= budget_s:
            stopped_by = "time"
            break
        if trainer.step >= max_steps:
            stopped_by = "steps"
            break
        _sync(device)
        start = time.perf_counter()
        trainer.training_step()
        trainer.step += 1
        _sync(device)
        train_s += time.perf_counter() - start
        if trainer.step % s.val_every == 0:
            validate()
    if not history or history[-1]["step"] != trainer.step:
        validate()
    best = max(h["val_psnr"] for h in history)
    targets: dict[str, dict[str, Any]] = {}
    for target in PSNR_TARGETS:
        if target in reached:
            targets[f"{target:g}"] = {"reached": True, **reached[target]}
        else:
            limit = f"{minutes:g} min" if stopped_by == "time" else f"{trainer.step} steps"
            targets[f"{target:g}"] = {
                "reached": False,
                "note": f"not reached in {limit} (best {best:.2f} dB)",
            }
    return {
        "targets": targets,
        "best_val_psnr": best,
        "steps": trainer.step,
        "train_seconds": train_s,
        "minutes_budget": minutes,
        "stopped_by": stopped_by,
        "val_every": s.val_every,
        "val_views": s.val_views,
        "history": history,
    }


def _scaled_K(K: torch.Tensor, scale: float) -> torch.Tensor:
    """Intrinsics of the same view resampled by ``scale`` (pixel centres at +0.5 scale too)."""
    return torch.diag(torch.tensor([scale, scale, 1.0])) @ K.float()


def _time_render(trainer: Trainer, view: dict[str, Any], repeats: int) -> dict[str, Any]:
    frames = trainer.train_frames
    camera = CameraTensors(
        K=view["K"], R=view["R"], t=view["t"], height=view["height"], width=view["width"]
    )

    def render() -> torch.Tensor:
        return render_camera(
            trainer.avatar,
            frames,
            camera,
            view["frame_id"],
            view["camera_id"],
            trainer.device,
        )

    image = render()  # warm-up: sampler caches, kernels, allocator
    times = []
    for _ in range(repeats):
        _sync(trainer.device)
        start = time.perf_counter()
        render()
        _sync(trainer.device)
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return {
        "resolution": f"{view['width']}x{view['height']}",
        "repeats": repeats,
        "median_s": median,
        "fps": 1.0 / median,
        "coverage": float((image.amax(-1) > 0.02).float().mean()),
    }


def bench_render(trainer: Trainer, data: FitData, s: Settings) -> dict[str, Any]:
    """FPS of a held-out view: the camera's full frame and a square crop around the hand."""
    assert data.val is not None
    views, stack = data.val.views, data.val.stack
    # The synthetic rig has landscape 512x334 and portrait 334x512 cameras: prefer the former.
    landscape = [i for i, v in enumerate(views) if (v.camera.width, v.camera.height) == (512, 334)]
    i = landscape[0] if landscape else 0
    cam = views[i]
    common = {"frame_id": int(stack.frame_ids[i]), "camera_id": int(stack.camera_ids[i])}
    full = {
        **common,
        "K": _scaled_K(torch.from_numpy(cam.camera.K), s.full_scale),
        "R": torch.from_numpy(cam.camera.R).float(),
        "t": torch.from_numpy(cam.camera.t).float(),
        "width": round(cam.camera.width * s.full_scale),
        "height": round(cam.camera.height * s.full_scale),
    }
    crop = {
        **common,
        "K": _scaled_K(stack.K[i], s.crop_size / stack.width),
        "R": stack.R[i],
        "t": stack.t[i],
        "width": s.crop_size,
        "height": s.crop_size,
    }
    trainer.avatar.eval()
    try:
        return {
            "view": {"camera": cam.camera_id, "frame": cam.frame_idx, "seq": cam.seq_name},
            "full_frame": _time_render(trainer, full, s.render_repeats),
            "crop": _time_render(trainer, crop, s.render_repeats),
        }
    finally:
        trainer.avatar.train()


def bench_combination(
    cfg: FitConfig,
    data: FitData,
    work: Path,
    grid: str,
    sampler: str,
    minutes: float,
    s: Settings,
) -> dict[str, Any]:
    device = torch.device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    encoding = bench_encoding(cfg.model.field.encoding, grid, device, s)
    trainer = Trainer(cfg, data, work / f"run_{grid}_{sampler}")
    backends = trainer.avatar.backends()
    step = bench_training_step(trainer, s)
    psnr = bench_time_to_psnr(
        trainer, minutes, s, trained_s=step["warmup_seconds"] + step["seconds"]
    )
    render = bench_render(trainer, data, s)
    return {
        "grid": grid,
        "sampler": sampler,
        "backends": backends,
        "encoding": encoding,
        "train_step": step,
        "time_to_psnr": psnr,
        "render": render,
        "memory": _peak_memory(device),
    }


# --------------------------------------------------------------------------- report


def run_bench(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine")
    if args.minutes <= 0:
        raise ConfigError(f"--minutes must be > 0, got {args.minutes}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    s = settings_for(device, args.quick)
    if args.val_every:
        s = dataclasses.replace(s, val_every=args.val_every)
    combos = backend_combinations(device, args.grid, args.sampler)
    if args.frames < 0:
        raise ConfigError(f"--frames must be >= 0, got {args.frames}")
    root = capture_root(args.data, args.preset, args.seed, args.frames)
    base = [
        *BASE_OVERRIDES,
        *(QUICK_OVERRIDES if args.quick else []),
        *args.set,
        f"train.device={args.device}",
    ]
    cfg = load_config(FitConfig, args.config, base)
    load_avg = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    results = []
    with tempfile.TemporaryDirectory(prefix="handnerf_bench_") as tmp:
        work = Path(tmp)
        data_start = time.perf_counter()
        data = load_fit_data(root, cfg.data, mask_cache=mask_cache_for(root), progress=False)
        data_seconds = time.perf_counter() - data_start
        if data.val is None:
            raise ConfigError(
                f"{root}: no held-out cameras to validate on; set data.holdout_every > 0"
            )
        for grid, sampler in combos:
            combo_cfg = load_config(
                FitConfig,
                args.config,
                [*base, f"model.field.encoding.backend={grid}", f"model.sampler.kind={sampler}"],
            )
            print(f"bench: grid={grid} sampler={sampler}", file=sys.stderr)
            results.append(bench_combination(combo_cfg, data, work, grid, sampler, args.minutes, s))
    machine = {
        **machine_info(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        # Other processes on the machine skew every number; record how busy it was.
        "load_average_start": list(load_avg),
        "load_average_end": list(os.getloadavg()),
    }
    return {
        "command": shlex.join(["python", "tools/bench.py", *argv]),
        "date": started.isoformat(timespec="seconds"),
        "wall_seconds": (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(),
        # Reading, cropping and masking the views (masks are cached across runs).
        "data_seconds": data_seconds,
        "machine": machine,
        "device": str(device),
        "data": str(root),
        "preset": None if args.data is not None else args.preset,
        "frames": None if args.data is not None or not args.frames else args.frames,
        "config": str(args.config),
        "overrides": base,
        "quick": bool(args.quick),
        "model": {
            "n_levels": cfg.model.field.encoding.n_levels,
            "log2_hashmap_size": cfg.model.field.encoding.log2_hashmap_size,
            "batch_rays": cfg.train.batch_rays,
            "train_views": len(data.train.views),
            "heldout_views": len(data.val.views),
        },
        "results": results,
    }


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if math.isfinite(value) else "n/a"


def markdown(report: dict[str, Any]) -> str:
    """A Markdown table of ``report`` (one row per backend combination)."""
    m = report["machine"]
    where = (
        m.get("cuda_device")
        or f"{m['processor']}, {m['cpu_count']} cores, {m['cpu_threads']} threads"
    )
    results = report["results"]
    full_res = results[0]["render"]["full_frame"]["resolution"] if results else "full"
    crop_res = results[0]["render"]["crop"]["resolution"] if results else "crop"
    memory = "peak GPU memory (MiB)" if report["device"].startswith("cuda") else "peak RSS (MiB)"
    data = report["preset"] or report["data"]
    if report.get("frames"):
        data += f" ({report['frames']} training frames)"
    lines = [
        f"handnerf bench, {report['date']}: device {report['device']} ({where}), "
        f"torch {m['torch']}, data {data}, "
        f"load average {m['load_average_start'][0]:.1f} at start",
        "",
        f"| grid | sampler | encoding fwd+bwd (M points/s) | train step (rays/s) | "
        f"time to 30 dB | time to 33 dB | best held-out PSNR (dB) | "
        f"render {full_res} (FPS) | render {crop_res} (FPS) | {memory} |",
        "|---|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        targets = r["time_to_psnr"]["targets"]
        cells = []
        for key in ("30", "33"):
            t = targets[key]
            cells.append(
                f"{t['train_seconds']:.0f} s (step {t['step']})" if t["reached"] else t["note"]
            )
        mem = r["memory"].get("peak_gpu_mib", r["memory"].get("peak_rss_mib", float("nan")))
        lines.append(
            f"| {r['grid']} | {r['sampler']} | "
            f"{_fmt(r['encoding']['fwd_bwd_points_per_s'] / 1e6, 2)} | "
            f"{_fmt(r['train_step']['rays_per_s'], 0)} | {cells[0]} | {cells[1]} | "
            f"{_fmt(r['time_to_psnr']['best_val_psnr'], 2)} | "
            f"{_fmt(r['render']['full_frame']['fps'], 2)} | "
            f"{_fmt(r['render']['crop']['fps'], 2)} | {_fmt(mem, 0)} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--preset", choices=("tiny", "demo", "fullscale"), default="demo")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthesised capture")
    parser.add_argument(
        "--frames", type=int, default=0, help="synthesise only this many training frames"
    )
    parser.add_argument("--data", type=Path, default=None, help="capture root (skips synthesis)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="time-to-PSNR budget")
    parser.add_argument("--val-every", type=int, default=0, help="steps between validations")
    parser.add_argument("--grid", choices=("all", "tcnn", "torch"), default="all")
    parser.add_argument("--sampler", choices=("all", "nerfacc", "torch"), default="all")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="tiny model, seconds (tests)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (.md beside it)")
    parser.add_argument(
        "--render-run",
        type=Path,
        default=None,
        metavar="RUN",
        help="only the render benchmark of a fitted run: reference vs fast path at 256x256 "
        "and 128x128, PSNR difference, preview FPS (tools/bench_render.py)",
    )
    parser.add_argument("--views", type=int, default=4, help="--render-run: held-out views")
    parser.add_argument("--repeats", type=int, default=3, help="--render-run: renders each")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render_run is not None:
        render_argv = ["--run", str(args.render_run), "--views", str(args.views)]
        render_argv += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        if args.out is not None:
            render_argv += ["--out", str(args.out)]
        return int(bench_encoding_module("bench_render").main(render_argv))
    try:
        report = run_bench(args, argv)
    except HandnerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table = markdown(report)
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".md").write_text(table)
    else:
        print(text)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
