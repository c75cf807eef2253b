"""Exports of v3/v4 SoVITS models (SynthesizerTrnV3) in the official GPT-SoVITS formats.

* LoRA export (`s2_train_v3_lora.py`, what the WebUI trains for v3/v4): `SoVITS_weights_v3|v4/
  <exp>_e<E>_s<S>_l<rank>.pth` = `{"weight": fp16 LoRA state dict (see
  `gsv_accel.models.sovits.lora.lora_state_dict`), "config": the training config, "info":
  "<E>epoch_<S>iteration", "lora_rank": int}`, a torch zip whose leading `PK` is replaced by `03` (v3)
  or `04` (v4). Official inference loads it on top of the official pretrained `s2Gv3.pth`/`s2Gv4.pth`
  of the same version, so it is only meaningful for models fine-tuned from those.
* Full export (`s2_train_v3.py`): `<exp>_e<E>_s<S>.pth` = `{"weight": the whole fp16 state dict,
  "config", "info"}` as a plain torch zip (`PK`, no version header). Official inference tells such a
  file's version by its size (over 700 MB: v3), so a full v4 export is taken for v3 there: a warning
  says so.

The config is stored as a plain nested dict (official inference reads it through a dict-to-attribute
wrapper); v3-only widths are dropped when they have the official value.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gsv_accel.formats import OfficialCompatibilityWarning, save_atomic, sovits_inference_config
from gsv_accel.formats.exports import strip_official_widths
from gsv_accel.models.sovits.config import CFM_VERSIONS, SoVITSConfig, SoVITSV3Config

__all__ = ["LORA_HEADERS", "lora_export_name", "cfm_inference_config", "export_cfm_lora", "export_cfm_full"]

# The 2-byte headers of the official LoRA exports (`process_ckpt.model_version2byte`).
LORA_HEADERS = {"v3": b"03", "v4": b"04"}
# Fields of SoVITSV3Config the official SynthesizerTrnV3 hard-codes (it ignores them as keywords).
_V3_ONLY_FIELDS = tuple(f.name for f in dataclasses.fields(SoVITSV3Config)
                        if f.name not in {g.name for g in dataclasses.fields(SoVITSConfig)})


def lora_export_name(exp: str, epoch: int, step: int, rank: int) -> str:
    """`<exp>_e<epoch>_s<step>_l<rank>.pth`, the official LoRA export's file name."""
    if not exp or "/" in exp or "\\" in exp or exp in (".", ".."):
        raise ValueError(f"experiment name {exp!r} must be a plain file-name part")
    return f"{exp}_e{epoch}_s{step}_l{rank}.pth"


def _check_version(version: str) -> None:
    if version not in CFM_VERSIONS:
        raise ValueError(f"v3/v4 exports are for versions {list(CFM_VERSIONS)}, got {version!r}")


def cfm_inference_config(config: Mapping[str, Any], version: str, lora_rank: int | None = None
                         ) -> dict[str, Any]:
    """The export's `config`: `formats.sovits_inference_config` (model/data/train sections), with the
    v3-only widths dropped where official, and `train.lora_rank` (a string, as the WebUI writes it)."""
    _check_version(version)
    cfg = sovits_inference_config(config, version)
    strip_official_widths(cfg["model"], _V3_ONLY_FIELDS, SoVITSV3Config, "this v3/v4 model")
    if lora_rank is not None:
        cfg["train"]["lora_rank"] = str(lora_rank)
    return cfg


def _fp16_copy(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.is_floating_point():
        return tensor.to(device="cpu", dtype=torch.float16, copy=True)
    return tensor.to(device="cpu", copy=True)


def _tensors(state_dict: Mapping[str, torch.Tensor]) -> None:
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"state_dict entries {', '.join(bad[:5])} are not tensors")


def export_cfm_lora(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                    path: str | os.PathLike[str], info: str, version: str, lora_rank: int) -> Path:
    """Write an official v3/v4 LoRA export (header `03`/`04`) atomically; returns the path.

    `state_dict` is `lora_state_dict(model)`; `info` is `formats.sovits_export_info(epoch, step)`;
    name the file with `lora_export_name`.
    """
    _check_version(version)
    _tensors(state_dict)
    if not any(".lora_A." in k for k in state_dict):
        raise ValueError("the state dict has no LoRA weights (lora_A): pass lora_state_dict(model)")
    payload = {"weight": {k: _fp16_copy(v) for k, v in state_dict.items()},
               "config": cfm_inference_config(config, version, lora_rank), "info": info,
               "lora_rank": int(lora_rank)}
    return save_atomic(payload, path, header=LORA_HEADERS[version])


def export_cfm_full(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                    path: str | os.PathLike[str], info: str, version: str) -> Path:
    """Write a full v3/v4 export (plain torch zip, every key in fp16) atomically; returns the path.

    A model with LoRA adapters must be merged first (`lora.merge_lora`).
    """
    _check_version(version)
    _tensors(state_dict)
    wrapped = [k for k in state_dict if ".base_model.model." in k or ".lora_" in k]
    if wrapped:
        raise ValueError(f"the state dict has LoRA/peft keys ({wrapped[0]}, ...): merge the adapters first "
                         "(gsv_accel.models.sovits.lora.merge_lora)")
    if version == "v4":
        warnings.warn("official GPT-SoVITS inference takes a full (non-LoRA) v3/v4 export for v3 by its "
                      "size; this v4 file loads correctly in gsv_accel only", OfficialCompatibilityWarning,
                      stacklevel=2)
    weights = {k: _fp16_copy(v) for k, v in state_dict.items() if not k.startswith("enc_q.")}
    payload = {"weight": weights, "config": cfm_inference_config(config, version), "info": info}
    return save_atomic(payload, path)
