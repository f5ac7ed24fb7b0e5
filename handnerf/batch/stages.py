"""One stage of one plan entry, as the library call its command makes, and its marker.

An entry's folder ``OUT/entries/NAME/``::

    entry.json           what the entry is (a re-run must match it)
    cache/               prepare: the ``handnerf prepare`` cache of its selection
    run/                 fit: the ``handnerf fit`` run folder (checkpoints, metrics)
    report/              eval: ``report.json``, ``report.html`` and the scored images
    orbit.gif, novel_pose.gif   render
    done/STAGE.json      a stage's completion marker, written atomically after its outputs

A stage whose marker exists is finished and is never run again: a re-run of the plan does
only what is missing. A fit killed midway resumes from its checkpoint: the fit stage
resumes whenever ``run/checkpoints/latest.pt`` exists and its marker does not.

Each stage runs where Ray puts it (any worker of the cluster: the output folder must be
shared). A user error (:class:`~handnerf.errors.HandnerfError`, e.g. a sequence whose
every view is filtered out) comes back as a result, not an exception: it would fail again
the same way, so it is reported and not retried; anything else (a crash, a killed worker)
is retried by Ray.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handnerf import interrupts
from handnerf.batch.entries import PlanEntry
from handnerf.batch.plan import STAGES, BatchPlan
from handnerf.errors import DataError, HandnerfError
from handnerf.files import atomic_write_json

#: Progress point marked when a stage starts running (value ``NAME/STAGE@PID``), so a
#: fault harness can find the worker process of a stage (see handnerf/interrupts.py).
STAGE_POINT = "batch.stage"
#: File name of each render mode's video.
VIDEO_STEMS: dict[str, str] = {"orbit": "orbit", "pose": "novel_pose"}


@dataclass(frozen=True)
class EntryPaths:
    """Where an entry's outputs go (see the module docstring): its folder ``root`` and,
    derived from it, the files and folders of its stages."""

    root: Path

    @classmethod
    def of(cls, plan: BatchPlan, entry: PlanEntry) -> EntryPaths:
        return cls(Path(plan.out) / "entries" / entry.name)

    @property
    def definition(self) -> Path:
        return self.root / "entry.json"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def video(self, mode: str, fmt: str) -> Path:
        return self.root / f"{VIDEO_STEMS[mode]}.{fmt}"

    def marker(self, stage: str) -> Path:
        return self.root / "done" / f"{stage}.json"


def read_marker(paths: EntryPaths, stage: str) -> dict[str, Any] | None:
    """The completion marker of ``stage``, or None when the stage has not finished."""
    path = paths.marker(stage)
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # written atomically, so only a foreign file reads badly: redo it
    return marker if isinstance(marker, dict) and marker.get("stage") == stage else None


def run_stage(
    plan: BatchPlan, entry: PlanEntry, stage: str, device: str, threads: int
) -> dict[str, Any]:
    """Run ``stage`` of ``entry`` here; returns its marker (written after its outputs).

    Args:
        device: ``"cpu"`` or ``"auto"`` (the GPU Ray gave this task).
        threads: CPU threads to use (the task's ``num_cpus``).

    Returns:
        The marker (``status: done``), or ``{status: error, error, traceback}`` when a
        :class:`HandnerfError` stopped the stage (nothing is marked done then).
    """
    import torch

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    interrupts.reached(STAGE_POINT, f"{entry.name}/{stage}@{os.getpid()}")
    torch.set_num_threads(max(1, threads))
    paths = EntryPaths.of(plan, entry)
    t0 = time.monotonic()
    try:
        details = STAGE_FUNCTIONS[stage](plan, entry, paths, device, threads)
    except HandnerfError as exc:
        return {
            "status": "error",
            "stage": stage,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    marker = {
        "stage": stage,
        "status": "done",
        "entry": entry.name,
        "seconds": time.monotonic() - t0,
        "pid": os.getpid(),
        "device": device,
        **details,
    }
    atomic_write_json(paths.marker(stage), marker, indent=2)
    return marker


# --------------------------------------------------------------------------- the stages


def _prepare(
    plan: BatchPlan, entry: PlanEntry, paths: EntryPaths, device: str, threads: int
) -> dict[str, Any]:
    from handnerf.data.prepare import prepare_cache
    from handnerf.data.prepare_settings import spec_from_settings

    settings = {
        **plan.prepare,
        "split": entry.split,
        "capture": entry.capture,
        "seqs": list(entry.sequences()),
        "hand": entry.hand,
    }
    spec = spec_from_settings(settings, None if plan.mano_dir is None else str(plan.mano_dir))
    summary = prepare_cache(entry.interhand, paths.cache, spec, workers=threads, progress=False)
    return {"n_views": summary.n_views, "n_kept": summary.n_kept, "computed": summary.computed}


def _fit(
    plan: BatchPlan, entry: PlanEntry, paths: EntryPaths, device: str, threads: int
) -> dict[str, Any]:
    from handnerf.train.checkpoint import LATEST, load_checkpoint
    from handnerf.train.fit_job import run_fit

    latest = paths.run / "checkpoints" / LATEST
    # A checkpoint without a marker: an earlier attempt was killed or stopped; go on from it.
    resumed_from = int(load_checkpoint(latest)["step"]) if latest.is_file() else None
    result = run_fit(
        data_root=paths.cache,
        out_dir=paths.run,
        config_path=plan.config,
        overrides=[*entry.fit_overrides(plan.mano_dir), f"train.device={device}"],
        resume=resumed_from is not None,
        progress=False,
    )
    if result.stopped_by == "signal":
        # Not a finished fit: fail the task so that Ray retries it, from this checkpoint.
        raise RuntimeError(
            f"{entry.name}: the fit was stopped by a signal at step {result.step} "
            f"(checkpoint {result.checkpoint}); a retry resumes it"
        )
    return {"step": result.step, "stopped_by": result.stopped_by, "resumed_from": resumed_from}


def _eval(
    plan: BatchPlan, entry: PlanEntry, paths: EntryPaths, device: str, threads: int
) -> dict[str, Any]:
    from handnerf.evaluation.evaluate import evaluate_run
    from handnerf.runs.loader import load_run

    splits = tuple(
        s for s in plan.eval.splits if s != "novel_pose" or entry.novel_pose_seq is not None
    )
    if not splits:
        raise DataError(f"{entry.label}: no evaluation set (no novel-pose sequence)")
    run = load_run(paths.run, device=device)
    report = evaluate_run(
        run,
        eval_protocol(plan),
        paths.report,
        splits=splits,
        max_views=plan.eval.max_views,
        chunk=plan.eval.chunk,
        progress=False,
    )
    return {"report": str(paths.report / "report.json"), "sets": sorted(report["sets"])}


def _render(
    plan: BatchPlan, entry: PlanEntry, paths: EntryPaths, device: str, threads: int
) -> dict[str, Any]:
    from handnerf.render.jobs import render_orbit, render_pose_sequence
    from handnerf.render.video import write_video
    from handnerf.runs.loader import load_run
    from handnerf.train.fit_data import sequence_mano

    cfg = plan.render
    run = load_run(paths.run, device=device)
    data_cfg = run.cfg.data
    videos: dict[str, str] = {}
    for mode in cfg.modes:
        if mode == "orbit":
            mano = sequence_mano(run.data_root, data_cfg, data_cfg.train_seq, data_cfg.stride)
            frames = render_orbit(run, mano.index(0), cfg.frames, cfg.size, cfg.chunk, False)
        elif entry.novel_pose_seq is not None:
            mano = sequence_mano(run.data_root, data_cfg, entry.novel_pose_seq, 1)
            frames = render_pose_sequence(run, mano, cfg.frames, cfg.size, False, cfg.chunk, False)
        else:
            continue  # no novel-pose sequence: nothing to drive the avatar with
        path = write_video(frames, paths.video(mode, cfg.format), fps=cfg.fps)
        videos[mode] = str(path)
    return {"videos": videos}


STAGE_FUNCTIONS = {"prepare": _prepare, "fit": _fit, "eval": _eval, "render": _render}


def eval_protocol(plan: BatchPlan) -> Any:
    """The plan's evaluation protocol, with its changes (named in the protocol's name)."""
    import dataclasses

    from handnerf.evaluation.protocols import get_protocol

    protocol = get_protocol(plan.protocol)
    if not plan.protocol_changes:
        return protocol
    suffix = ",".join(f"{k}={v}" for k, v in sorted(plan.protocol_changes.items()))
    return dataclasses.replace(protocol, name=f"{protocol.name}[{suffix}]", **plan.protocol_changes)
