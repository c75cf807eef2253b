"""How the recipes' settings reach each model's DeepSpeed config (`configure_plugins`): no DeepSpeed
needed, the plugins' config dicts are checked directly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gsv_accel.config import ConfigError
from gsv_accel.deepspeed_support import configure_plugins


def _accelerator(**config) -> SimpleNamespace:
    """Two plugins (generator, discriminator) holding what Accelerate put into the config."""
    plugins = {name: SimpleNamespace(deepspeed_config={"train_micro_batch_size_per_gpu": "auto",
                                                        "train_batch_size": "auto",
                                                        "gradient_clipping": "auto",
                                                        "gradient_accumulation_steps": 1,
                                                        "zero_optimization": {"stage": 2}, **config})
               for name in ("generator", "discriminator")}
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugins=plugins))


def _configs(accelerator) -> list[dict]:
    return [plugin.deepspeed_config for plugin in accelerator.state.deepspeed_plugins.values()]


def test_recipe_settings_fill_the_auto_values_of_every_engine() -> None:
    accelerator = _accelerator(bf16={"enabled": False}, fp16={"enabled": False})
    configure_plugins(accelerator, micro_batch_size=4, grad_clip=None, grad_accum=3)
    for config in _configs(accelerator):
        assert config["train_micro_batch_size_per_gpu"] == 4 and "train_batch_size" not in config
        assert config["gradient_clipping"] == 0.0  # None: no clipping, as the official trainer
        assert config["gradient_accumulation_steps"] == 3
        assert "torch_autocast" not in config


def test_explicit_clipping_in_the_deepspeed_config_wins() -> None:
    accelerator = _accelerator(gradient_clipping=0.5)
    configure_plugins(accelerator, micro_batch_size=2, grad_clip=1.0)
    assert [c["gradient_clipping"] for c in _configs(accelerator)] == [0.5, 0.5]


def test_bf16_becomes_torch_autocast_over_fp32_weights() -> None:
    accelerator = _accelerator(bf16={"enabled": True}, fp16={"enabled": False})
    configure_plugins(accelerator, micro_batch_size=2, grad_clip=None)
    for config in _configs(accelerator):
        assert config["bf16"] == {"enabled": False}
        assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}


def test_fp16_is_refused_with_the_alternatives() -> None:
    accelerator = _accelerator(fp16={"enabled": True, "auto_cast": True}, bf16={"enabled": False})
    with pytest.raises(ConfigError, match="fp16 under DeepSpeed is not supported.*Use bf16 with DeepSpeed"):
        configure_plugins(accelerator, micro_batch_size=2, grad_clip=None)


def test_accumulation_set_in_the_deepspeed_config_must_come_from_the_recipe() -> None:
    accelerator = _accelerator(gradient_accumulation_steps=4)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=4: set train.grad_accum=4 instead"):
        configure_plugins(accelerator, micro_batch_size=2, grad_clip=None, grad_accum=1)
    configure_plugins(accelerator, micro_batch_size=2, grad_clip=None, grad_accum=4)  # agreeing is fine


def test_deepspeed_cpu_fallback_warning_only_when_deepspeed_is_requested(monkeypatch) -> None:
    """Accelerate's unwrap_model imports DeepSpeed in every run; its "Setting accelerator to CPU"
    warning is dropped unless DeepSpeed was asked for (the filter `deepspeed_support` installs)."""
    import logging

    import gsv_accel.deepspeed_support  # noqa: F401  (installs the filter)

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("DeepSpeed")
    logger.addHandler(handler)
    try:
        message = ("Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to "
                   "detect it.")
        monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
        logger.warning(message)
        logger.warning("another DeepSpeed warning")
        assert seen == ["another DeepSpeed warning"]
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        logger.warning(message)
        assert seen[-1] == message
    finally:
        logger.removeHandler(handler)
