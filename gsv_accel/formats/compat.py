"""Whether weights fit a SoVITS model, and messages that name the setting to change.

`compatibility_problems` / `check_compatibility` compare a file's tells (symbol-table rows, the
reference encoder's width, the v2Pro/v2ProPlus keys and header) and shapes with a `SoVITSConfig`;
`describe_shape_mismatch` turns one shape mismatch into a sentence naming the likely config field;
`require_supported` refuses v3/v4 models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from gsv_accel.models.sovits.config import PRO_VERSIONS, SYMBOLS_PER_VERSION, SoVITSConfig

from .errors import IncompatibleWeightsError, UnsupportedModelError
from .files import GSVFile
from .versions import (
    _PRO_KEYS,
    HEADER_VERSIONS,
    UNSUPPORTED_VERSIONS,
    _has_pro_keys,
    _pro_version,
    _symbol_tables_text,
    _trained_versions_text,
    _weights_version,
)

__all__ = ["compatibility_problems", "check_compatibility", "describe_shape_mismatch", "require_supported"]

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
    return (f"{name} is a {version} SoVITS model ({reason}), a flow-matching model: train it with "
            f"recipes/s2_cfm.py. The GAN recipe (recipes/s2.py) does not support {version} models: it "
            f"trains {_trained_versions_text()} models (for example from the v2Pro pretrained s2Gv2Pro.pth).")


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
