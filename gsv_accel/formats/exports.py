"""Inference exports, as the official trainer writes them, and where the WebUI looks for them.

`export_sovits` / `export_gpt` write the fp16 `{"weight", "config", "info"}` files (SoVITS v2Pro and
v2ProPlus with their `05` / `06` header) through `save_atomic`; `sovits_export_name`,
`gpt_export_name`, `sovits_export_info` and `gpt_export_info` give their names and info strings;
`sovits_weight_dir`, `gpt_weight_dir` and `official_pretrained` the WebUI's folders and pretrained
files per version; `sovits_inference_config` the config a SoVITS export stores.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import IO, Any

import torch

from gsv_accel.atomic import atomic_write
from gsv_accel.models.sovits.config import PRO_VERSIONS, SUPPORTED_VERSIONS, SoVITSConfig

from .compat import require_supported
from .errors import IncompatibleWeightsError, OfficialCompatibilityWarning, UnsupportedModelError
from .versions import (
    HEADER_VERSIONS,
    UNSUPPORTED_VERSIONS,
    VERSION_HEADERS,
    _trained_versions_text,
    _weights_version,
)

__all__ = [
    "export_sovits",
    "export_gpt",
    "sovits_inference_config",
    "sovits_export_name",
    "gpt_export_name",
    "sovits_export_info",
    "gpt_export_info",
    "sovits_weight_dir",
    "gpt_weight_dir",
    "official_pretrained",
    "save_atomic",
]

def sovits_export_name(exp: str, epoch: int, step: int) -> str:
    """File name the inference WebUI lists under SoVITS_weights*/: `<exp>_e<epoch>_s<step>.pth`."""
    _check_exp_name(exp)
    return f"{exp}_e{epoch}_s{step}.pth"


def gpt_export_name(exp: str, epoch: int) -> str:
    """File name the inference WebUI lists under GPT_weights*/: `<exp>-e<epoch>.ckpt`."""
    _check_exp_name(exp)
    return f"{exp}-e{epoch}.ckpt"


# Folders the official WebUI lists weights from, per version (GPT-SoVITS' config.py).
_SOVITS_WEIGHT_DIRS = {"v1": "SoVITS_weights", "v2": "SoVITS_weights_v2", "v3": "SoVITS_weights_v3",
                       "v4": "SoVITS_weights_v4", "v2Pro": "SoVITS_weights_v2Pro",
                       "v2ProPlus": "SoVITS_weights_v2ProPlus"}
_GPT_WEIGHT_DIRS = {"v1": "GPT_weights", "v2": "GPT_weights_v2", "v3": "GPT_weights_v3",
                    "v4": "GPT_weights_v4", "v2Pro": "GPT_weights_v2Pro",
                    "v2ProPlus": "GPT_weights_v2ProPlus"}
# The official pretrained files each version fine-tunes from, relative to the GPT-SoVITS checkout.
# The GPT stage of v3, v4, v2Pro and v2ProPlus all start from s1v3.ckpt (same architecture as v2's).
_OFFICIAL_PRETRAINED = {
    "v1": {"s2G": "GPT_SoVITS/pretrained_models/s2G488k.pth",
           "s2D": "GPT_SoVITS/pretrained_models/s2D488k.pth",
           "s1": "GPT_SoVITS/pretrained_models/s1bert25hz-2kh-longer-epoch=68e-step=50232.ckpt"},
    "v2": {"s2G": "GPT_SoVITS/pretrained_models/gsv-v2final-pretrained/s2G2333k.pth",
           "s2D": "GPT_SoVITS/pretrained_models/gsv-v2final-pretrained/s2D2333k.pth",
           "s1": "GPT_SoVITS/pretrained_models/gsv-v2final-pretrained/"
                 "s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt"},
    "v2Pro": {"s2G": "GPT_SoVITS/pretrained_models/v2Pro/s2Gv2Pro.pth",
              "s2D": "GPT_SoVITS/pretrained_models/v2Pro/s2Dv2Pro.pth",
              "s1": "GPT_SoVITS/pretrained_models/s1v3.ckpt"},
    "v2ProPlus": {"s2G": "GPT_SoVITS/pretrained_models/v2Pro/s2Gv2ProPlus.pth",
                  "s2D": "GPT_SoVITS/pretrained_models/v2Pro/s2Dv2ProPlus.pth",
                  "s1": "GPT_SoVITS/pretrained_models/s1v3.ckpt"},
    # v3/v4 have no discriminator: their decoder is trained by flow matching (recipes/s2_cfm.py).
    "v3": {"s2G": "GPT_SoVITS/pretrained_models/s2Gv3.pth",
           "s1": "GPT_SoVITS/pretrained_models/s1v3.ckpt"},
    "v4": {"s2G": "GPT_SoVITS/pretrained_models/gsv-v4-pretrained/s2Gv4.pth",
           "s1": "GPT_SoVITS/pretrained_models/s1v3.ckpt"},
}


def _known_version(version: str, table: Mapping[str, Any]) -> None:
    if version not in table:
        raise ValueError(f"unknown GPT-SoVITS version {version!r}; expected one of {list(table)}")


def sovits_weight_dir(version: str) -> str:
    """The folder (relative to a GPT-SoVITS checkout) whose SoVITS exports the inference WebUI lists
    for `version`: `SoVITS_weights` (v1), `SoVITS_weights_v2`, `SoVITS_weights_v2Pro`, ..."""
    _known_version(version, _SOVITS_WEIGHT_DIRS)
    return _SOVITS_WEIGHT_DIRS[version]


def gpt_weight_dir(version: str) -> str:
    """The folder of the GPT exports trained alongside a `version` SoVITS model: `GPT_weights` (v1),
    `GPT_weights_v2`, `GPT_weights_v2Pro`, ... (the GPT model itself is v2's for every version but v1)."""
    _known_version(version, _GPT_WEIGHT_DIRS)
    return _GPT_WEIGHT_DIRS[version]


def official_pretrained(version: str) -> dict[str, str]:
    """The official pretrained files of `version` (v1, v2, v2Pro, v2ProPlus), relative to a GPT-SoVITS
    checkout: `{"s2G": generator, "s2D": discriminator, "s1": GPT}`. v2Pro/v2ProPlus pair with the GPT
    `s1v3.ckpt`, as the WebUI does."""
    _known_version(version, _OFFICIAL_PRETRAINED)
    return dict(_OFFICIAL_PRETRAINED[version])


def sovits_export_info(epoch: int, step: int) -> str:
    """The `info` string official SoVITS exports carry."""
    return f"{epoch}epoch_{step}iteration"


def gpt_export_info(epoch: int) -> str:
    """The `info` string official GPT exports carry."""
    return f"GPT-e{epoch}"


def _check_exp_name(exp: str) -> None:
    if not exp or "/" in exp or "\\" in exp or exp in (".", ".."):
        raise ValueError(f"experiment name {exp!r} must be a plain file-name part")


def _plain_config(obj: Any, where: str = "config") -> Any:
    """A config as plain JSON-like data: dicts, lists, strings, numbers, booleans, None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain_config(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_config(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, PurePath):
        return str(obj)
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, "__dict__") and type(obj).__name__ == "HParams":
        return _plain_config(vars(obj), where)
    raise TypeError(f"{where} is a {type(obj).__name__}; an export config holds only plain data")


# gsv_accel-only widths that the official code hard-codes (the official SynthesizerTrn swallows
# unknown keyword arguments, so a non-default value would silently be ignored by official inference).
_HARDCODED_FIELDS = ("ssl_dim", "codebook_size", "mrte_hidden_channels", "posterior_layers",
                     "posterior_kernel_size", "flow_layers", "flow_wn_layers", "flow_kernel_size",
                     "ref_enc_hidden", "sv_dim")


def sovits_inference_config(config: Mapping[str, Any], version: str = "v2") -> dict[str, Any]:
    """The `config` an official-style SoVITS export stores, as a plain nested dict.

    Needs `model` and `data` sections (configs/s2.json layout) and `train.segment_size`. Official
    inference builds the model as `SynthesizerTrn(filter_length // 2 + 1, segment_size // hop_length,
    n_speakers=data.n_speakers, **model)`, so `spec_channels`, `segment_size` and `n_speakers` are
    moved out of the model section (after checking they agree with data/train); `model.version` and a
    top-level `version` are set (as the WebUI's tmp_s2.json has them). gsv_accel-only widths are
    dropped when they have the official value; other values are kept (gsv_accel reads them) with an
    `OfficialCompatibilityWarning`.
    """
    cfg = _plain_config(config)
    if not isinstance(cfg, dict):
        raise TypeError("config must be a mapping with 'model' and 'data' sections")
    model, data = cfg.get("model"), cfg.get("data")
    if not isinstance(model, dict) or not isinstance(data, dict):
        raise ValueError("an export config needs 'model' and 'data' sections, as in GPT-SoVITS' "
                         "configs/s2.json")
    train = cfg.setdefault("train", {})
    if not isinstance(train, dict):
        raise ValueError("the export config's 'train' section must be a mapping")
    missing = [f"data.{k}" for k in ("filter_length", "hop_length", "sampling_rate") if k not in data]
    missing += ["train.segment_size"] if "segment_size" not in train else []
    if missing:
        raise ValueError(f"the export config lacks {', '.join(missing)}, which official inference reads")

    for where, section in (("model.version", model), ("version", cfg)):
        have = section.get("version")
        if have is not None and have != version:
            raise ValueError(f"config {where} is {have!r} but the export was asked for version {version!r}")
    model["version"] = version
    cfg["version"] = version

    spec = model.pop("spec_channels", None)
    if spec is not None and int(spec) != int(data["filter_length"]) // 2 + 1:
        raise ValueError(f"model.spec_channels={spec} disagrees with data.filter_length="
                         f"{data['filter_length']} (expected {int(data['filter_length']) // 2 + 1})")
    seg = model.pop("segment_size", None)
    if seg is not None and int(seg) != int(train["segment_size"]) // int(data["hop_length"]):
        raise ValueError(f"model.segment_size={seg} disagrees with train.segment_size / data.hop_length "
                         f"= {int(train['segment_size']) // int(data['hop_length'])}")
    speakers = model.pop("n_speakers", None)
    data.setdefault("n_speakers", int(speakers) if speakers is not None else 0)

    strip_official_widths(model, _HARDCODED_FIELDS, SoVITSConfig, "this model")
    return cfg


def strip_official_widths(model: dict[str, Any], fields: Sequence[str], config_class: type,
                          what: str) -> None:
    """Drop from an export's `model` section the widths official GPT-SoVITS hard-codes (official
    configs do not carry them) where they have the official value; warn (`OfficialCompatibilityWarning`)
    when one does not, since official inference then cannot build the model."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    odd = {}
    for name in fields:
        if name in model:
            if model[name] == defaults[name]:
                del model[name]
            else:
                odd[name] = model[name]
    if odd:
        warnings.warn(
            f"{what} has widths official GPT-SoVITS hard-codes, with non-official values "
            f"({', '.join(f'{k}={v}' for k, v in odd.items())}): gsv_accel can load the export, official "
            "GPT-SoVITS inference cannot", OfficialCompatibilityWarning, stacklevel=4)


def _half_copy(tensor: torch.Tensor) -> torch.Tensor:
    # Always a fresh, compact CPU tensor (a view would make torch.save write its whole storage).
    tensor = tensor.detach()
    if tensor.is_floating_point():
        return tensor.to(device="cpu", dtype=torch.float16, copy=True)
    return tensor.to(device="cpu", copy=True)


def export_sovits(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
                  path: str | os.PathLike[str], info: str, version: str = "v2") -> Path:
    """Write an inference-ready SoVITS file, as the official trainer's exports are.

    `{"weight": fp16 state dict without enc_q.*, "config": plain nested dict, "info": info}`,
    written atomically. Floating-point tensors become fp16; integer/bool buffers keep their dtype.
    v1/v2 exports are plain torch zips (no version header); v2Pro and v2ProPlus exports are torch
    zips whose first two bytes `PK` are replaced by `05` / `06`, as the official exporter writes
    them (official inference takes the version from that header). v3/v4 are refused.
    """
    if version in UNSUPPORTED_VERSIONS:
        raise UnsupportedModelError(f"exporting {version} models is not supported yet: gsv_accel trains "
                                    f"{_trained_versions_text()} SoVITS models")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unknown SoVITS version {version!r}; expected one of {list(SUPPORTED_VERSIONS)}")
    if not isinstance(info, str):
        raise TypeError("info must be a string, e.g. sovits_export_info(epoch, step)")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"state_dict entries {', '.join(bad[:5])} are not tensors")
    require_supported(state_dict)
    found, reason = _weights_version(state_dict, None, None)
    # v2Pro and v2ProPlus differ only in config values (the decoder widths), which the caller's
    # version and config state; the Pro keys must be there or not.
    same_kind = found in PRO_VERSIONS and version in PRO_VERSIONS
    if found is not None and found != version and not same_kind:
        raise IncompatibleWeightsError(f"the weights are a {found} model ({reason}) but version={version!r} "
                                       "was asked for")
    weights = {k: _half_copy(v) for k, v in state_dict.items() if not k.startswith("enc_q.")}
    payload = {"weight": weights, "config": sovits_inference_config(config, version), "info": info}
    return save_atomic(payload, path, header=VERSION_HEADERS.get(version))


def export_gpt(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any],
               path: str | os.PathLike[str], info: str) -> Path:
    """Write an inference-ready GPT (stage 1) file: `{"weight": fp16, model.* keys, "config", "info"}`.

    Keys without the `model.` prefix get it (the official files name them after the Lightning
    module's `model` attribute). `config` must be plain data with `model` and `data` sections.
    """
    if not isinstance(info, str):
        raise TypeError("info must be a string, e.g. gpt_export_info(epoch)")
    cfg = _plain_config(config)
    sections_ok = isinstance(cfg, dict) and all(isinstance(cfg.get(k), dict) for k in ("model", "data"))
    if not sections_ok:
        raise ValueError("a GPT export config needs 'model' and 'data' sections, as in "
                         "configs/s1longer-v2.yaml")
    weights = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict entry {key} is not a tensor")
        weights[key if key.startswith("model.") else "model." + key] = _half_copy(value)
    return save_atomic({"weight": weights, "config": cfg, "info": info}, path)


def save_atomic(obj: Any, path: str | os.PathLike[str], header: bytes | None = None) -> Path:
    """torch.save `obj` to `path` atomically (`gsv_accel.atomic.atomic_write`: a temporary file in the
    same folder, fsync, os.replace, then an fsync of the folder); missing parent folders are created.

    With `header` (2 bytes), the zip's leading `PK` is replaced by it, as the official exporter does
    for v2Pro/v2ProPlus/v3/v4 files. Readers of a half-written file never see it: either the old
    file or the complete new one is at `path`.
    """
    path = Path(path)
    if header is not None and (len(header) != 2 or header not in HEADER_VERSIONS):
        raise ValueError(f"unknown version header {header!r}")
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(f: IO[bytes]) -> None:
        if header is None:
            torch.save(obj, f)
            return
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getbuffer()
        f.write(header)
        f.write(data[2:])
        del data

    return atomic_write(path, write, binary=True)
