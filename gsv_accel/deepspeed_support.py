"""DeepSpeed (ZeRO stage 1/2) for recipes with several models, e.g. a GAN's generator and discriminator.

DeepSpeed gives one engine per Accelerator: `prepare(G, D)` in one call raises, and two separate
`prepare` calls on one Accelerator leave `backward` tied to the first engine. So each model gets its
own `DeepSpeedPlugin` (the same settings, from `accelerate launch --config_file ...`) and its own
Accelerator; the second is created while its plugin is selected. The engine's backward also
clips (`gradient_clipping`) and steps the optimizer at the accumulation boundary (`backward` below
marks it); the optimizers' own `step`/`zero_grad` are no-ops. A model that is only evaluated in
another model's loss (D in G's adversarial loss) must have `requires_grad` off during that backward,
else ZeRO-2 reports a gradient "already reduced".

Checkpoints: every Accelerator's `save_state` writes a DeepSpeed checkpoint (`pytorch_model/` with
`mp_rank_*_model_states.pt` and the ZeRO optimizer partitions, no `model.safetensors`); the
extra Accelerators save into subfolders of the same checkpoint folder. `consolidated_state_dict`
rebuilds a model's full fp32 weights from such a folder (DeepSpeed's `zero_to_fp32`).

DeepSpeed itself (`pip install 'gsv_accel[deepspeed]'`) is imported only inside the functions that
need it, so this module loads without it; Accelerate's DeepSpeed path also imports transformers. On a
CPU only a single process works (`DS_ACCELERATOR=cpu`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from gsv_accel.config import ConfigError

logger = logging.getLogger(__name__)


def deepspeed_requested() -> bool:
    """True under `accelerate launch` with a DeepSpeed config (or ACCELERATE_USE_DEEPSPEED=true)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")


class _NoCPUFallbackWarning(logging.Filter):
    """Drops DeepSpeed's "Setting accelerator to CPU. If you have GPU or other accelerator, we were
    unable to detect it." when DeepSpeed is not requested.

    Accelerate imports DeepSpeed whenever it is installed, DeepSpeed run or not: `unwrap_model` (through
    `extract_model_from_parallel`) imports `deepspeed.DeepSpeedEngine`, which every run reaches when it
    saves or exports weights. On a machine without CUDA, importing DeepSpeed makes its accelerator
    detection log that warning, on stdout, once per process: noise in every plain CPU run and test.
    This filter on DeepSpeed's own logger is the narrowest fix: nothing changes in the environment
    (setting `DS_ACCELERATOR=cpu` would reach child processes and DeepSpeed runs alike) and nothing
    is imported earlier or later; under a DeepSpeed launch (ACCELERATE_USE_DEEPSPEED set) the message
    is kept, since there it tells that DeepSpeed will train on the CPU (`DS_ACCELERATOR=cpu`, as the
    CPU recipes set, silences it there).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return deepspeed_requested() or not str(record.msg).startswith("Setting accelerator to CPU.")


# DeepSpeed's logger is a plain `logging` logger named "DeepSpeed" (its own handler, no propagation);
# a filter added before DeepSpeed is imported stays when DeepSpeed configures it.
logging.getLogger("DeepSpeed").addFilter(_NoCPUFallbackWarning())


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def make_plugins(names: Sequence[str]) -> dict:
    """One `DeepSpeedPlugin` per model name, each built from the launcher's settings (environment)."""
    from accelerate.utils import DeepSpeedPlugin

    return {name: DeepSpeedPlugin() for name in names}


def configure_plugins(accelerator: Accelerator, *, micro_batch_size: int, grad_clip: float | None,
                      grad_accum: int = 1) -> None:
    """Fill the settings Accelerate cannot infer (our data loader is not passed to `prepare`) and map
    mixed precision onto DeepSpeed's `torch_autocast`. Call before `prepare`.

    - micro-batch size; gradient clipping when left to 'auto' (None = no clipping, DeepSpeed's 0);
    - gradient accumulation: the recipe's `grad_accum` (the recipe marks the boundaries itself, see
      `backward`); a DeepSpeed config that asks for another number is refused;
    - bf16: Accelerate turns `--mixed_precision bf16` into DeepSpeed's `bf16` section, which casts the
      whole model, buffers included, to bf16 (SoVITS' quantizer then fails against its fp32 codebook,
      and a GAN vocoder trained in pure bf16 loses quality). We switch that to `torch_autocast`: fp32
      weights, buffers and optimizer state, forward passes under `torch.autocast`, as without DeepSpeed;
    - fp16 is refused, see `FP16_UNSUPPORTED`.
    """
    for name, plugin in accelerator.state.deepspeed_plugins.items():
        config = plugin.deepspeed_config
        if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            config["train_micro_batch_size_per_gpu"] = micro_batch_size
        if config.get("train_batch_size") == "auto":
            del config["train_batch_size"]
        if config.get("gradient_clipping", "auto") == "auto":
            config["gradient_clipping"] = float(grad_clip) if grad_clip is not None else 0.0
        requested = config.get("gradient_accumulation_steps", "auto")
        if requested not in ("auto", 1, grad_accum):
            raise ConfigError(f"the DeepSpeed config asks for gradient_accumulation_steps={requested}: set "
                              f"train.grad_accum={requested} instead and leave DeepSpeed's at 1 or 'auto'")
        config["gradient_accumulation_steps"] = grad_accum
        if _enabled(config.get("fp16")):
            raise ConfigError(FP16_UNSUPPORTED)
        if _enabled(config.get("bf16")):
            config["bf16"] = {"enabled": False}
            config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
            logger.info("DeepSpeed engine %r: bf16 as torch_autocast (fp32 weights and optimizer state)",
                        name)


FP16_UNSUPPORTED = (
    "fp16 under DeepSpeed is not supported by the S2 recipe: DeepSpeed's fp16 section casts the whole "
    "model to fp16 (the quantizer needs its fp32 codebook), and its torch_autocast fp16 mode with ZeRO "
    "skips an overflowing step without lowering the loss scale, clips the scaled gradients and does not "
    "checkpoint the scale. Use "
    "bf16 with DeepSpeed (mixed_precision: bf16), or fp16 without DeepSpeed (multi_gpu.yaml, one loss "
    "scaler shared by both models)")


def _enabled(section) -> bool:
    return isinstance(section, dict) and str(section.get("enabled", False)).lower() == "true"


def autocast_dtype(engine) -> torch.dtype | None:
    """The dtype the engine runs its forward in under `torch_autocast`, or None."""
    return engine.torch_autocast_dtype() if engine.torch_autocast_enabled() else None


def backward(engine, loss: torch.Tensor, *, boundary: bool) -> bool:
    """Backward of one micro-batch's `loss` (already divided by the number of micro-batches) on a
    DeepSpeed engine; at the accumulation `boundary` the engine reduces the gradients, clips and steps.

    We mark the boundary ourselves instead of going through `accelerator.backward`: a GAN iteration
    interleaves two engines (D's backward, then G's, per micro-batch), which Accelerate's single
    `sync_gradients` flag cannot express. Returns True when a step was taken and applied; False between
    boundaries or when DeepSpeed skipped the step because the gradient norm was not finite (it then
    drops the gradients itself, so the weights and the optimizer state are untouched)."""
    engine.set_gradient_accumulation_boundary(is_boundary=boundary)
    engine.backward(loss, scale_wrt_gas=False)
    if not boundary:
        return False
    engine.step()
    return engine.was_step_applied()


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
