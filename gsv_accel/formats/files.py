"""GPT-SoVITS file kinds: `load_gsv_file` reads any of them into a `GSVFile`.

* pretrained S2 weights (`s2G2333k.pth`, `s2D2333k.pth`): `{"weight": state_dict}`;
* S2 training checkpoints (`G_<step>.pth`, `D_<step>.pth`):
  `{"model", "iteration", "optimizer", "learning_rate"}` (the official trainer stores the epoch in
  `iteration`);
* SoVITS exports (`SoVITS_weights*/<exp>_e<E>_s<S>.pth`): `{"weight": fp16 state dict without enc_q,
  "config": pickled utils.HParams, "info": "<E>epoch_<S>iteration"}`; v2Pro, v2ProPlus and the v3/v4
  LoRA exports replace the zip's leading `PK` with a 2-byte version header (`05`, `06`, `03`, `04`);
* GPT exports (`GPT_weights*/<exp>-e<E>.ckpt`): `{"weight": fp16 state dict with model.* keys,
  "config": dict, "info": "GPT-e<E>"}`;
* PyTorch Lightning checkpoints of the GPT stage (`epoch=E-step=S.ckpt`): `state_dict`, `epoch`,
  `global_step`, `optimizer_states`, `lr_schedulers`, `hyper_parameters`, ...

The file is unpickled by `unpickle` (nothing pickled is executed), classified by its top-level keys,
its model role (SoVITS generator/discriminator, GPT) told by its state dict's keys, and its version
by `versions`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import GSVFormatError
from .unpickle import _plain, _unpickle_safely
from .versions import UNSUPPORTED_VERSIONS, _detect_version, _trained_versions_text

__all__ = [
    "GSVFile",
    "load_gsv_file",
    "KIND_EXPORT",
    "KIND_PRETRAINED",
    "KIND_TRAIN_CHECKPOINT",
    "KIND_LIGHTNING",
    "KIND_STATE_DICT",
    "KIND_DESCRIPTIONS",
    "MODEL_SOVITS_G",
    "MODEL_SOVITS_D",
    "MODEL_GPT",
    "MODEL_UNKNOWN",
]

KIND_EXPORT = "export"
KIND_PRETRAINED = "pretrained"
KIND_TRAIN_CHECKPOINT = "train_checkpoint"
KIND_LIGHTNING = "lightning_checkpoint"
KIND_STATE_DICT = "state_dict"

KIND_DESCRIPTIONS = {
    KIND_EXPORT: "inference export (weight + config + info)",
    KIND_PRETRAINED: "pretrained weights ({'weight': state_dict})",
    KIND_TRAIN_CHECKPOINT: "S2 training checkpoint (model + optimizer + iteration + learning_rate)",
    KIND_LIGHTNING: "PyTorch Lightning checkpoint (state_dict + epoch + global_step + ...)",
    KIND_STATE_DICT: "bare state dict",
}

MODEL_SOVITS_G = "sovits_generator"
MODEL_SOVITS_D = "sovits_discriminator"
MODEL_GPT = "gpt"
MODEL_UNKNOWN = "unknown"

# The official trainer names its "save latest only" checkpoints G_233333333333.pth.
_LATEST_SENTINEL_STEP = 233333333333


@dataclass
class GSVFile:
    """One GPT-SoVITS weight file, read safely. `config` is a plain nested dict (or None)."""

    path: Path
    kind: str
    model: str
    state_dict: dict[str, torch.Tensor]
    version: str | None = None
    version_reason: str = ""
    config: dict[str, Any] | None = None
    info: str | None = None
    epoch: int | None = None
    iteration: int | None = None
    step: int | None = None
    optimizer: Any = None
    learning_rate: float | None = None
    header: bytes | None = None
    lora_rank: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        """Whether the GAN recipe (recipes/s2.py) can fine-tune from this file (v1, v2, v2Pro and
        v2ProPlus models, or version unknown); v3/v4 files are for recipes/s2_cfm.py."""
        return self.version not in UNSUPPORTED_VERSIONS

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())

    @property
    def kind_description(self) -> str:
        return KIND_DESCRIPTIONS.get(self.kind, self.kind)


def load_gsv_file(path: str | os.PathLike[str]) -> GSVFile:
    """Read any GPT-SoVITS weight file safely (see the module docstring), never executing pickled code.

    Raises `UnsafeFileError` for files that reference anything beyond tensors and plain data,
    `GSVFormatError` for files that are not GPT-SoVITS checkpoints, and `FileNotFoundError` /
    `IsADirectoryError` as `open` does.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a weight file")
    raw, header = _unpickle_safely(path)
    try:
        obj = _plain(raw)
    except RecursionError as err:  # pickle memo references can build self-containing structures
        raise GSVFormatError(f"{path.name} holds self-referencing data, not a GPT-SoVITS checkpoint") from err
    if not isinstance(obj, Mapping):
        raise GSVFormatError(f"{path.name} holds a {type(obj).__name__}, not a GPT-SoVITS checkpoint")

    gsv = _classify(path, obj, header)
    gsv.model = _model_role(gsv.state_dict)
    version, reason, notes = _detect_version(gsv.state_dict, header, gsv.config, gsv.info)
    gsv.version, gsv.version_reason = version, reason
    gsv.notes.extend(notes)
    if gsv.version in UNSUPPORTED_VERSIONS:
        gsv.notes.append(f"{gsv.version} models are not supported by gsv_accel yet (it trains "
                         f"{_trained_versions_text()})")
    return gsv


def _tensor_dict(path: Path, what: str, value: Any) -> dict[str, torch.Tensor]:
    if not isinstance(value, Mapping):
        raise GSVFormatError(f"{path.name}: {what} is a {type(value).__name__}, not a state dict")
    bad = [str(k) for k, v in value.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise GSVFormatError(
            f"{path.name}: {what} is not a state dict: entries {', '.join(bad[:5])} are not tensors")
    return dict(value)


def _strip_wrapper_prefix(sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    # DataParallel/DDP ("module.") and torch.compile ("_orig_mod.") wrappers prefix every key.
    for prefix in ("module.", "_orig_mod."):
        if sd and all(k.startswith(prefix) for k in sd):
            notes.append(f"removed the {prefix!r} prefix every key had")
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value.item())
    return None


def _classify(path: Path, obj: Mapping[str, Any], header: bytes | None) -> GSVFile:
    keys = set(obj)
    notes: list[str] = []
    if "weight" in keys and isinstance(obj["weight"], Mapping):
        sd = _strip_wrapper_prefix(_tensor_dict(path, "'weight'", obj["weight"]), notes)
        config = obj.get("config")
        if config is not None and not isinstance(config, Mapping):
            raise GSVFormatError(f"{path.name}: 'config' is a {type(config).__name__}, not a dict")
        info = obj.get("info")
        gsv = GSVFile(
            path=path, kind=KIND_EXPORT if config is not None or info is not None else KIND_PRETRAINED,
            model=MODEL_UNKNOWN, state_dict=sd, config=dict(config) if config is not None else None,
            info=str(info) if info is not None else None, header=header, notes=notes,
            lora_rank=_int_or_none(obj.get("lora_rank")),
            extra={k: v for k, v in obj.items() if k not in ("weight", "config", "info", "lora_rank")},
        )
        gsv.epoch, gsv.step = _epoch_step_from_export(gsv.info, path.name)
        return gsv
    if "model" in keys and isinstance(obj["model"], Mapping) and (
            "iteration" in keys or "optimizer" in keys or "learning_rate" in keys):
        sd = _strip_wrapper_prefix(_tensor_dict(path, "'model'", obj["model"]), notes)
        iteration = _int_or_none(obj.get("iteration"))
        lr = obj.get("learning_rate")
        match = re.fullmatch(r"[GD]_(\d+)\.pth", path.name)
        step = int(match.group(1)) if match else None
        if step == _LATEST_SENTINEL_STEP:
            notes.append("G_/D_233333333333 is the official 'latest only' name; it holds no step number")
            step = None
        return GSVFile(
            path=path, kind=KIND_TRAIN_CHECKPOINT, model=MODEL_UNKNOWN, state_dict=sd, header=header,
            # The official trainer stores the epoch under the name "iteration".
            iteration=iteration, epoch=iteration, step=step,
            optimizer=obj.get("optimizer"),
            learning_rate=float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None,
            extra={k: v for k, v in obj.items()
                   if k not in ("model", "iteration", "optimizer", "learning_rate")},
            notes=notes,
        )
    if "state_dict" in keys and isinstance(obj["state_dict"], Mapping) and (
            keys & {"epoch", "global_step", "pytorch-lightning_version", "optimizer_states", "loops"}):
        sd = _strip_wrapper_prefix(_tensor_dict(path, "'state_dict'", obj["state_dict"]), notes)
        optimizer = obj.get("optimizer_states")
        hparams = obj.get("hyper_parameters")
        config = None
        if isinstance(hparams, Mapping):
            inner = hparams.get("config")
            if isinstance(inner, Mapping):
                config = dict(inner)
            elif "model" in hparams:
                config = dict(hparams)
        return GSVFile(
            path=path, kind=KIND_LIGHTNING, model=MODEL_UNKNOWN, state_dict=sd, header=header,
            config=config, epoch=_int_or_none(obj.get("epoch")), step=_int_or_none(obj.get("global_step")),
            optimizer=optimizer, learning_rate=_lr_from_optimizer_states(optimizer),
            extra={k: v for k, v in obj.items() if k not in ("state_dict", "optimizer_states")},
            notes=notes,
        )
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = _strip_wrapper_prefix(dict(obj), notes)
        return GSVFile(path=path, kind=KIND_STATE_DICT, model=MODEL_UNKNOWN, state_dict=sd, header=header,
                       notes=notes)
    shown = ", ".join(repr(k) for k in list(obj)[:8])
    raise GSVFormatError(
        f"{path.name} is not a GPT-SoVITS weight file: its top-level keys are {shown or 'none'}; expected "
        "'weight' (exports, pretrained), 'model' (G_/D_ training checkpoints) or 'state_dict' "
        "(Lightning checkpoints)"
    )


def _lr_from_optimizer_states(states: Any) -> float | None:
    if isinstance(states, Sequence) and states and isinstance(states[0], Mapping):
        groups = states[0].get("param_groups")
        if isinstance(groups, Sequence) and groups and isinstance(groups[0], Mapping):
            lr = groups[0].get("lr")
            if isinstance(lr, (int, float)) and not isinstance(lr, bool):
                return float(lr)
    return None


def _epoch_step_from_export(info: str | None, filename: str) -> tuple[int | None, int | None]:
    if info:
        match = re.fullmatch(r"\s*(\d+)epoch_(\d+)iteration\s*", info)
        if match:
            return int(match.group(1)), int(match.group(2))
        match = re.fullmatch(r"\s*GPT-e(\d+)\s*", info)
        if match:
            return int(match.group(1)), None
    match = re.search(r"_e(\d+)_s(\d+)\.pth$", filename)
    if match:
        return int(match.group(1)), int(match.group(2))
    match = re.search(r"-e(\d+)\.ckpt$", filename)
    if match:
        return int(match.group(1)), None
    return None, None


def _model_role(sd: Mapping[str, torch.Tensor]) -> str:
    keys = list(sd)
    if not keys:
        return MODEL_UNKNOWN
    if any(k.startswith("discriminators.") for k in keys):
        return MODEL_SOVITS_D
    if all(k.startswith("model.") for k in keys) or any(k.startswith(("ar_text_embedding.", "h.layers."))
                                                         for k in keys):
        return MODEL_GPT
    if any(k.startswith(("enc_p.", "dec.", "cfm.", "flow.", "ref_enc.")) for k in keys):
        return MODEL_SOVITS_G
    return MODEL_UNKNOWN
