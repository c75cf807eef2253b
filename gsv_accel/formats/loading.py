"""Loading a GPT-SoVITS file into a model for fine-tuning: `load_weights_into` and its `LoadReport`.

Keys are adapted first (the GPT files' `model.` prefix, the two weight-norm namings), then checked
(`compat`): nothing is loaded unless every shape fits.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from gsv_accel.models.sovits.config import SoVITSConfig

from .compat import _problems_text, compatibility_problems, describe_shape_mismatch, require_supported
from .errors import IncompatibleWeightsError
from .files import MODEL_SOVITS_G, MODEL_UNKNOWN, GSVFile, load_gsv_file
from .versions import UNSUPPORTED_VERSIONS

__all__ = ["LoadReport", "load_weights_into"]

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
    which lacks the sv_emb/ge_to512/prelu weights); v3/v4 files raise `UnsupportedModelError` unless
    the model is a v3/v4 one; nothing is loaded in either case. Missing keys are listed in the report:
    the posterior encoder `enc_q.*`, which inference exports leave out, is reported as expected. With
    `strict=True` any other missing or unexpected key raises `IncompatibleWeightsError`.
    `config` (default: `model.config` when it is a `SoVITSConfig`) improves the messages.
    """
    gsv = source if isinstance(source, GSVFile) else load_gsv_file(source)
    name = gsv.path.name
    if config is None and isinstance(getattr(model, "config", None), SoVITSConfig):
        config = model.config
    cfm_model = config is not None and config.version in UNSUPPORTED_VERSIONS
    if cfm_model:
        # A v3/v4 (flow-matching) model takes v3/v4 weights: only the shape checks below apply, the
        # GAN generator's compatibility rules do not.
        if gsv.lora_rank is not None:
            raise IncompatibleWeightsError(
                f"{name} is a LoRA export (rank {gsv.lora_rank}): start from the base model it was trained "
                "on (s2Gv3.pth / s2Gv4.pth) or from a full export")
        config = None
    else:
        require_supported(gsv)
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
