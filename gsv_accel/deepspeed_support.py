"""DeepSpeed (ZeRO stage 1/2) for recipes with several models, e.g. a GAN's generator and discriminator.

DeepSpeed gives one engine per Accelerator: `prepare(G, D)` in one call raises, and two separate
`prepare` calls on one Accelerator leave `backward` tied to the first engine. So each model gets its
own `DeepSpeedPlugin` (the same settings, from `accelerate launch --config_file ...`) and its own
Accelerator; the second is created while its plugin is selected. Under DeepSpeed
`accelerator.backward` also clips (`gradient_clipping`) and steps the optimizer; the optimizers'
own `step`/`zero_grad` are no-ops. A model that is only evaluated in another model's loss (D in G's
adversarial loss) must have `requires_grad` off during that backward, else ZeRO-2 reports a gradient
"already reduced".

Checkpoints: every Accelerator's `save_state` writes a DeepSpeed checkpoint (`pytorch_model/` with
`mp_rank_*_model_states.pt` and the ZeRO optimizer partitions, no `model.safetensors`); the
extra Accelerators save into subfolders of the same checkpoint folder. `consolidated_state_dict`
rebuilds a model's full fp32 weights from such a folder (DeepSpeed's `zero_to_fp32`).

Only imported when DeepSpeed is in use (`pip install 'gsv_accel[deepspeed]'`); Accelerate's DeepSpeed
path also imports transformers. On a CPU only a single process works (`DS_ACCELERATOR=cpu`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

logger = logging.getLogger(__name__)


def deepspeed_requested() -> bool:
    """True under `accelerate launch` with a DeepSpeed config (or ACCELERATE_USE_DEEPSPEED=true)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def make_plugins(names: Sequence[str]) -> dict:
    """One `DeepSpeedPlugin` per model name, each built from the launcher's settings (environment)."""
    from accelerate.utils import DeepSpeedPlugin

    return {name: DeepSpeedPlugin() for name in names}


def configure_plugins(accelerator: Accelerator, *, micro_batch_size: int, grad_clip: float | None) -> None:
    """Fill the settings Accelerate cannot infer (our data loader is not passed to `prepare`): the
    micro-batch size and, when left to 'auto', gradient clipping (None = no clipping, DeepSpeed's 0).
    Call before `prepare`."""
    for plugin in accelerator.state.deepspeed_plugins.values():
        config = plugin.deepspeed_config
        if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            config["train_micro_batch_size_per_gpu"] = micro_batch_size
        if config.get("train_batch_size") == "auto":
            del config["train_batch_size"]
        if config.get("gradient_clipping", "auto") == "auto":
            config["gradient_clipping"] = float(grad_clip) if grad_clip is not None else 0.0


def prepare_on_own_engine(accelerator: Accelerator, name: str, *objects):
    """A second Accelerator for plugin `name`, and `objects` prepared on it (one more DeepSpeed
    engine). The plugin is selected only for the creation and the `prepare` (that is when Accelerate
    reads it); the first Accelerator's plugin is selected again afterwards. Returns
    (accelerator, prepared objects...)."""
    first = next(iter(accelerator.state.deepspeed_plugins))
    accelerator.state.select_deepspeed_plugin(name)
    try:
        other = Accelerator()
        prepared = other.prepare(*objects)
    finally:
        accelerator.state.select_deepspeed_plugin(first)
    return (other, *prepared) if isinstance(prepared, tuple) else (other, prepared)


def global_grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


def consolidated_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """A model's full fp32 state dict from the DeepSpeed checkpoint an Accelerator's `save_state`
    wrote into `folder` (ZeRO partitions merged; frozen parameters and buffers included)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return dict(get_fp32_state_dict_from_zero_checkpoint(str(folder)))


def load_into_engine(accelerator: Accelerator, engine, state_dict: dict[str, torch.Tensor]) -> None:
    """Load weights into a prepared model and into the ZeRO optimizer's fp32 master copy (otherwise
    the next step would continue from the old master weights)."""
    module = accelerator.unwrap_model(engine)
    own = module.state_dict()
    module.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in state_dict.items()})
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is not None and hasattr(optimizer, "refresh_fp32_params"):
        optimizer.refresh_fp32_params()
