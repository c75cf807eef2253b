"""LoRA fine-tuning of the v3/v4 SoVITS, as GPT-SoVITS' `s2_train_v3_lora.py` does it.

The official trainer wraps only `cfm` with peft (`get_peft_model(cfm, LoraConfig(target_modules=
["to_k", "to_q", "to_v", "to_out.0"], r=rank, lora_alpha=rank, init_lora_weights=True))`), which
freezes every base weight of the DiT; `ref_enc`, `bridge`, `wns1` and `linear_mel` stay trainable
(only bridge and wns1 get gradients), the text side is frozen by `freeze_quantizer`.

The LoRA export holds every state-dict entry that is not a frozen parameter: the trainable modules,
the LoRA A/B matrices, and the buffers (codebook, rotary `inv_freq`), under the peft-wrapped names
(`cfm.base_model.model.estimator...`). Inference rebuilds the base model, wraps it the same way, loads
the export non-strictly and merges (W + B @ A * alpha / r): `merge_lora_export`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from .generator_v3 import SynthesizerTrnV3

LORA_TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]


class FusedLoraLinear(PeftLoraLinear):
    """peft's LoRA Linear, with the adapter's low-rank product accumulated into the output by the
    matrix multiply itself: `addmm(W x + b, A x, B^T, alpha=scaling)` instead of peft's
    `W x + b + (B (A x)) * scaling`, which reads and writes the full output twice more in the forward
    and again in the backward (~4% of a v3 LoRA training step on a CPU). Same parameters, names,
    merging and exports as peft's class, which it falls back to for anything but one plain active
    adapter (merged, disabled, several adapters, LoRA dropout, DoRA and other variants, extra args)."""

    def _fusable_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        if args or kwargs or self.disable_adapters or self.merged or self.fan_in_fan_out:
            return None
        active = self.active_adapters
        if len(active) != 1:
            return None
        name = active[0]
        if (name not in self.lora_A or name in getattr(self, "lora_variant", {})
                or getattr(self, "use_dora", {}).get(name, False) or self.lora_B[name].bias is not None
                or not isinstance(self.lora_dropout[name], nn.Identity)):
            return None
        # peft casts x to the adapter's dtype; under autocast both paths compute in the autocast dtype.
        if x.dtype != self.lora_A[name].weight.dtype and not torch.is_autocast_enabled(x.device.type):
            return None
        return name

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._fusable_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        flat = x.reshape(-1, x.shape[-1])
        out = F.linear(flat, base.weight, base.bias)
        low_rank = F.linear(flat, self.lora_A[name].weight)
        out = torch.addmm(out, low_rank, self.lora_B[name].weight.t(), alpha=self.scaling[name])
        return out.view(*x.shape[:-1], out.shape[-1])


def cfm_lora_config(rank: int) -> LoraConfig:
    """The official LoraConfig of a rank-`rank` v3/v4 LoRA (alpha = rank, so the scaling is 1), with
    the adapters built as `FusedLoraLinear` (peft's custom-module hook)."""
    if rank <= 0:
        raise ValueError(f"the LoRA rank must be positive, got {rank}")
    config = LoraConfig(target_modules=list(LORA_TARGET_MODULES), r=rank, lora_alpha=rank,
                        init_lora_weights=True)
    config._register_custom_module({nn.Linear: FusedLoraLinear})
    return config


def has_lora(model: SynthesizerTrnV3) -> bool:
    return isinstance(model.cfm, PeftModel)


def add_lora(model: SynthesizerTrnV3, rank: int) -> SynthesizerTrnV3:
    """Wrap `model.cfm` with LoRA adapters in place (base DiT weights frozen); returns the model."""
    if has_lora(model):
        raise ValueError("the model's cfm already has LoRA adapters")
    model.cfm = get_peft_model(model.cfm, cfm_lora_config(rank))
    return model


def frozen_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters that do not require grad (what a LoRA export leaves out)."""
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def lora_state_dict(model: SynthesizerTrnV3) -> dict[str, torch.Tensor]:
    """The official LoRA export's entries: every state-dict key that is not a frozen parameter.

    Pass the unwrapped model (no DDP/Accelerate wrapper), with LoRA added (`add_lora`). Tensors are
    the model's own (detached, not copied); the export writer casts them to fp16.
    """
    if not has_lora(model):
        raise ValueError("the model has no LoRA adapters: call add_lora(model, rank) first")
    frozen = frozen_parameter_names(model)
    return {k: v.detach() for k, v in model.state_dict().items() if k not in frozen}


def merge_lora(model: SynthesizerTrnV3) -> SynthesizerTrnV3:
    """Fold the adapters into the DiT weights and drop the peft wrapper (plain `cfm.estimator.*` keys)."""
    if not has_lora(model):
        raise ValueError("the model has no LoRA adapters to merge")
    model.cfm = model.cfm.merge_and_unload()
    return model


def merge_lora_export(model: SynthesizerTrnV3, weights: Mapping[str, torch.Tensor], rank: int
                      ) -> SynthesizerTrnV3:
    """Load a LoRA export's `weight` into a base model (already holding the pretrained weights) and
    merge it, as official inference (`TTS.init_vits_weights`) does; returns the model.

    The export's entries replace the base values, including its fp16-rounded buffers (the rotary
    `inv_freq` too, as in official inference). Raises if an entry does not belong to the model or a
    trainable entry is missing from the export.
    """
    add_lora(model, rank)
    result = model.load_state_dict(dict(weights), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"the LoRA export has {len(result.unexpected_keys)} key(s) the model does not: "
                         f"{', '.join(result.unexpected_keys[:5])} (is the rank {rank} right?)")
    frozen = frozen_parameter_names(model)
    missing = [k for k in result.missing_keys if k not in frozen]
    if missing:
        raise ValueError(f"the LoRA export lacks {len(missing)} trainable entr(ies): "
                         f"{', '.join(missing[:5])}")
    return merge_lora(model)
