"""GPT-SoVITS weight files: safe loading, version detection, compatibility checks and exports.

Every file kind the official GPT-SoVITS tools write can be read with `load_gsv_file`:

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

Nothing pickled is ever executed. Loading goes through torch's weights-only unpickler with a small
allowlist on top of torch's own (tensors, storages, dtypes, OrderedDict, torch.Size, ...):

* any class named `HParams` (GPT-SoVITS' `utils.HParams`, whatever module path it was pickled under)
  is bound to a private record class that only stores the pickled attribute dict; it is converted to
  a plain nested dict right after loading, and the real class is never imported;
* Lightning's `AttributeDict` becomes a plain dict, and pickled `pathlib` paths become pure paths
  (then strings), which never touch the file system.

Any other global (for example `os.system`) makes the load fail with `UnsafeFileError`, naming it.
The 2-byte headers are replaced by `PK` in memory only: the user's file is never written to.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import re
import secrets
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from gsv_accel.models.sovits.config import PRO_VERSIONS, SUPPORTED_VERSIONS, SYMBOLS_PER_VERSION, SoVITSConfig

__all__ = [
    "GSVFormatError",
    "UnsafeFileError",
    "UnsupportedModelError",
    "IncompatibleWeightsError",
    "OfficialCompatibilityWarning",
    "GSVFile",
    "LoadReport",
    "load_gsv_file",
    "detect_version",
    "compatibility_problems",
    "check_compatibility",
    "require_supported",
    "load_weights_into",
    "sovits_inference_config",
    "export_sovits",
    "export_gpt",
    "sovits_export_name",
    "gpt_export_name",
    "sovits_weight_dir",
    "gpt_weight_dir",
    "official_pretrained",
    "sovits_export_info",
    "gpt_export_info",
    "save_atomic",
    "HEADER_VERSIONS",
]

# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


class GSVFormatError(ValueError):
    """A file gsv_accel cannot use; the message is meant for the user, as is."""


class UnsafeFileError(GSVFormatError):
    """The file pickles a reference to something that could run code; nothing was executed."""


class UnsupportedModelError(GSVFormatError):
    """A real GPT-SoVITS model of a variant gsv_accel does not train yet (v3, v4)."""


class IncompatibleWeightsError(GSVFormatError):
    """The weights do not fit the model/config (version or shape mismatch)."""


class OfficialCompatibilityWarning(UserWarning):
    """An export that the official GPT-SoVITS inference code would not be able to load as is."""


# ----------------------------------------------------------------------------------------------
# File kinds, model roles, versions
# ----------------------------------------------------------------------------------------------

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

# The 2-byte headers the official exporter writes in place of the zip's "PK".
HEADER_VERSIONS: dict[bytes, str] = {
    b"00": "v1",
    b"01": "v2",
    b"02": "v3",
    b"03": "v3",  # v3 LoRA export
    b"04": "v4",  # v4 LoRA export
    b"05": "v2Pro",
    b"06": "v2ProPlus",
}
VERSION_HEADERS: dict[str, bytes] = {"v3": b"03", "v4": b"04", "v2Pro": b"05", "v2ProPlus": b"06"}
KNOWN_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus", "v3", "v4")
UNSUPPORTED_VERSIONS = ("v3", "v4")

_ZIP_MAGIC = b"PK\x03\x04"
# The official trainer names its "save latest only" checkpoints G_233333333333.pth.
_LATEST_SENTINEL_STEP = 233333333333
# Rows of the GPT stage's phoneme embedding per symbol table (v2, v3, v4 and the Pro variants share
# the v2 table).
_GPT_PHONEME_ROWS = {512: "v1", 732: "v2"}
# Weights only v2Pro/v2ProPlus generators have (their speaker-verification conditioning).
_PRO_KEYS = ("sv_emb.weight", "ge_to512.weight", "prelu.weight")
# v2ProPlus's config (s2v2ProPlus.json) widens the decoder (upsample_initial_channel 768 instead of
# 512) and lengthens the first upsampling kernel (20 instead of 16); the code is v2Pro's.
_PRO_PLUS_DECODER_WIDTH = 768
_PRO_PLUS_FIRST_KERNEL = 20


# ----------------------------------------------------------------------------------------------
# Safe unpickling
# ----------------------------------------------------------------------------------------------


class _HParamsRecord:
    """Stand-in for GPT-SoVITS' `utils.HParams` during unpickling.

    HParams pickles as "create an empty instance, then set its attribute dict". torch's weights-only
    unpickler can create instances of allowlisted classes and hands the attribute dict to
    `__setstate__`, which is all this class does; `_plain` turns it into a dict afterwards.
    """

    __slots__ = ("state",)

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Globals bound to harmless stand-ins (pickled name -> object the unpickler gets instead).
_REMAPPED_GLOBALS: dict[str, Any] = {
    "utils.HParams": _HParamsRecord,
    "GPT_SoVITS.utils.HParams": _HParamsRecord,
    "lightning.fabric.utilities.data.AttributeDict": dict,
    "lightning_fabric.utilities.data.AttributeDict": dict,
    "pytorch_lightning.utilities.parsing.AttributeDict": dict,
    "lightning.pytorch.utilities.parsing.AttributeDict": dict,
}
for _module in ("pathlib", "pathlib._local"):
    _REMAPPED_GLOBALS[f"{_module}.PosixPath"] = PurePosixPath
    _REMAPPED_GLOBALS[f"{_module}.PurePosixPath"] = PurePosixPath
    _REMAPPED_GLOBALS[f"{_module}.WindowsPath"] = PureWindowsPath
    _REMAPPED_GLOBALS[f"{_module}.PureWindowsPath"] = PureWindowsPath

# Modules whose names pickle records instead of the public one.
_MODULE_ALIASES = {"posix": "os", "nt": "os", "__builtin__": "builtins"}


def _is_hparams_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "HParams"


def _display_global(name: str) -> str:
    module, _, attr = name.rpartition(".")
    public = _MODULE_ALIASES.get(module)
    if public is not None:
        return f"{public}.{attr} (pickled as {name})"
    return name


def _unsafe_error(path: Path, names: Iterable[str]) -> UnsafeFileError:
    shown = sorted({_display_global(n) for n in names})
    what = "a pickled reference to " + shown[0] if len(shown) == 1 else (
        "pickled references to " + ", ".join(shown))
    return UnsafeFileError(
        f"refusing to load {path.name}: it contains {what}, which could run code; "
        "gsv_accel only loads tensors and plain data"
    )


def _require_safe_globals_api() -> None:
    if not hasattr(torch.serialization, "safe_globals") or not hasattr(
            torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise GSVFormatError(
            f"torch {torch.__version__} is too old to read GPT-SoVITS files safely; "
            "gsv_accel needs torch >= 2.6"
        )


def _open_source(path: Path) -> tuple[str | io.BytesIO, bytes | None, bool]:
    """Return what torch.load should read, the 2-byte version header if any, and whether it is a zip."""
    with open(path, "rb") as f:
        start = f.read(4)
        if len(start) < 4:
            raise GSVFormatError(f"{path.name} is not a PyTorch file: it is only {len(start)} bytes long")
        if start == _ZIP_MAGIC:
            return str(path), None, True
        if start[2:] == _ZIP_MAGIC[2:]:
            header = start[:2]
            if header not in HEADER_VERSIONS:
                raise GSVFormatError(
                    f"{path.name} starts with the unknown 2-byte version header {header!r}; known "
                    f"headers: {', '.join(h.decode() for h in HEADER_VERSIONS)}"
                )
            # Put the zip signature back in memory; the user's file is left as it is.
            data = bytearray(os.fstat(f.fileno()).st_size)
            f.seek(0)
            view = memoryview(data)
            filled = 0
            while filled < len(data):
                count = f.readinto(view[filled:])
                if not count:
                    break
                filled += count
            view.release()
            del data[filled:]
            data[:2] = b"PK"
            return io.BytesIO(data), header, True
    # Not a zip: maybe torch's legacy (pre-1.6) format, which torch.load also reads weights-only.
    return str(path), None, False


def _unpickle_safely(path: Path) -> tuple[Any, bytes | None]:
    _require_safe_globals_api()
    source, header, is_zip = _open_source(path)
    allow: dict[str, Any] = dict(_REMAPPED_GLOBALS)
    if is_zip:
        # Static scan of the pickle's GLOBAL opcodes (nothing is executed) to find every class or
        # function the file names, so that unknown ones can be refused by name up front.
        with torch.serialization.safe_globals([(obj, name) for name, obj in allow.items()]):
            try:
                unknown = torch.serialization.get_unsafe_globals_in_checkpoint(source)
            except (RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as err:
                raise _unreadable(path, err) from err
        if isinstance(source, io.BytesIO):
            source.seek(0)
        for name in unknown:
            if _is_hparams_name(name):
                allow[name] = _HParamsRecord
        refused = [name for name in unknown if name not in allow]
        if refused:
            raise _unsafe_error(path, refused)
    with torch.serialization.safe_globals([(obj, name) for name, obj in allow.items()]):
        try:
            obj = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            names = re.findall(r"GLOBAL (\S+)", str(err))
            if names:
                raise _unsafe_error(path, names[:1]) from None
            if not is_zip:
                raise GSVFormatError(
                    f"{path.name} is not a PyTorch checkpoint: it is not a zip file, and reading it as "
                    f"torch's legacy format failed ({_last_error_line(err)})"
                ) from None
            raise GSVFormatError(
                f"refusing to load {path.name}: it uses pickle features gsv_accel does not load "
                f"({_last_error_line(err)}); gsv_accel only loads tensors and plain data"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError,
                AttributeError) as err:
            # Malformed data that passed the allowlist (e.g. wrong argument types): unreadable.
            raise _unreadable(path, err) from err
    return obj, header


def _unreadable(path: Path, err: BaseException) -> GSVFormatError:
    return GSVFormatError(f"{path.name} is not a readable PyTorch file ({_first_line(err)})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _last_error_line(err: BaseException) -> str:
    """The unpickler's own reason inside torch's long weights-only error text."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", text, re.DOTALL)
    if match:
        text = match.group(1)
    text = " ".join(text.split())
    return text or type(err).__name__


def _plain(obj: Any) -> Any:
    """Recursively replace HParams records, mappings, tuples-of-data and paths by plain values.

    Tensors are left as they are; mappings become dicts (keeping their order).
    """
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, _HParamsRecord):
        state = getattr(obj, "state", None)
        if state is None:
            return {}
        if not isinstance(state, Mapping):
            raise GSVFormatError(f"a pickled HParams object holds {type(state).__name__}, not a dict")
        return {key: _plain(value) for key, value in state.items()}
    if isinstance(obj, Mapping):
        return {key: _plain(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_plain(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(value) for value in obj)
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------------------------
# The loaded file
# ----------------------------------------------------------------------------------------------


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
        """Whether gsv_accel can train/fine-tune from this file (v1, v2, v2Pro and v2ProPlus models, or
        version unknown)."""
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


# ----------------------------------------------------------------------------------------------
# Version detection
# ----------------------------------------------------------------------------------------------


def _config_version(config: Mapping[str, Any] | None) -> str | None:
    if not config:
        return None
    model = config.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("version"), str):
        return model["version"]
    if isinstance(config.get("version"), str):
        return config["version"]
    return None


def _has_pro_keys(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k in sd for k in _PRO_KEYS)


def _first_upsample_kernel(sd: Mapping[str, torch.Tensor]) -> int | None:
    for key in ("dec.ups.0.weight_v", "dec.ups.0.parametrizations.weight.original1", "dec.ups.0.weight"):
        tensor = sd.get(key)
        if tensor is not None and tensor.dim() == 3:
            return int(tensor.shape[-1])
    return None


def _pro_version(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None) -> tuple[str, str]:
    """v2Pro or v2ProPlus, for weights that have the Pro keys: the two differ only in the decoder's
    config, so the decoder's shapes tell them apart (or, without decoder weights, the config)."""
    keys = "speaker-verification keys (sv_emb.*, ge_to512.*, prelu.*)"
    conv_pre = sd.get("dec.conv_pre.weight")
    kernel = _first_upsample_kernel(sd)
    if kernel == _PRO_PLUS_FIRST_KERNEL:
        return "v2ProPlus", f"{keys} and a first decoder upsampling kernel of {kernel} (v2ProPlus)"
    if conv_pre is not None and conv_pre.dim() == 3 and conv_pre.shape[0] == _PRO_PLUS_DECODER_WIDTH:
        return "v2ProPlus", f"{keys} and a {_PRO_PLUS_DECODER_WIDTH}-channel decoder (v2ProPlus)"
    if kernel is not None or conv_pre is not None:
        return "v2Pro", f"{keys} and a v2Pro decoder"
    config_version = _config_version(config)
    if config_version in PRO_VERSIONS:
        return config_version, f"{keys} and the config's model.version"
    model_cfg = config.get("model") if isinstance(config, Mapping) else None
    width = model_cfg.get("upsample_initial_channel") if isinstance(model_cfg, Mapping) else None
    if width == _PRO_PLUS_DECODER_WIDTH:
        return "v2ProPlus", f"{keys} and a {_PRO_PLUS_DECODER_WIDTH}-channel decoder in the config"
    return "v2Pro", keys


def _weights_version(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None,
                     info: str | None) -> tuple[str | None, str]:
    """Version told by the weights themselves (keys and shapes), with the reason."""
    if _has_pro_keys(sd):
        return _pro_version(sd, config)
    if any(k.startswith("cfm.") for k in sd):
        if info == "pretrained_s2G_v4" or _config_version(config) == "v4":
            return "v4", "flow-matching decoder keys (cfm.*) and a v4 marker"
        return "v3", "flow-matching decoder keys (cfm.*) instead of a HiFi-GAN decoder (dec.*)"
    emb = sd.get("enc_p.text_embedding.weight")
    if emb is not None and emb.dim() == 2:
        for version, rows in SYMBOLS_PER_VERSION.items():
            if emb.shape[0] == rows:
                return version, f"enc_p.text_embedding.weight has {rows} rows (the {version} symbol table)"
        return None, (f"enc_p.text_embedding.weight has {emb.shape[0]} rows, matching no known symbol "
                      f"table ({_symbol_tables_text()})")
    ref = sd.get("ref_enc.spectral.0.fc.weight")
    if ref is not None and ref.dim() == 2:
        if ref.shape[1] == 704:
            return "v2", "ref_enc.spectral.0.fc.weight reads 704 spectrogram bins (v2)"
        return "v1", f"ref_enc.spectral.0.fc.weight reads all {ref.shape[1]} spectrogram bins (v1)"
    gpt_emb = None
    for key in ("model.ar_text_embedding.word_embeddings.weight", "ar_text_embedding.word_embeddings.weight"):
        if key in sd:
            gpt_emb = (key, sd[key])
    if gpt_emb is not None and gpt_emb[1].dim() == 2:
        key, tensor = gpt_emb
        version = _GPT_PHONEME_ROWS.get(int(tensor.shape[0]))
        if version is not None:
            return version, f"{key} has {tensor.shape[0]} rows (the {version} phoneme table)"
        return None, f"{key} has {tensor.shape[0]} rows, matching no known phoneme table (v1: 512, v2: 732)"
    if any(k.startswith("discriminators.") for k in sd):
        return None, "discriminator weights do not depend on the model version"
    return None, "no version-specific keys found"


def _symbol_tables_text() -> str:
    # The Pro versions share v2's table.
    return ", ".join(f"{v}: {n}" for v, n in SYMBOLS_PER_VERSION.items() if v not in PRO_VERSIONS)


def _trained_versions_text() -> str:
    return ", ".join(SUPPORTED_VERSIONS[:-1]) + " and " + SUPPORTED_VERSIONS[-1]


def detect_version(state_dict: Mapping[str, torch.Tensor], *, header: bytes | None = None,
                   config: Mapping[str, Any] | None = None,
                   info: str | None = None) -> tuple[str | None, str]:
    """Detect the GPT-SoVITS version ("v1", "v2", "v2Pro", "v2ProPlus", "v3", "v4" or None).

    Evidence, strongest first: the 2-byte header (written on purpose by the official exporter), the
    weights' keys and shapes, then the `version` stored in the config. Returns `(version, reason)`.
    GPT (stage 1) weights report "v1" or "v2" (the v3/v4/Pro GPT shares the v2 phoneme table).
    """
    version, reason, _ = _detect_version(state_dict, header, config, info)
    return version, reason


def _detect_version(state_dict: Mapping[str, torch.Tensor], header: bytes | None,
                    config: Mapping[str, Any] | None,
                    info: str | None) -> tuple[str | None, str, list[str]]:
    """`detect_version`, plus notes on disagreements between the header, weights and config."""
    notes: list[str] = []
    header_version = HEADER_VERSIONS.get(header) if header else None
    weights_version, weights_reason = _weights_version(state_dict, config, info)
    config_version = _config_version(config)

    if header_version is not None:
        version, reason = header_version, f"2-byte header {header.decode()!r}"
        if weights_version is not None and weights_version != header_version:
            notes.append(f"the header says {header_version} but the weights look like {weights_version} "
                         f"({weights_reason})")
    elif weights_version is not None:
        version, reason = weights_version, weights_reason
    elif config_version is not None:
        version, reason = config_version, "the config's model.version"
    else:
        version, reason = None, weights_reason
    if (config_version is not None and version is not None and config_version != version
            and not (version == "v2" and config_version in ("v3", "v4"))):
        # (GPT configs of v3/v4 models carry the v2 symbol table, so "v2" weights are fine there.)
        notes.append(f"the config says version {config_version} but the file is {version} ({reason})")
    return version, reason, notes


# ----------------------------------------------------------------------------------------------
# Compatibility with a SoVITSConfig / a model
# ----------------------------------------------------------------------------------------------

# Key pattern -> config field most likely responsible for each dimension (the last entry covers
# the remaining dimensions). First match wins.
_FIELD_HINTS: list[tuple[re.Pattern[str], tuple[str, ...]]] = [(re.compile(p), f) for p, f in [
    (r"^enc_p\.text_embedding\.", ("version", "hidden_channels")),
    (r"^enc_p\.ssl_proj\.", ("hidden_channels", "ssl_dim")),
    (r"^enc_p\.mrte\.(c_pre|text_pre)\.", ("mrte_hidden_channels", "hidden_channels")),
    (r"^enc_p\.mrte\.c_post\.", ("hidden_channels", "mrte_hidden_channels")),
    (r"^enc_p\.mrte\.", ("mrte_hidden_channels",)),
    (r"\.ffn_layers\.\d+\.conv_1\.", ("filter_channels", "hidden_channels", "kernel_size")),
    (r"\.ffn_layers\.\d+\.conv_2\.", ("hidden_channels", "filter_channels", "kernel_size")),
    (r"\.attn_layers\.\d+\.emb_rel_", ("n_heads", "hidden_channels", "n_heads")),
    (r"\.attn_layers\.", ("hidden_channels",)),
    (r"^enc_p\.proj\.", ("inter_channels", "hidden_channels")),
    (r"^enc_p\.", ("hidden_channels",)),
    (r"^dec\.conv_pre\.", ("upsample_initial_channel", "inter_channels")),
    (r"^dec\.cond\.", ("upsample_initial_channel", "gin_channels")),
    (r"^dec\.ups\.", ("upsample_initial_channel", "upsample_initial_channel", "upsample_kernel_sizes")),
    (r"^dec\.resblocks\.", ("upsample_initial_channel", "upsample_initial_channel", "resblock_kernel_sizes")),
    (r"^dec\.", ("upsample_initial_channel",)),
    (r"^flow\.flows\.\d+\.enc\.cond_layer\.", ("flow_wn_layers", "gin_channels")),
    (r"^flow\.flows\.\d+\.pre\.", ("hidden_channels", "inter_channels")),
    (r"^flow\.flows\.\d+\.post\.", ("inter_channels", "hidden_channels")),
    (r"^flow\.", ("hidden_channels", "hidden_channels", "flow_kernel_size")),
    (r"^enc_q\.enc\.cond_layer\.", ("posterior_layers", "gin_channels")),
    (r"^enc_q\.pre\.", ("hidden_channels", "spec_channels")),
    (r"^enc_q\.proj\.", ("inter_channels", "hidden_channels")),
    (r"^enc_q\.", ("hidden_channels", "hidden_channels", "posterior_kernel_size")),
    (r"^ref_enc\.spectral\.0\.", ("ref_enc_hidden", "version")),
    (r"^ref_enc\.fc\.", ("gin_channels", "ref_enc_hidden")),
    (r"^ref_enc\.", ("ref_enc_hidden",)),
    (r"^ssl_proj\.", ("ssl_dim", "ssl_dim", "semantic_frame_rate")),
    (r"^quantizer\.", ("codebook_size", "ssl_dim")),
    (r"^sv_emb\.", ("gin_channels", "sv_dim")),
    (r"^ge_to512\.", ("mrte_hidden_channels", "gin_channels")),
    (r"^prelu\.", ("gin_channels",)),
]]

# Layer-list prefixes -> the field that sets how many entries they have.
_COUNT_HINTS: list[tuple[re.Pattern[str], str]] = [(re.compile(p), f) for p, f in [
    (r"^enc_p\.encoder_text\.(attn_layers|ffn_layers|norm_layers_\d)\.(\d+)\.", "n_layers"),
    (r"^enc_p\.encoder_ssl\.(attn_layers|ffn_layers|norm_layers_\d)\.(\d+)\.", "n_layers"),
    (r"^enc_p\.encoder2\.(attn_layers|ffn_layers|norm_layers_\d)\.(\d+)\.", "n_layers"),
    (r"^dec\.ups\.(\d+)\.", "upsample_rates"),
    (r"^dec\.resblocks\.(\d+)\.", "resblock_kernel_sizes"),
    (r"^flow\.flows\.\d+\.enc\.(in_layers|res_skip_layers)\.(\d+)\.", "flow_wn_layers"),
    (r"^flow\.flows\.(\d+)\.", "flow_layers"),
    (r"^enc_q\.enc\.(in_layers|res_skip_layers)\.(\d+)\.", "posterior_layers"),
    (r"^quantizer\.vq\.layers\.(\d+)\.", "n_layers_q"),
    # The number of period discriminators depends on the version (v2Pro/v2ProPlus add two).
    (r"^discriminators\.(\d+)\.", "version"),
]]


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def describe_shape_mismatch(key: str, file_shape: Sequence[int], model_shape: Sequence[int],
                            config: SoVITSConfig | None = None) -> str:
    """One sentence naming the key, both shapes and the config field most likely responsible."""
    file_shape, model_shape = tuple(int(s) for s in file_shape), tuple(int(s) for s in model_shape)
    base = (f"{key}: the file has shape {_shape_text(file_shape)} but the model expects "
            f"{_shape_text(model_shape)}")
    if len(file_shape) != len(model_shape):
        return base + " (a different number of dimensions: this is a different layer type)"
    if key == "enc_p.text_embedding.weight" and file_shape[0] != model_shape[0]:
        return _text_embedding_message(file_shape[0], config) + f" ({base})"
    dim = next(i for i, (a, b) in enumerate(zip(file_shape, model_shape, strict=True)) if a != b)
    fields: tuple[str, ...] = ()
    for pattern, candidates in _FIELD_HINTS:
        if pattern.search(key):
            fields = candidates
            break
    if not fields:
        return base
    name = fields[min(dim, len(fields) - 1)]
    hint = f"; most likely model.{name}"
    if config is not None and hasattr(config, name):
        current = getattr(config, name)
        if isinstance(current, int) and not isinstance(current, bool) and current == model_shape[dim]:
            hint += f" (the config has {current}, the file suggests {file_shape[dim]})"
        else:
            hint += f" (the config has {current!r})"
    return base + hint


def _text_embedding_message(rows: int, config: SoVITSConfig | None) -> str:
    for version, count in SYMBOLS_PER_VERSION.items():
        if rows == count:
            said = ""
            if config is not None:
                said = (f" (the config says {config.version}, whose symbol table has "
                        f"{SYMBOLS_PER_VERSION[config.version]} entries)")
            return (f"enc_p.text_embedding.weight has {rows} rows: a {version} model; "
                    f"set model.version: {version}{said}")
    return (f"enc_p.text_embedding.weight has {rows} rows, matching no known GPT-SoVITS symbol table "
            f"({_symbol_tables_text()})")


def _expected_sovits_shapes(config: SoVITSConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of a few telling keys of the official generator, computed from the config alone."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {
        "enc_p.text_embedding.weight": (c.n_symbols, c.hidden_channels),
        "enc_p.ssl_proj.weight": (c.hidden_channels, c.ssl_dim, 1),
        "enc_p.encoder_text.ffn_layers.0.conv_1.weight": (c.filter_channels, c.hidden_channels,
                                                          c.kernel_size),
        "enc_p.mrte.c_pre.weight": (c.mrte_hidden_channels, c.hidden_channels, 1),
        "enc_p.proj.weight": (2 * c.inter_channels, c.hidden_channels, 1),
        "dec.conv_pre.weight": (c.upsample_initial_channel, c.inter_channels, 7),
        "dec.cond.weight": (c.upsample_initial_channel, c.gin_channels, 1),
        "flow.flows.0.pre.weight": (c.hidden_channels, c.inter_channels // 2, 1),
        "flow.flows.0.enc.cond_layer.weight_v": (2 * c.hidden_channels * c.flow_wn_layers, c.gin_channels, 1),
        "enc_q.pre.weight": (c.hidden_channels, c.spec_channels, 1),
        "enc_q.enc.cond_layer.weight_v": (2 * c.hidden_channels * c.posterior_layers, c.gin_channels, 1),
        "ref_enc.spectral.0.fc.weight": (c.ref_enc_hidden, c.spec_channels if c.version == "v1" else 704),
        "ref_enc.fc.fc.weight": (c.gin_channels, c.ref_enc_hidden),
        "sv_emb.weight": (c.gin_channels, c.sv_dim),
        "ge_to512.weight": (c.mrte_hidden_channels, c.gin_channels),
        "prelu.weight": (c.gin_channels,),
        "ssl_proj.weight": (c.ssl_dim, c.ssl_dim, 2 if c.semantic_frame_rate == "25hz" else 1),
        "quantizer.vq.layers.0._codebook.embed": (c.codebook_size, c.ssl_dim),
    }
    for i, kernel in enumerate(c.upsample_kernel_sizes[: len(c.upsample_rates)]):
        shapes[f"dec.ups.{i}.weight_v"] = (c.upsample_initial_channel // 2**i,
                                           c.upsample_initial_channel // 2 ** (i + 1), kernel)
    return shapes


def _unsupported_message(name: str, version: str, reason: str) -> str:
    return (f"{name} is a {version} SoVITS model ({reason}); gsv_accel does not support {version} "
            f"models yet: it trains {_trained_versions_text()} models. Start from one of those instead "
            f"(for example the v2 pretrained s2G2333k.pth or the v2Pro pretrained s2Gv2Pro.pth).")


def require_supported(weights: GSVFile | Mapping[str, torch.Tensor], name: str = "the weights") -> None:
    """Raise `UnsupportedModelError` for v3 / v4 files or state dicts."""
    if isinstance(weights, GSVFile):
        version, reason, name = weights.version, weights.version_reason, weights.path.name
        if version not in UNSUPPORTED_VERSIONS:
            version, reason = _weights_version(weights.state_dict, None, weights.info)
    else:
        version, reason = _weights_version(weights, None, None)
    if version in UNSUPPORTED_VERSIONS:
        raise UnsupportedModelError(_unsupported_message(name, version, reason))


def _pro_problem(sd: Mapping[str, torch.Tensor], config: SoVITSConfig, header: bytes | None,
                 shape_problems: bool) -> str | None:
    """Whether the file's Pro-ness (and Pro flavour) disagrees with `config.version`, as a message
    naming the setting to change; None when they agree."""
    file_is_pro = _has_pro_keys(sd)
    if file_is_pro and not config.is_pro:
        version, reason = _pro_version(sd, None)
        header_version = HEADER_VERSIONS.get(header) if header else None
        if header_version in PRO_VERSIONS:
            version, reason = header_version, f"2-byte header {header.decode()!r}"
        return (f"the file is a {version} model ({reason}); set model.version: {version} "
                f"(the config says {config.version})")
    if config.is_pro and not file_is_pro:
        absent = ", ".join(k.split(".", 1)[0] + ".*" for k in _PRO_KEYS if k not in sd)
        version, reason = _weights_version(sd, None, None)
        said = f"a {version} model ({reason})" if version else "not a v2Pro/v2ProPlus model"
        return (f"the file is {said}: it has no {absent} weights, which {config.version} models need "
                f"(the config says {config.version}); set model.version: {version or 'v2'} to fine-tune "
                f"it as it is, or start from a {config.version} model (e.g. the pretrained "
                f"s2G{config.version}.pth)")
    if file_is_pro and config.is_pro:
        # v2Pro and v2ProPlus differ in the decoder's config only. The official exporter's header says
        # which one a file is; otherwise the decoder shapes do, which matters when they disagree.
        header_version = HEADER_VERSIONS.get(header) if header else None
        if header_version in PRO_VERSIONS:
            version, reason = header_version, f"2-byte header {header.decode()!r}"
        else:
            version, reason = _pro_version(sd, None)
            if not shape_problems:
                return None
        if version != config.version:
            widths = " and that version's decoder widths" if shape_problems else ""
            return (f"the file is a {version} model ({reason}); set model.version: {version}{widths} "
                    f"(the config says {config.version})")
    return None


def compatibility_problems(weights: GSVFile | Mapping[str, torch.Tensor], config: SoVITSConfig,
                           expected_shapes: Mapping[str, Sequence[int]] | None = None,
                           header: bytes | None = None) -> list[str]:
    """Problems loading these SoVITS generator weights into a model built from `config`.

    Checks the version tells (v2Pro/v2ProPlus speaker-verification keys, symbol-table rows,
    reference-encoder width) and then shapes: those of `expected_shapes` (e.g.
    `{k: v.shape for k, v in model.state_dict().items()}`) when given, else a set of telling keys
    computed from the config. `header` (taken from a `GSVFile` when not given) tells v2Pro from
    v2ProPlus files. Raises `UnsupportedModelError` for v3/v4.
    """
    require_supported(weights)
    sd = weights.state_dict if isinstance(weights, GSVFile) else weights
    if header is None and isinstance(weights, GSVFile):
        header = weights.header
    problems: list[str] = []
    emb = sd.get("enc_p.text_embedding.weight")
    version_problem = False
    if emb is not None and emb.dim() == 2 and emb.shape[0] != config.n_symbols:
        problems.append(_text_embedding_message(int(emb.shape[0]), config))
        version_problem = True
    ref = sd.get("ref_enc.spectral.0.fc.weight")
    if ref is not None and ref.dim() == 2 and not version_problem:
        width = int(ref.shape[1])
        want = config.spec_channels if config.version == "v1" else 704
        if width != want:
            if width == 704:
                problems.append("ref_enc.spectral.0.fc.weight reads 704 spectrogram bins: a v2 model; "
                                f"set model.version: v2 (the config says {config.version})")
                version_problem = True
            elif config.version != "v1" and width == config.spec_channels:
                problems.append(f"ref_enc.spectral.0.fc.weight reads all {width} spectrogram bins: a v1 "
                                f"model; set model.version: v1 (the config says {config.version})")
                version_problem = True
    shapes = expected_shapes if expected_shapes is not None else _expected_sovits_shapes(config)
    shape_problems = []
    for key, want_shape in shapes.items():
        have = sd.get(key)
        if have is None:
            continue
        if tuple(have.shape) != tuple(int(s) for s in want_shape):
            if version_problem and key in ("enc_p.text_embedding.weight", "ref_enc.spectral.0.fc.weight"):
                continue
            shape_problems.append(describe_shape_mismatch(key, tuple(have.shape), tuple(want_shape), config))
    if not version_problem:
        pro_problem = _pro_problem(sd, config, header, bool(shape_problems))
        if pro_problem is not None:
            problems.insert(0, pro_problem)
    return problems + shape_problems


def check_compatibility(weights: GSVFile | Mapping[str, torch.Tensor], config: SoVITSConfig,
                        expected_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
    """Raise `IncompatibleWeightsError` (or `UnsupportedModelError`) with a clear message, or return."""
    problems = compatibility_problems(weights, config, expected_shapes)
    if problems:
        name = weights.path.name if isinstance(weights, GSVFile) else "the weights"
        raise IncompatibleWeightsError(_problems_text(name, problems))


def _problems_text(name: str, problems: Sequence[str], limit: int = 12) -> str:
    lines = [f"{name} does not fit the model:"]
    lines += [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more shape mismatches")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Loading into a model
# ----------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What `load_weights_into` did."""

    source: str
    kind: str
    version: str | None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model key was loaded except the expected ones and nothing was left over."""
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source} ({self.kind}, "
                 f"version {self.version or 'unknown'})"]
        if self.expected_missing:
            groups = sorted({k.split(".", 1)[0] for k in self.expected_missing})
            lines.append(f"  not in the file, as expected: {len(self.expected_missing)} keys of "
                         f"{', '.join(groups)}")
        if self.missing:
            lines.append(f"  missing (left at their initial values): {_key_list(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored): {_key_list(self.unexpected)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _key_list(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def _adapt_keys(file_sd: dict[str, torch.Tensor], model_keys: set[str],
                notes: list[str]) -> dict[str, torch.Tensor]:
    sd = file_sd
    # GPT files prefix every key with "model." (the Lightning module's attribute); a bare model lacks it.
    if sd and all(k.startswith("model.") for k in sd) and not any(k.startswith("model.") for k in model_keys):
        sd = {k[len("model."):]: v for k, v in sd.items()}
        notes.append("removed the 'model.' prefix of the file's keys (Lightning module naming)")
    elif model_keys and all(k.startswith("model.") for k in model_keys) and not any(
            k.startswith("model.") for k in sd):
        sd = {"model." + k: v for k, v in sd.items()}
        notes.append("added the 'model.' prefix to the file's keys")
    # Weight norm: old-style weight_g/weight_v versus torch.nn.utils.parametrizations naming.
    renames = {".weight_g": ".parametrizations.weight.original0",
               ".weight_v": ".parametrizations.weight.original1"}
    renamed = 0
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = key
        if key not in model_keys:
            for old_suffix, new_suffix in renames.items():
                if key.endswith(old_suffix) and key[: -len(old_suffix)] + new_suffix in model_keys:
                    new = key[: -len(old_suffix)] + new_suffix
                elif key.endswith(new_suffix) and key[: -len(new_suffix)] + old_suffix in model_keys:
                    new = key[: -len(new_suffix)] + old_suffix
        renamed += new != key
        out[new] = value
    if renamed:
        notes.append(f"renamed {renamed} weight-norm keys between the weight_g/weight_v and "
                     "parametrizations namings")
    return out


def _count_hints(keys: Iterable[str]) -> list[str]:
    fields = []
    for key in keys:
        for pattern, name in _COUNT_HINTS:
            if pattern.search(key):
                if name not in fields:
                    fields.append(name)
                break
    return fields


def load_weights_into(model: torch.nn.Module, source: str | os.PathLike[str] | GSVFile,
                      strict: bool = False, config: SoVITSConfig | None = None) -> LoadReport:
    """Load a GPT-SoVITS file (or an already loaded `GSVFile`) into `model` for fine-tuning.

    Shape mismatches raise `IncompatibleWeightsError` naming the keys, both shapes and the likely
    config field (a wrong `model.version` is reported as such, e.g. a v2 file for a v2Pro model,
    which lacks the sv_emb/ge_to512/prelu weights); v3/v4 files raise `UnsupportedModelError`;
    nothing is loaded in either case. Missing keys are listed in the report:
    the posterior encoder `enc_q.*`, which inference exports leave out, is reported as expected. With
    `strict=True` any other missing or unexpected key raises `IncompatibleWeightsError`.
    `config` (default: `model.config` when it is a `SoVITSConfig`) improves the messages.
    """
    gsv = source if isinstance(source, GSVFile) else load_gsv_file(source)
    name = gsv.path.name
    require_supported(gsv)
    if config is None and isinstance(getattr(model, "config", None), SoVITSConfig):
        config = model.config
    model_sd = model.state_dict()
    notes: list[str] = []
    file_sd = _adapt_keys(gsv.state_dict, set(model_sd), notes)
    model_shapes = {k: tuple(v.shape) for k, v in model_sd.items()}

    problems: list[str] = []
    if config is not None and gsv.model in (MODEL_SOVITS_G, MODEL_UNKNOWN):
        problems = compatibility_problems(file_sd, config, expected_shapes=model_shapes, header=gsv.header)
    else:
        for key, tensor in file_sd.items():
            if key in model_shapes and tuple(tensor.shape) != model_shapes[key]:
                problems.append(describe_shape_mismatch(key, tuple(tensor.shape), model_shapes[key], config))
    if problems:
        raise IncompatibleWeightsError(_problems_text(name, problems))

    file_has_enc_q = any(k.startswith("enc_q.") for k in file_sd)
    missing, expected_missing = [], []
    for key in model_sd:
        if key in file_sd:
            continue
        if key.startswith("enc_q.") and not file_has_enc_q:
            expected_missing.append(key)
        else:
            missing.append(key)
    unexpected = [k for k in file_sd if k not in model_sd]
    if expected_missing:
        notes.append("enc_q.* (the posterior encoder, used only in training) is not stored in inference "
                     "exports; it keeps its initial values")
    hints = _count_hints(missing + unexpected)
    if hints:
        notes.append("missing/unexpected layer keys suggest a different layer count: check "
                     + ", ".join(f"model.{h}" for h in hints))
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys: {_key_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_key_list(unexpected)}")
        if hints:
            parts.append("check " + ", ".join(f"model.{h}" for h in hints))
        raise IncompatibleWeightsError(f"{name} does not fit the model (strict): " + "; ".join(parts))

    to_load = {k: v for k, v in file_sd.items() if k in model_sd}
    if model_sd and not to_load:
        raise IncompatibleWeightsError(
            f"none of the keys of {name} ({gsv.model.replace('_', ' ')} weights, e.g. "
            f"{next(iter(file_sd), 'none')}) exist in the model (e.g. {next(iter(model_sd))}): "
            "is this the right file for this model?")
    result = model.load_state_dict(to_load, strict=False)
    del result  # every key was checked above
    return LoadReport(source=str(gsv.path), kind=gsv.kind, version=gsv.version, loaded=sorted(to_load),
                      missing=missing, expected_missing=expected_missing, unexpected=unexpected,
                      notes=notes + list(gsv.notes))


# ----------------------------------------------------------------------------------------------
# Exports
# ----------------------------------------------------------------------------------------------


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

    defaults = {f.name: f.default for f in dataclasses.fields(SoVITSConfig)}
    odd = {}
    for name in _HARDCODED_FIELDS:
        if name in model:
            if model[name] == defaults[name]:
                del model[name]
            else:
                odd[name] = model[name]
    if odd:
        warnings.warn(
            "this model uses widths official GPT-SoVITS hard-codes, with non-official values "
            f"({', '.join(f'{k}={v}' for k, v in odd.items())}): gsv_accel can load the export, official "
            "GPT-SoVITS inference cannot", OfficialCompatibilityWarning, stacklevel=3)
    return cfg


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
    """torch.save `obj` to `path` atomically: a temporary file in the same folder, fsync, os.replace.

    With `header` (2 bytes), the zip's leading `PK` is replaced by it, as the official exporter does
    for v2Pro/v2ProPlus/v3/v4 files. Readers of a half-written file never see it: either the old
    file or the complete new one is at `path`.
    """
    path = Path(path)
    if header is not None and (len(header) != 2 or header not in HEADER_VERSIONS):
        raise ValueError(f"unknown version header {header!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # O_EXCL: never clobber anything; mode 0o666 lets the umask decide, as for any new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            if header is None:
                torch.save(obj, f)
            else:
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                data = buffer.getbuffer()
                f.write(header)
                f.write(data[2:])
                del data
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable on POSIX; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------
# Summaries (used by `gsv-accel inspect`)
# ----------------------------------------------------------------------------------------------

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
