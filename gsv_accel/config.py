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
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or impossible."""


def _describe(err: OmegaConfBaseException, source: str) -> str:
    """One line: where, which key, what is wrong (OmegaConf's own text spans several lines)."""
    key = getattr(err, "full_key", None) or "?"
    message = (getattr(err, "msg", None) or str(err)).strip().splitlines()[0]
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
            loaded = OmegaConf.load(path)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML ({problem})") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} cannot be read: {err}") from err
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: a config must be a mapping of sections (run:, data:, train:, ...)")
        try:
            merged = OmegaConf.merge(merged, loaded)
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


def require_path(key: str, value: str | Path | None, kind: str = "file") -> Path:
    """The path a config key names, which must exist as a `kind` ("file" or "folder"); ConfigError
    naming the key otherwise."""
    if value is None or str(value) == "":
        raise ConfigError(f"{key} is not set")
    path = Path(value)
    exists = path.is_file() if kind == "file" else path.is_dir()
    if not exists:
        found = "a folder" if path.is_dir() else "a file" if path.exists() else "nothing"
        raise ConfigError(f"{key}={value}: expected a {kind}, found {found} there")
    return path


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


# ---------------------------------------------------------------------------- sections shared by recipes


def check_training_loop(train: Any) -> None:
    """Check the `train:` settings every recipe shares (the loop's and `TrainingSession`'s): raise
    ValueError naming the key."""
    if train.epochs < 1:
        raise ValueError(f"train.epochs must be >= 1, got {train.epochs}")
    if train.learning_rate <= 0:
        raise ValueError(f"train.learning_rate must be > 0, got {train.learning_rate}")
    if train.grad_accum < 1:
        raise ValueError(f"train.grad_accum must be >= 1, got {train.grad_accum}")
    if train.grad_clip is not None and train.grad_clip <= 0:
        raise ValueError(f"train.grad_clip must be > 0 or null, got {train.grad_clip}")
    if train.on_nonfinite not in ("rollback", "stop"):
        raise ValueError(f"train.on_nonfinite must be 'rollback' or 'stop', got {train.on_nonfinite!r}")
    if train.max_nonfinite_steps < 1:
        raise ValueError(f"train.max_nonfinite_steps must be >= 1, got {train.max_nonfinite_steps}")
    if not 0 < train.rollback_lr_factor < 1:
        raise ValueError(f"train.rollback_lr_factor must be in (0, 1), got {train.rollback_lr_factor}")


PROGRESS_STYLES = ("bar", "lines")


@dataclass
class RunConfig:
    """Where a run lives and how it is seeded."""

    output_dir: str = "runs/s2_demo"
    exp_name: str = "demo"
    seed: int = 1234
    # CPU threads per process (torch intra-op); null: all cores, shared by the processes on the
    # machine. Exact resume on a CPU needs the same number (the manifest records it).
    cpu_threads: int | None = None
    # How the main process shows progress: "bar" (tqdm) or "lines", one plain line per logged step
    # and per epoch as the official trainers print them (for consoles and captured logs: the WebUI).
    progress: str = "bar"

    def __post_init__(self) -> None:
        _positive_or_none("run.cpu_threads", self.cpu_threads)
        if self.progress not in PROGRESS_STYLES:
            raise ValueError(f"run.progress must be one of {', '.join(PROGRESS_STYLES)}, "
                             f"got {self.progress!r}")
        if not self.exp_name or "/" in self.exp_name or "\\" in self.exp_name:
            raise ValueError(f"run.exp_name must be a plain file-name part, got {self.exp_name!r}")


# The metric a non-empty `validation.score` adds to every validation (higher is better).
SCORE_METRIC = "val/score"


@dataclass
class ValidationConfig:
    """When to validate: every N optimizer steps and/or at the end of every N epochs (None = never
    by that criterion). `max_items` caps the validation utterances used (None = all).

    `score`: weights by metric name; when not empty every validation also reports
    `val/score = sum(weight * metric)`, higher is better (give lower-is-better metrics a negative
    weight), e.g. `{val/mel_loss: -1.0, val/speaker_sim: 10.0}`. Monitor it with `plateau.monitor:
    val/score` and `plateau.mode: max`."""

    every_n_steps: int | None = None
    every_n_epochs: int | None = 1
    max_items: int | None = None
    score: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive_or_none("validation.every_n_steps", self.every_n_steps)
        _positive_or_none("validation.every_n_epochs", self.every_n_epochs)
        _positive_or_none("validation.max_items", self.max_items)
        for name, weight in self.score.items():
            if name == SCORE_METRIC:
                raise ValueError(f"validation.score cannot weight {SCORE_METRIC} itself")
            if not math.isfinite(weight):
                raise ValueError(f"validation.score.{name} must be a finite number, got {weight}")


@dataclass
class CheckpointConfig:
    """When to save and what to keep. A final checkpoint is ALWAYS written at the end of training,
    on early stop and on SIGTERM/SIGINT, whatever the intervals."""

    every_n_steps: int | None = None
    every_n_epochs: int | None = 1
    keep_last: int = 3
    keep_best: int = 1
    # Save a checkpoint whenever validation improves, so the best weights survive a crash.
    save_on_best: bool = True
    # Also write a GPT-SoVITS inference export at every save (always done at the end).
    export_every_save: bool = False
    # Write checkpoints in a background thread from a host-memory copy of the state: training waits
    # only for the copy. Keeps one copy of the state in host memory between saves. Final and
    # SIGTERM/SIGINT saves are waited for; DeepSpeed checkpoints are always written synchronously.
    async_save: bool = True

    def __post_init__(self) -> None:
        _positive_or_none("checkpoint.every_n_steps", self.every_n_steps)
        _positive_or_none("checkpoint.every_n_epochs", self.every_n_epochs)
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")
        if self.keep_best < 0:
            raise ValueError(f"checkpoint.keep_best must be >= 0, got {self.keep_best}")


def _positive_or_none(key: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{key} must be a positive integer or null, got {value}")
