"""Typed configs filled from YAML files and ``key=value`` overrides.

Each component has a ``<Name>Config`` dataclass beside it (threestudio style: the
component's settings live with the component, filled from YAML); a run's config is a tree
of them, e.g. ``AvatarConfig.field`` is a ``FieldConfig``. :func:`load_config` merges, in order: the dataclass defaults, a YAML file,
then command-line overrides such as ``field.hidden_dim=128``. Unknown keys, values of
the wrong type and values outside a field's :func:`choice` raise
:class:`~handnerf.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from handnerf.errors import ConfigError

T = TypeVar("T")

#: Field metadata key of the values a string field accepts (see :func:`choice`).
CHOICES = "choices"


def choice(default: str, options: Sequence[str]) -> Any:
    """A string config field that accepts only ``options`` (checked when a config loads,
    with an error naming the key: a typo such as ``train.background=white`` must not
    silently fall back to another behaviour)."""
    if default not in options:
        raise ValueError(f"default {default!r} is not one of {tuple(options)}")
    return dataclasses.field(default=default, metadata={CHOICES: tuple(options)})


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """The entry called ``name`` of a table of named presets; a :class:`ConfigError`
    naming ``what`` (e.g. ``"synth preset"``) lists the known names otherwise."""
    try:
        return table[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}") from None


def check_choices(cfg: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first field of the ``cfg`` dataclass tree whose value is
    not one of its :func:`choice` options."""
    for spec in dataclasses.fields(cfg):
        value = getattr(cfg, spec.name)
        key = f"{prefix}{spec.name}"
        options = spec.metadata.get(CHOICES)
        if options is not None and value not in options:
            raise ConfigError(f"{key} must be one of {', '.join(options)}; got {value!r}")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_choices(value, f"{key}.")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from its defaults, an optional YAML file and ``key=value`` overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base = OmegaConf.structured(cls)
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as exc:  # yaml errors come in many types
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got: {', '.join(bad)}")
    if overrides:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        merged = OmegaConf.merge(base, *layers)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        where = f" (in {path})" if path is not None else ""
        raise ConfigError(
            f"invalid config{where}: {exc.msg if hasattr(exc, 'msg') else exc}"
        ) from exc
    assert isinstance(obj, cls)
    check_choices(obj)
    return obj


def overrides_from_yaml(path: str | Path) -> list[str]:
    """A YAML config file as ``key=value`` overrides (dotted keys, leaves only), to layer
    it over another config file (e.g. ``configs/tiny.yaml``'s sizes over a test's)."""
    import json

    from omegaconf import DictConfig, ListConfig, OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in many types
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys, got a list")
    overrides: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, DictConfig):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, ListConfig):
                overrides.append(f"{prefix}{key}={json.dumps(OmegaConf.to_container(value))}")
            elif value is None or isinstance(value, bool):
                overrides.append(f"{prefix}{key}={json.dumps(value)}")
            else:
                overrides.append(f"{prefix}{key}={value}")

    walk(tree, "")
    return overrides


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON-serialisable dict of a config dataclass (paths become strings)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(cfg)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass from :func:`config_to_dict` output (e.g. a checkpoint)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        obj = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), data))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"stored config does not match {cls.__name__}: {exc}") from exc
    assert isinstance(obj, cls)
    return obj
