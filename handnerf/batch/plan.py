"""A batch plan: which avatars to fit, from which InterHand2.6M root, and how.

A plan is a YAML file (see docs/scale.md). Everything in it is checked before any stage
runs, and every error names the plan file and the entry or field at fault: a root that
does not exist, a split without annotations, an unknown capture or sequence (listing the
ones that exist), a bad config key, two entries writing one folder.

The entries (explicit, or ``every:`` capture and sequence matching a pattern) are
expanded by :mod:`handnerf.batch.entries`; the settings shared by every entry (protocol,
prepare options, fit config, eval/render options, resources, retries) are read here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handnerf.batch.entries import PlanEntry, expand_entries, optional_path, strings
from handnerf.config import choice, config_to_dict
from handnerf.errors import ConfigError, HandnerfError

#: The stages of an entry, in order.
STAGES: tuple[str, ...] = ("prepare", "fit", "eval", "render")
TOP_KEYS: tuple[str, ...] = (
    "interhand",
    "mano_dir",
    "out",
    "protocol",
    "prepare",
    "config",
    "overrides",
    "eval",
    "render",
    "resources",
    "max_retries",
    "entries",
)
#: Protocol fields a plan may change (a preview at a smaller size, say); the report's
#: protocol name then says so.
PROTOCOL_FIELDS: tuple[str, ...] = ("crop_size",)


@dataclass
class EvalStageConfig:
    """``handnerf eval``'s options for every entry."""

    #: Evaluation sets; ``novel_pose`` is dropped for entries without a novel-pose sequence.
    splits: list[str] = field(default_factory=lambda: ["novel_view", "novel_pose"])
    max_views: int | None = None
    chunk: int = 16384


@dataclass
class RenderStageConfig:
    """``handnerf render``'s options: one GIF per mode (``pose`` needs a novel-pose sequence)."""

    modes: list[str] = field(default_factory=lambda: ["orbit", "pose"])
    frames: int = 24
    size: int = 160
    fps: int = 12
    chunk: int = 16384
    format: str = choice("gif", ("gif", "mp4"))


@dataclass
class StageResources:
    """Ray resource requests of one stage. ``num_gpus`` applies only on a cluster with GPUs;
    elsewhere the stage runs on the CPU with ``num_cpus``."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class ResourcesConfig:
    prepare: StageResources = field(default_factory=StageResources)
    fit: StageResources = field(default_factory=lambda: StageResources(num_gpus=1.0))
    eval: StageResources = field(default_factory=lambda: StageResources(num_gpus=1.0))
    render: StageResources = field(default_factory=lambda: StageResources(num_gpus=1.0))


@dataclass
class BatchPlan:
    """A checked plan: settings shared by every entry, and the expanded entries."""

    path: Path
    out: Path
    mano_dir: Path | None
    protocol: str
    protocol_changes: dict[str, Any]
    prepare: dict[str, Any]
    config: Path | None
    eval: EvalStageConfig
    render: RenderStageConfig
    resources: ResourcesConfig
    max_retries: int
    entries: list[PlanEntry]

    def entry_definition(self, entry: PlanEntry) -> dict[str, Any]:
        """Everything that decides an entry's outputs (not resources or retries): a re-run
        must find the same in the entry's folder, or its finished stages would be stale."""
        config_text = self.config.read_text() if self.config is not None else ""
        return {
            "entry": {
                **{k: v for k, v in dataclasses.asdict(entry).items() if k != "label"},
                "interhand": str(entry.interhand),
                "env": dict(entry.env),
            },
            "mano_dir": None if self.mano_dir is None else str(self.mano_dir),
            "protocol": self.protocol,
            "protocol_changes": self.protocol_changes,
            "prepare": self.prepare,
            "config": None if self.config is None else str(self.config),
            "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
            "eval": config_to_dict(self.eval),
            "render": config_to_dict(self.render),
        }


# --------------------------------------------------------------------------- loading


def load_plan(path: str | Path, out: str | Path | None = None) -> BatchPlan:
    """Read, check and expand the plan at ``path``; ``out`` overrides its ``out:``.

    Raises:
        ConfigError: a bad plan, naming the file and the entry or field.
        SelectionError: an entry asks for a capture or sequence the root lacks.
        DataError: an entry's root or annotations are missing.
    """
    path = Path(path)
    raw = _read_yaml(path)
    where = str(path)
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(TOP_KEYS)}"
        )
    base = path.resolve().parent
    interhand = optional_path(raw.get("interhand"), base)
    mano_dir = optional_path(raw.get("mano_dir"), base)
    if mano_dir is not None and not mano_dir.is_dir():
        raise ConfigError(f"{where}: mano_dir: folder not found: {mano_dir}")
    out_dir = Path(out) if out is not None else optional_path(raw.get("out"), base)
    if out_dir is None:
        raise ConfigError(f"{where}: out: no output folder (set out: in the plan or pass --out)")
    protocol, changes = _protocol(raw.get("protocol", "handnerf-default"), where)
    prepare = _prepare_settings(raw.get("prepare") or {}, base, where)
    config = optional_path(raw.get("config"), base)
    if config is not None and not config.is_file():
        raise ConfigError(f"{where}: config: file not found: {config}")
    overrides = strings(raw.get("overrides"), f"{where}: overrides")
    max_retries = raw.get("max_retries", 2)
    if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
        raise ConfigError(
            f"{where}: max_retries: expected a whole number >= 0, got {max_retries!r}"
        )
    plan = BatchPlan(
        path=path,
        out=out_dir,
        mano_dir=mano_dir,
        protocol=protocol,
        protocol_changes=changes,
        prepare=prepare,
        config=config,
        eval=_section(EvalStageConfig, raw.get("eval"), f"{where}: eval"),
        render=_section(RenderStageConfig, raw.get("render"), f"{where}: render"),
        resources=_section(ResourcesConfig, raw.get("resources"), f"{where}: resources"),
        max_retries=max_retries,
        entries=[],
    )
    _check_stage_settings(plan, where)
    plan.entries = expand_entries(raw.get("entries"), interhand, overrides, base, where)
    for entry in plan.entries:
        _check_fit_config(plan, entry, where)
        if mano_dir is None:
            _check_procedural_hand(entry)
    return plan


def _check_procedural_hand(entry: PlanEntry) -> None:
    """Without ``mano_dir`` only synthetic captures can be fitted (the procedural hand)."""
    from handnerf.data.annotations import refuse_procedural_hand

    try:
        refuse_procedural_hand(entry.interhand, True, "fit")
    except HandnerfError as exc:
        raise type(exc)(f"{entry.label}: no mano_dir in the plan, and {exc}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        content = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"plan file not found: {path}") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: a plan is a mapping (interhand:, entries:, ...)")
    return content


def _section(cls: type, value: Any, where: str) -> Any:
    """A structured section (dataclass ``cls``) from a plan mapping, errors naming ``where``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from handnerf.config import check_choices

    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), value or {}))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {exc.msg if hasattr(exc, 'msg') else exc}") from exc
    try:
        check_choices(obj)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return obj


def _protocol(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    from handnerf.evaluation.protocols import get_protocol

    changes: dict[str, Any] = {}
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"name", *PROTOCOL_FIELDS})
        if unknown or "name" not in value:
            raise ConfigError(
                f"{where}: protocol: expected a name or {{name, {', '.join(PROTOCOL_FIELDS)}}}, "
                f"got {value!r}"
            )
        changes = {k: value[k] for k in PROTOCOL_FIELDS if k in value}
        value = value["name"]
    try:
        base = get_protocol(str(value))
    except ConfigError as exc:
        raise ConfigError(f"{where}: protocol: {exc}") from exc
    size = changes.get("crop_size")
    if size is not None and (base.image_mode != "crop" or not isinstance(size, int) or size < 8):
        raise ConfigError(
            f"{where}: protocol.crop_size: a whole number >= 8 for a crop protocol, got {size!r}"
        )
    return str(value), changes


def _prepare_settings(value: Any, base: Path, where: str) -> dict[str, Any]:
    """The plan's ``prepare:`` section (and the protocol file it names), selection keys out."""
    from handnerf.data.prepare_settings import (
        PROTOCOL_KEYS,
        SELECTION_KEYS,
        check_keys,
        load_protocol,
        spec_from_settings,
    )

    if not isinstance(value, dict):
        raise ConfigError(f"{where}: prepare: expected a mapping, got {value!r}")
    how_keys = tuple(k for k in PROTOCOL_KEYS if k not in SELECTION_KEYS)
    inline = {k: v for k, v in value.items() if k != "protocol"}
    check_keys(inline, f"{where} (the entries select split, capture, seqs and hand)", how_keys)
    settings: dict[str, Any] = {}
    if value.get("protocol") is not None:
        protocol_file = optional_path(value["protocol"], base)
        assert protocol_file is not None
        # The file's selection is the entries' business: only how it prepares is kept.
        settings = {
            k: v for k, v in load_protocol(protocol_file).items() if k not in SELECTION_KEYS
        }
    settings.update(inline)
    if inline.get("scale") is not None:
        settings.pop("crop", None)
    elif inline.get("crop") is not None:
        settings.pop("scale", None)
    try:
        spec_from_settings(settings, None)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: prepare: {exc}") from exc
    return settings


def _check_stage_settings(plan: BatchPlan, where: str) -> None:
    from handnerf.evaluation.evaluate import SPLITS

    bad = [s for s in plan.eval.splits if s not in SPLITS]
    if bad or not plan.eval.splits:
        raise ConfigError(
            f"{where}: eval.splits: choose from {', '.join(SPLITS)}, got {plan.eval.splits}"
        )
    if plan.eval.max_views is not None and plan.eval.max_views < 1:
        raise ConfigError(f"{where}: eval.max_views must be >= 1, got {plan.eval.max_views}")
    bad = [m for m in plan.render.modes if m not in ("orbit", "pose")]
    if bad:
        raise ConfigError(
            f"{where}: render.modes: choose from orbit, pose, got {plan.render.modes}"
        )
    for key in ("frames", "fps"):
        if getattr(plan.render, key) < 1:
            raise ConfigError(f"{where}: render.{key} must be >= 1")
    if plan.render.size < 8:
        raise ConfigError(f"{where}: render.size must be >= 8, got {plan.render.size}")
    for stage in STAGES:
        res = getattr(plan.resources, stage)
        if res.num_cpus <= 0 or res.num_gpus < 0:
            raise ConfigError(
                f"{where}: resources.{stage}: num_cpus must be > 0 and num_gpus >= 0, got {res}"
            )


def _check_fit_config(plan: BatchPlan, entry: PlanEntry, where: str) -> None:
    from handnerf.config import load_config
    from handnerf.train.config import FitConfig

    try:
        load_config(FitConfig, plan.config, entry.fit_overrides(plan.mano_dir))
    except HandnerfError as exc:
        raise ConfigError(f"{entry.label}: {exc}") from exc


def definition_text(definition: Mapping[str, Any]) -> str:
    """The canonical JSON of :meth:`BatchPlan.entry_definition` (what entry.json holds)."""
    return json.dumps(definition, indent=2, sort_keys=True)
