"""A batch plan: which avatars to fit, from which InterHand2.6M root, and how.

A plan is a YAML file (see docs/scale.md). Everything in it is checked before any stage
runs, and every error names the plan file and the entry or field at fault: a root that
does not exist, a split without annotations, an unknown capture or sequence (listing the
ones that exist), a bad config key, two entries writing one folder.

Entries come in two forms, both expanded here into :class:`PlanEntry` s:

* explicit: ``{split, capture, sequences: [TRAIN, NOVEL_POSE], hand}``;
* ``every: {split, sequences: PATTERN, novel_pose: PATTERN, hand, captures}``: every
  capture (subject) and sequence of the split whose name matches ``PATTERN`` (shell-style),
  read from the root's ``data.json``; the novel-pose sequence of each is the first other
  sequence of its capture matching ``novel_pose`` (none when absent).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handnerf.config import choice, config_to_dict
from handnerf.errors import ConfigError, DataError, HandnerfError, SelectionError

#: The stages of an entry, in order.
STAGES: tuple[str, ...] = ("prepare", "fit", "eval", "render")
#: Data keys each entry sets for its fit; a plan's overrides may not set them too.
ENTRY_DATA_KEYS: tuple[str, ...] = (
    "split",
    "capture",
    "hand",
    "train_seq",
    "novel_pose_seq",
    "mano_dir",
)
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
ENTRY_KEYS: tuple[str, ...] = (
    "name",
    "split",
    "capture",
    "sequences",
    "hand",
    "interhand",
    "overrides",
    "env",
)
EVERY_KEYS: tuple[str, ...] = ("split", "sequences", "novel_pose", "hand", "captures")
#: Protocol fields a plan may change (a preview at a smaller size, say); the report's
#: protocol name then says so.
PROTOCOL_FIELDS: tuple[str, ...] = ("crop_size",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


@dataclass(frozen=True)
class PlanEntry:
    """One avatar: a selection of a root, fitted with the plan's config plus its overrides.

    ``label`` says where it came from in the plan (``entries[2]``), for messages.
    """

    name: str
    label: str
    interhand: Path
    split: str
    capture: int
    hand: str
    train_seq: str
    novel_pose_seq: str | None
    overrides: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def fit_overrides(self, mano_dir: Path | None) -> list[str]:
        """The fit's ``key=value`` overrides: the plan's and the entry's, then its selection."""
        novel = "null" if self.novel_pose_seq is None else self.novel_pose_seq
        selection = [
            f"data.split={self.split}",
            f"data.capture={self.capture}",
            f"data.hand={self.hand}",
            f"data.train_seq={self.train_seq}",
            f"data.novel_pose_seq={novel}",
        ]
        if mano_dir is not None:
            selection.append(f"data.mano_dir={mano_dir}")
        return [*self.overrides, *selection]

    def sequences(self) -> tuple[str, ...]:
        return (self.train_seq,) + ((self.novel_pose_seq,) if self.novel_pose_seq else ())


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
    interhand = _optional_path(raw.get("interhand"), base)
    mano_dir = _optional_path(raw.get("mano_dir"), base)
    if mano_dir is not None and not mano_dir.is_dir():
        raise ConfigError(f"{where}: mano_dir: folder not found: {mano_dir}")
    out_dir = Path(out) if out is not None else _optional_path(raw.get("out"), base)
    if out_dir is None:
        raise ConfigError(f"{where}: out: no output folder (set out: in the plan or pass --out)")
    protocol, changes = _protocol(raw.get("protocol", "handnerf-default"), where)
    prepare = _prepare_settings(raw.get("prepare") or {}, base, where)
    config = _optional_path(raw.get("config"), base)
    if config is not None and not config.is_file():
        raise ConfigError(f"{where}: config: file not found: {config}")
    overrides = _strings(raw.get("overrides"), f"{where}: overrides")
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
    plan.entries = _expand_entries(raw.get("entries"), interhand, overrides, base, where)
    for entry in plan.entries:
        _check_fit_config(plan, entry, where)
    return plan


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


def _optional_path(value: Any, base: Path) -> Path | None:
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise ConfigError(f"{where}: expected a list of key=value strings, got {value!r}")
    return tuple(str(v) for v in value)


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
        protocol_file = _optional_path(value["protocol"], base)
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


# --------------------------------------------------------------------------- entries


def _expand_entries(
    value: Any, interhand: Path | None, overrides: tuple[str, ...], base: Path, where: str
) -> list[PlanEntry]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: entries: expected a non-empty list")
    sequences_of: dict[tuple[Path, str], dict[int, list[str]]] = {}
    entries: list[PlanEntry] = []
    for index, raw in enumerate(value):
        label = f"{where}: entries[{index}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{label}: expected a mapping, got {raw!r}")
        if isinstance(raw.get("name"), str):
            label += f" ({raw['name']})"
        allowed = (*ENTRY_KEYS, "every") if "every" in raw else ENTRY_KEYS
        unknown = sorted(set(raw) - set(allowed))
        if "every" in raw:
            unknown += sorted(set(raw) & {"name", "split", "capture", "sequences", "hand"})
        if unknown:
            raise ConfigError(
                f"{label}: unknown key(s) {', '.join(unknown)}; an entry has "
                f"{', '.join(ENTRY_KEYS)}, or every: {{{', '.join(EVERY_KEYS)}}} with "
                "interhand, overrides, env"
            )
        root = _optional_path(raw.get("interhand"), base) or interhand
        if root is None:
            raise ConfigError(f"{label}: interhand: no InterHand2.6M root (set it in the plan)")
        if not root.is_dir():
            raise DataError(f"{label}: interhand: InterHand2.6M root not found: {root}")
        extra = _strings(raw.get("overrides"), f"{label}: overrides")
        all_overrides = (*overrides, *extra)
        for item in all_overrides:
            key = item.split("=", 1)[0].strip()
            if key in {f"data.{k}" for k in ENTRY_DATA_KEYS}:
                raise ConfigError(
                    f"{label}: overrides: {key} is set by the entry (split, capture, sequences, "
                    "hand) and the plan's mano_dir"
                )
        env = raw.get("env") or {}
        if not isinstance(env, dict):
            raise ConfigError(f"{label}: env: expected a mapping NAME: value, got {env!r}")
        env_items = tuple(sorted((str(k), str(v)) for k, v in env.items()))

        def listing(split: str, label: str = label, root: Path = root) -> dict[int, list[str]]:
            key = (root, split)
            if key not in sequences_of:
                sequences_of[key] = _split_sequences(root, split, label)
            return sequences_of[key]

        if "every" in raw:
            found = _expand_every(raw["every"], listing, label)
        else:
            found = [_explicit(raw, listing, label)]
        for name, split, capture, hand, train, novel in found:
            entries.append(
                PlanEntry(
                    name=name,
                    label=label if len(found) == 1 else f"{label} -> {name}",
                    interhand=root,
                    split=split,
                    capture=capture,
                    hand=hand,
                    train_seq=train,
                    novel_pose_seq=novel,
                    overrides=all_overrides,
                    env=env_items,
                )
            )
    seen: dict[str, str] = {}
    for entry in entries:
        if not _NAME.match(entry.name):
            raise ConfigError(
                f"{entry.label}: name {entry.name!r}: use letters, digits, '.', '_' and '-'"
            )
        if entry.name in seen:
            raise ConfigError(
                f"{entry.label}: name {entry.name!r} is also {seen[entry.name]}'s; each entry "
                "writes its own folder"
            )
        seen[entry.name] = entry.label
    return entries


def _split_sequences(root: Path, split: str, label: str) -> dict[int, list[str]]:
    from handnerf.data.annotations import SPLITS
    from handnerf.data.stream import split_sequences

    if split not in SPLITS:
        raise ConfigError(f"{label}: split {split!r}: splits are {', '.join(SPLITS)}")
    try:
        return split_sequences(root, split)
    except DataError as exc:
        raise type(exc)(f"{label}: {exc}") from exc


def _hand(value: Any, label: str) -> str:
    if value not in ("right", "left"):
        raise ConfigError(f"{label}: hand: 'right' or 'left', got {value!r}")
    return str(value)


def _explicit(raw: Mapping[str, Any], listing: Any, label: str) -> tuple[Any, ...]:
    split = str(raw.get("split", "test"))
    capture = raw.get("capture")
    if not isinstance(capture, int) or isinstance(capture, bool):
        raise ConfigError(f"{label}: capture: expected a capture number, got {capture!r}")
    seqs = raw.get("sequences")
    if isinstance(seqs, str):
        seqs = [seqs]
    if not isinstance(seqs, list) or not 1 <= len(seqs) <= 2:
        raise ConfigError(
            f"{label}: sequences: expected [TRAIN] or [TRAIN, NOVEL_POSE], got {seqs!r}"
        )
    hand = _hand(raw.get("hand", "right"), label)
    captures = listing(split)
    if capture not in captures:
        raise SelectionError(
            f"{label}: capture {capture} is not in split '{split}'; captures: "
            f"{', '.join(map(str, captures)) or '(none)'}"
        )
    unknown = [str(s) for s in seqs if str(s) not in captures[capture]]
    if unknown:
        raise SelectionError(
            f"{label}: sequence(s) {', '.join(unknown)} not in capture {capture} of split "
            f"'{split}'; sequences: {', '.join(captures[capture])}"
        )
    train = str(seqs[0])
    novel = str(seqs[1]) if len(seqs) > 1 else None
    if novel == train:
        raise ConfigError(f"{label}: sequences: the novel-pose sequence is the training one")
    name = str(raw.get("name") or f"{split}-c{capture}-{train}-{hand}")
    return name, split, capture, hand, train, novel


def _expand_every(value: Any, listing: Any, label: str) -> list[tuple[Any, ...]]:
    label = f"{label} (every)"
    if not isinstance(value, dict):
        raise ConfigError(f"{label}: expected a mapping {{{', '.join(EVERY_KEYS)}}}")
    unknown = sorted(set(value) - set(EVERY_KEYS))
    if unknown:
        raise ConfigError(
            f"{label}: unknown key(s) {', '.join(unknown)}; known: {', '.join(EVERY_KEYS)}"
        )
    split = str(value.get("split", "test"))
    pattern = str(value.get("sequences", "*"))
    novel_pattern = value.get("novel_pose")
    hand = _hand(value.get("hand", "right"), label)
    captures = listing(split)
    wanted = value.get("captures")
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(c, int) for c in wanted):
            raise ConfigError(f"{label}: captures: expected a list of capture numbers")
        missing = [c for c in wanted if c not in captures]
        if missing:
            raise SelectionError(
                f"{label}: capture(s) {', '.join(map(str, missing))} not in split '{split}'; "
                f"captures: {', '.join(map(str, captures))}"
            )
    found = []
    for capture, seqs in captures.items():
        if wanted is not None and capture not in wanted:
            continue
        novel_candidates = (
            [s for s in seqs if fnmatch.fnmatchcase(s, str(novel_pattern))]
            if novel_pattern is not None
            else []
        )
        for seq in seqs:
            if not fnmatch.fnmatchcase(seq, pattern) or seq in novel_candidates:
                continue
            novel = next((s for s in novel_candidates if s != seq), None)
            found.append((f"{split}-c{capture}-{seq}-{hand}", split, capture, hand, seq, novel))
    if not found:
        listed = "; ".join(f"capture {c}: {', '.join(s)}" for c, s in captures.items())
        raise SelectionError(
            f"{label}: no sequence of split '{split}' matches {pattern!r} ({listed or 'none'})"
        )
    return found


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
