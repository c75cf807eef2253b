"""Typed recipe configuration: YAML files plus dotted command-line overrides.

Schemas are dataclasses validated by OmegaConf (types, unknown keys) and then by each dataclass's
`__post_init__` (impossible values), so a bad config fails before any training with the key named:

    train.learning_rate: Value 'abc' of type 'str' could not be converted to Float
    unknown config key train.lr (in train)

The resolved config is written to the run folder as YAML; `fingerprint` hashes a section so a resume
can tell which settings changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or impossible."""


def _describe(err: OmegaConfBaseException, source: str) -> str:
    key = getattr(err, "full_key", None) or "?"
    message = getattr(err, "msg", None) or str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError):
        return f"{source}: unknown config key {key} ({message})"
    return f"{source}: {key}: {message}"


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults from `schema`, then the YAML file at `path`, then `key.sub=value` overrides."""
    merged = OmegaConf.structured(schema)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise ConfigError(_describe(err, str(path))) from err
    for override in overrides or []:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([override]))
        except OmegaConfBaseException as err:
            raise ConfigError(_describe(err, f"override {override!r}")) from err
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_describe(err, "config")) from err
    except (ValueError, TypeError) as err:
        # Raised by a dataclass __post_init__: the message already names the key.
        raise ConfigError(str(err)) from err


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")


def fingerprint(section: Any) -> str:
    """Stable short hash of a config section (a dataclass or a plain dict)."""
    data = to_dict(section) if dataclasses.is_dataclass(section) else section
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (added and removed keys included)."""
    keys = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys.extend(changed_keys(a, b, f"{dotted}."))
        elif a != b:
            keys.append(dotted)
    return keys
