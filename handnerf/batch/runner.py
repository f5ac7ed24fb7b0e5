"""Run a checked plan on Ray: each entry's stages as tasks, one progress bar, one summary.

Without an address a local Ray is started for the run and shut down at its end; with one
(``auto``, ``HOST:PORT``, ``ray://HOST:10001``) the driver joins that cluster, and the
same tasks run on its machines (which need handnerf installed and the plan's paths and
output folder mounted at the same places).

Entries run concurrently; within an entry the stages run in order, each submitted when
the one before has finished (or found finished). Each stage asks for its resources
(``plan.resources``): prepare only CPUs; fit, eval and render a GPU when the cluster has
any, else CPUs. Ray retries a task whose worker died or that raised (``max_retries``);
a stage that ends in a handnerf error fails its entry at once (it would fail again), and
the other entries go on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handnerf.batch.entries import PlanEntry
from handnerf.batch.plan import STAGES, BatchPlan, definition_text
from handnerf.batch.stages import EntryPaths, read_marker, run_stage
from handnerf.batch.summary import write_summary
from handnerf.errors import ConfigError
from handnerf.files import atomic_write_text


@dataclass
class EntryOutcome:
    """What happened to one entry in this run of the plan.

    ``stages[stage]`` is ``"ran"``, ``"skipped"`` (its marker existed), ``"failed"`` or
    absent (never reached).
    """

    entry: PlanEntry
    stages: dict[str, str] = field(default_factory=dict)
    markers: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    failed_stage: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "done" if len(self.markers) == len(STAGES) else "incomplete"


@dataclass
class BatchOutcome:
    outcomes: list[EntryOutcome]
    summary_json: Path
    summary_html: Path
    seconds: float
    cluster: dict[str, Any]

    @property
    def failed(self) -> list[EntryOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def check_entry_folders(plan: BatchPlan) -> None:
    """Refuse (before anything starts) an entry whose folder holds another entry's results."""
    for entry in plan.entries:
        paths = EntryPaths.of(plan, entry)
        if not paths.definition.is_file():
            continue
        wanted = definition_text(plan.entry_definition(entry))
        try:
            found = definition_text(json.loads(paths.definition.read_text()))
        except (OSError, ValueError):
            found = None
        if found != wanted:
            raise ConfigError(
                f"{entry.label}: {paths.root} holds the results of another definition of "
                f"entry {entry.name!r} ({paths.definition}); rename the entry, choose another "
                "--out, or delete that folder"
            )


def run_plan(
    plan: BatchPlan,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
) -> BatchOutcome:
    """Run every missing stage of ``plan``; write ``OUT/summary.json`` and ``summary.html``.

    Args:
        address: a Ray cluster to join; None starts a local one (``num_cpus`` CPUs, default
            every core) for this run.
    """
    import ray
    from tqdm import tqdm

    check_entry_folders(plan)
    if address is None:
        _check_fits(plan, num_cpus or os.cpu_count() or 1)
    t0 = time.monotonic()
    for entry in plan.entries:
        paths = EntryPaths.of(plan, entry)
        if not paths.definition.is_file():
            atomic_write_text(paths.definition, definition_text(plan.entry_definition(entry)))
    outcomes = [EntryOutcome(entry) for entry in plan.entries]
    for outcome in outcomes:
        _read_markers(plan, outcome)
    if all(len(o.markers) == len(STAGES) for o in outcomes):
        # Nothing is missing: no cluster to start or join.
        seconds = time.monotonic() - t0
        summary_json, summary_html = write_summary(plan, outcomes, seconds, {})
        return BatchOutcome(outcomes, summary_json, summary_html, seconds, {})
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    cluster: dict[str, Any] = {}
    try:
        resources = ray.cluster_resources()
        cluster = {
            "address": address or "local",
            "cpus": resources.get("CPU", 0),
            "gpus": resources.get("GPU", 0),
        }
        remote = ray.remote(run_stage)
        pending: dict[Any, tuple[EntryOutcome, str]] = {}
        with tqdm(
            total=len(outcomes) * len(STAGES), unit="stage", desc="batch", disable=not progress
        ) as bar:
            bar.update(sum(len(o.markers) for o in outcomes))

            def advance(outcome: EntryOutcome) -> None:
                """Submit the entry's next unfinished stage."""
                for stage in STAGES:
                    if stage in outcome.markers:
                        continue
                    options, device, threads = _task_options(plan, outcome.entry, stage, cluster)
                    ref = remote.options(**options).remote(
                        plan, outcome.entry, stage, device, threads
                    )
                    pending[ref] = (outcome, stage)
                    return

            def fail(outcome: EntryOutcome, stage: str, error: str) -> None:
                outcome.error, outcome.failed_stage = error, stage
                outcome.stages[stage] = "failed"
                bar.update(len(STAGES) - len(outcome.markers))

            for outcome in outcomes:
                advance(outcome)
            while pending:
                bar.set_postfix(
                    running=len(pending), failed=sum(o.error is not None for o in outcomes)
                )
                ready, _ = ray.wait(list(pending), num_returns=1)
                outcome, stage = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except ray.exceptions.RayError as exc:
                    fail(outcome, stage, _short_error(exc))
                    continue
                if result.get("status") != "done":
                    fail(outcome, stage, str(result.get("error")))
                    continue
                outcome.markers[stage] = result
                outcome.stages[stage] = "ran"
                bar.update(1)
                advance(outcome)
            bar.set_postfix(failed=sum(o.error is not None for o in outcomes))
    finally:
        ray.shutdown()
        seconds = time.monotonic() - t0
        summary_json, summary_html = write_summary(plan, outcomes, seconds, cluster)
    return BatchOutcome(outcomes, summary_json, summary_html, seconds, cluster)


def _read_markers(plan: BatchPlan, outcome: EntryOutcome) -> None:
    """Take the entry's finished stages (their markers) as skipped, up to the first missing
    one: the stages after it use its outputs, so they run again after it."""
    paths = EntryPaths.of(plan, outcome.entry)
    for stage in STAGES:
        marker = read_marker(paths, stage)
        if marker is None:
            return
        outcome.markers[stage] = marker
        outcome.stages[stage] = "skipped"


def _check_fits(plan: BatchPlan, cpus: int) -> None:
    """On a local Ray, a stage asking for more CPUs than it has would wait forever.
    (A cluster may scale up to meet a request: not checked there.)"""
    for stage in STAGES:
        need = getattr(plan.resources, stage).num_cpus
        if need > cpus:
            raise ConfigError(
                f"{plan.path}: resources.{stage}.num_cpus={need:g} but the local Ray has "
                f"{cpus} CPUs (--num-cpus)"
            )


def _task_options(
    plan: BatchPlan, entry: PlanEntry, stage: str, cluster: dict[str, Any]
) -> tuple[dict[str, Any], str, int]:
    """Ray options, torch device and CPU threads of one stage's task."""
    res = getattr(plan.resources, stage)
    gpus = res.num_gpus if stage != "prepare" and cluster["gpus"] > 0 else 0.0
    options: dict[str, Any] = {
        "num_cpus": res.num_cpus,
        "num_gpus": gpus,
        "max_retries": plan.max_retries,
        # Exceptions too: handnerf errors come back as results (run_stage), so what
        # raises is a crash, an OOM or a stopped fit, which a retry can get past.
        "retry_exceptions": True,
        "name": f"{entry.name}/{stage}",
    }
    if entry.env:
        options["runtime_env"] = {"env_vars": dict(entry.env)}
    # Ray limits a GPU task to its GPUs (CUDA_VISIBLE_DEVICES); a CPU task says so itself.
    device = "auto" if gpus > 0 else "cpu"
    return options, device, max(1, int(res.num_cpus))


def _short_error(exc: BaseException) -> str:
    """The first lines of a Ray error: the exception itself, not Ray's whole traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
