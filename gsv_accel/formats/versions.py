"""GPT-SoVITS versions: the 2-byte export headers and telling a file's version from its evidence.

`detect_version` weighs the 2-byte header the official exporter writes in place of the zip's `PK`
(`05` v2Pro, `06` v2ProPlus, `03`/`04` v3/v4 LoRA), the weights' keys and shapes (symbol-table rows,
the reference encoder's width, the v2Pro/v2ProPlus speaker-verification keys and decoder widths,
flow-matching `cfm.*` keys) and the config's `version`, strongest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gsv_accel.models.sovits.config import PRO_VERSIONS, SUPPORTED_VERSIONS, SYMBOLS_PER_VERSION

__all__ = ["HEADER_VERSIONS", "VERSION_HEADERS", "KNOWN_VERSIONS", "UNSUPPORTED_VERSIONS", "detect_version"]

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

# Rows of the GPT stage's phoneme embedding per symbol table (v2, v3, v4 and the Pro variants share
# the v2 table).
_GPT_PHONEME_ROWS = {512: "v1", 732: "v2"}
# Weights only v2Pro/v2ProPlus generators have (their speaker-verification conditioning).
_PRO_KEYS = ("sv_emb.weight", "ge_to512.weight", "prelu.weight")
# v2ProPlus's config (s2v2ProPlus.json) widens the decoder (upsample_initial_channel 768 instead of
# 512) and lengthens the first upsampling kernel (20 instead of 16); the code is v2Pro's.
_PRO_PLUS_DECODER_WIDTH = 768
_PRO_PLUS_FIRST_KERNEL = 20


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
