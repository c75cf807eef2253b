"""Plain-data summaries of weight files: what `gsv-accel inspect` prints (and `--json` dumps)."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from .files import MODEL_GPT, GSVFile, load_gsv_file

__all__ = ["summarize", "parameters_by_module"]

_SOVITS_SUMMARY_FIELDS = ("version", "hidden_channels", "inter_channels", "filter_channels", "n_layers",
                          "n_heads", "gin_channels", "upsample_initial_channel", "upsample_rates",
                          "resblock_kernel_sizes", "semantic_frame_rate")
_GPT_SUMMARY_FIELDS = ("embedding_dim", "hidden_dim", "head", "n_layer", "linear_units",
                       "phoneme_vocab_size", "vocab_size")
_DATA_SUMMARY_FIELDS = ("sampling_rate", "filter_length", "hop_length", "max_sec")


def parameters_by_module(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Element counts per top-level module (e.g. enc_p, dec, flow); a common `model.` prefix is skipped."""
    keys = list(state_dict)
    skip = "model." if keys and all(k.startswith("model.") for k in keys) else ""
    counts: dict[str, int] = OrderedDict()
    for key, tensor in state_dict.items():
        top = key[len(skip):].split(".", 1)[0]
        counts[top] = counts.get(top, 0) + tensor.numel()
    return dict(counts)


def summarize(source: str | os.PathLike[str] | GSVFile) -> dict[str, Any]:
    """Plain-data summary of a weight file: what `gsv-accel inspect` prints (and `--json` dumps)."""
    gsv = source if isinstance(source, GSVFile) else load_gsv_file(source)
    dtypes: dict[str, int] = {}
    for tensor in gsv.state_dict.values():
        name = str(tensor.dtype).replace("torch.", "")
        dtypes[name] = dtypes.get(name, 0) + tensor.numel()
    config_summary: dict[str, Any] = {}
    if gsv.config:
        model = gsv.config.get("model")
        data = gsv.config.get("data")
        fields = _GPT_SUMMARY_FIELDS if gsv.model == MODEL_GPT else _SOVITS_SUMMARY_FIELDS
        if isinstance(model, Mapping):
            config_summary.update({f"model.{k}": model[k] for k in fields if k in model})
        if isinstance(data, Mapping):
            config_summary.update({f"data.{k}": data[k] for k in _DATA_SUMMARY_FIELDS if k in data})
    return {
        "path": str(gsv.path),
        "kind": gsv.kind,
        "kind_description": gsv.kind_description,
        "model": gsv.model,
        "version": gsv.version,
        "version_reason": gsv.version_reason,
        "supported": gsv.supported,
        "header": gsv.header.decode("ascii", "replace") if gsv.header else None,
        "info": gsv.info,
        "epoch": gsv.epoch,
        "iteration": gsv.iteration,
        "step": gsv.step,
        "learning_rate": gsv.learning_rate,
        "has_optimizer_state": gsv.optimizer is not None,
        "lora_rank": gsv.lora_rank,
        "num_tensors": len(gsv.state_dict),
        "num_parameters": gsv.num_parameters,
        "parameters_by_module": parameters_by_module(gsv.state_dict),
        "dtypes": dtypes,
        "config": config_summary,
        "extra_keys": sorted(str(k) for k in gsv.extra),
        "notes": list(gsv.notes),
    }
