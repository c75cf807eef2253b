"""Typed config loading: defaults, YAML, dotted overrides and errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gsv_accel.config import ConfigError, changed_keys, fingerprint, load_config, save_config
from gsv_accel.models.sovits.config import SoVITSConfig


@dataclass
class TrainSection:
    learning_rate: float = 1e-4
    epochs: int = 10
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"train.learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class Schema:
    train: TrainSection = field(default_factory=TrainSection)
    model: SoVITSConfig = field(default_factory=SoVITSConfig)


def test_defaults_yaml_and_overrides_in_order(tmp_path):
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("train:\n  epochs: 3\n  learning_rate: 0.5\nmodel:\n  n_layers: 2\n")
    cfg = load_config(Schema, yaml_path, ["train.epochs=7", "model.upsample_rates=[4,4]"])
    assert cfg.train.epochs == 7 and cfg.train.learning_rate == 0.5
    assert cfg.model.n_layers == 2 and cfg.model.upsample_rates == [4, 4]
    assert isinstance(cfg.model, SoVITSConfig) and cfg.model.hop_length == 16


@pytest.mark.parametrize("override, message", [
    ("train.learning_rate=abc", "train.learning_rate: Value 'abc'"),
    ("train.lr=1", "unknown config key train.lr"),
    ("train.epochs=1.5", "train.epochs"),
    ("train.learning_rate=-1", "train.learning_rate must be > 0"),
    ("model.version=v3", "v3"),
    ("epochs", "must look like section.key=value"),
])
def test_bad_values_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(Schema, None, [override])


def test_bad_yaml_key_names_the_file(tmp_path):
    yaml_path = tmp_path / "bad.yaml"
    yaml_path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key train\.epoch"):
        load_config(Schema, yaml_path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Schema, tmp_path / "missing.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(Schema, None, ["train.epochs=4"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(Schema, tmp_path / "config.yaml")
    assert again == cfg and fingerprint(again.model) == fingerprint(cfg.model)


def test_changed_keys_lists_dotted_differences():
    old = {"train": {"epochs": 2, "lr": 1.0}, "model": {"n_layers": 6}}
    new = {"train": {"epochs": 4, "lr": 1.0}, "model": {"n_layers": 6, "extra": 1}}
    assert changed_keys(old, new) == ["model.extra", "train.epochs"]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("epochs", 0, "train.epochs must be >= 1"),
    ("learning_rate", 0.0, "train.learning_rate must be > 0"),
    ("grad_accum", 0, "train.grad_accum must be >= 1"),
    ("grad_clip", 0.0, "train.grad_clip must be > 0 or null"),
    ("on_nonfinite", "ignore", "train.on_nonfinite must be 'rollback' or 'stop'"),
    ("max_nonfinite_steps", 0, "train.max_nonfinite_steps must be >= 1"),
    ("rollback_lr_factor", 1.0, r"train.rollback_lr_factor must be in \(0, 1\)"),
])
def test_training_loop_settings_shared_by_the_recipes_are_checked_alike(key, value, message) -> None:
    from types import SimpleNamespace

    from gsv_accel.config import check_training_loop

    good = dict(epochs=1, learning_rate=1e-4, grad_accum=1, grad_clip=None, on_nonfinite="rollback",
                max_nonfinite_steps=3, rollback_lr_factor=0.5)
    check_training_loop(SimpleNamespace(**good))
    with pytest.raises(ValueError, match=message):
        check_training_loop(SimpleNamespace(**{**good, key: value}))
