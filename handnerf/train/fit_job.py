"""``handnerf fit`` as a library call: config, data, run folder, trainer, logger.

Under ``torchrun`` every rank runs :func:`run_fit`; rank 0 alone prepares the run folder
and writes in it (:mod:`handnerf.train.distributed`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from handnerf.config import config_to_dict, load_config
from handnerf.errors import CheckpointError, ConfigError, ResourceError
from handnerf.files import atomic_write_bytes, machine_info, remove_temp_files_under
from handnerf.train.checkpoint import LATEST
from handnerf.train.config import FitConfig
from handnerf.train.distributed import DataParallel, process_group
from handnerf.train.fit_data import FitData, load_fit_data
from handnerf.train.trainer import FitResult, Trainer


def run_fit(
    data_root: Path,
    out_dir: Path,
    config_path: Path | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    use_wandb: bool = False,
    progress: bool = True,
) -> FitResult:
    cfg = load_config(FitConfig, config_path, overrides or [])
    with process_group(cfg.train.device) as parallel:
        return _run_fit(cfg, Path(data_root), Path(out_dir), parallel, resume, use_wandb, progress)


def _run_fit(
    cfg: FitConfig,
    data_root: Path,
    out_dir: Path,
    parallel: DataParallel,
    resume: bool,
    use_wandb: bool,
    progress: bool,
) -> FitResult:
    """:func:`run_fit` in one rank of a (possibly one-process) group."""
    main = parallel.is_main
    progress = progress and main
    latest = out_dir / "checkpoints" / LATEST
    if latest.exists() and not resume:
        raise CheckpointError(
            f"{out_dir} already holds a fit ({latest}); pass --resume to continue it or choose "
            "another --out"
        )
    if resume and not latest.exists():
        raise CheckpointError(f"--resume: no checkpoint at {latest}")
    if main:
        remove_temp_files_under(out_dir)  # one fit per run folder: these are a killed run's

    def load() -> FitData:
        return load_fit_data(
            data_root, cfg.data, mask_cache=out_dir / "mask_cache", progress=progress
        )

    # Rank 0 first: it renders the masks into the cache, which the other ranks then read.
    data = load() if main else None
    parallel.barrier()
    data = data if data is not None else load()
    wandb_run = _start_wandb(cfg, out_dir) if use_wandb and main else None
    trainer = Trainer(cfg, data, out_dir, wandb_run=wandb_run, parallel=parallel)
    if resume:
        step = trainer.resume()  # every rank reads the same checkpoint
        if main:
            trim_metrics(trainer.metrics_path, step)
            print(f"resuming at step {step} from {latest}")
    elif main:
        from omegaconf import OmegaConf

        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(
                out_dir / "config.yaml",
                OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg))).encode(),
            )
            atomic_write_bytes(
                out_dir / "run.json",
                json.dumps(run_info(cfg, data_root, data, trainer), indent=2).encode(),
            )
        except OSError as exc:
            raise ResourceError(f"cannot write the run folder {out_dir}: {exc}") from exc
        # records of an earlier start that was killed before its first checkpoint
        trim_metrics(trainer.metrics_path, 0)
    try:
        return trainer.fit(progress=progress)
    finally:
        if wandb_run is not None:
            wandb_run.finish()


def trim_metrics(path: Path, step: int) -> int:
    """Drop log records past ``step`` (and a line cut short by a kill); returns how many.

    A fit killed after its last checkpoint has logged steps that the resumed fit will run
    and log again; without trimming they would appear twice.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_step = int(record.get("step", 0))
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
            dropped += 1
            continue
        if record_step > step or (record_step == step and record.get("final")):
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())
    return dropped


def run_info(cfg: FitConfig, data_root: Path, data: Any, trainer: Trainer) -> dict[str, Any]:
    return {
        "data_root": str(Path(data_root).resolve()),
        "hand": data.hand_identity,
        "data_fingerprint": data.fingerprint,
        "cameras": data.camera_names,
        "train_cameras": data.train_cameras,
        "holdout_cameras": data.holdout_cameras,
        "n_train_views": len(data.train.views),
        "n_train_frames": len(data.train.frame_keys),
        "selection": data.selection,
        "backends": trainer.avatar.backends(),
        "lpips_loss_net": None if trainer.perceptual is None else trainer.perceptual.net_name,
        "machine": machine_info(),
    }


def _start_wandb(cfg: FitConfig, out_dir: Path) -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise ConfigError("--wandb needs the wandb package: pip install 'handnerf[wandb]'") from exc
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "handnerf"),
        dir=str(out_dir),
        config=config_to_dict(cfg),
        mode=os.environ.get("WANDB_MODE", "online"),
    )
