"""A plan's entries: each avatar's root, selection, overrides and environment.

Entries come in two forms, both expanded here into :class:`PlanEntry` s, checked against
the root's annotations (streamed ``data.json``: captures and their sequences):

* explicit: ``{split, capture, sequences: [TRAIN, NOVEL_POSE], hand}``;
* ``every: {split, sequences: PATTERN, novel_pose: PATTERN, hand, captures}``: every
  capture (subject) and sequence of the split whose name matches ``PATTERN`` (shell-style);
  the novel-pose sequence of each is the first other sequence of its capture matching
  ``novel_pose`` (none when absent).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handnerf.errors import ConfigError, DataError, SelectionError

#: Data keys each entry sets for its fit; a plan's overrides may not set them too.
ENTRY_DATA_KEYS: tuple[str, ...] = (
    "split",
    "capture",
    "hand",
    "train_seq",
    "novel_pose_seq",
    "mano_dir",
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
#: An entry name is a folder name.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def optional_path(value: Any, base: Path) -> Path | None:
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else base / path


def strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise ConfigError(f"{where}: expected a list of key=value strings, got {value!r}")
    return tuple(str(v) for v in value)


# --------------------------------------------------------------------------- entries


def expand_entries(
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
        root = optional_path(raw.get("interhand"), base) or interhand
        if root is None:
            raise ConfigError(f"{label}: interhand: no InterHand2.6M root (set it in the plan)")
        if not root.is_dir():
            raise DataError(f"{label}: interhand: InterHand2.6M root not found: {root}")
        extra = strings(raw.get("overrides"), f"{label}: overrides")
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
