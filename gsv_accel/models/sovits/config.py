"""Configuration of the SoVITS (stage 2) model.

Field names follow the `model` section of GPT-SoVITS' `configs/s2.json`, so an official config (or
the `config` stored inside an exported `.pth`) can be read directly with `SoVITSConfig.from_dict`.
`SoVITSConfig.for_version` gives the official defaults of each version (`configs/s2.json`,
`s2v2Pro.json`, `s2v2ProPlus.json`): the dataclass defaults are those of v1/v2. A few widths that
the official code hard-codes are fields here too (`mrte_hidden_channels`, `posterior_layers`,
`flow_layers`, `sv_dim`, ...), with defaults equal to the official values, so tiny models can be
built for tests while the default config still matches the released checkpoints key for key.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Symbol table sizes per model version (phone ids index into these tables). The Pro versions use the
# v2 table; v2 is listed first so that a table size maps back to "v2".
SYMBOLS_PER_VERSION = {"v1": 322, "v2": 732, "v2Pro": 732, "v2ProPlus": 732}
SUPPORTED_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus")
# Versions whose speaker conditioning adds a speaker-verification embedding (`sv_emb`) to the
# reference encoder's output.
PRO_VERSIONS = ("v2Pro", "v2ProPlus")

# What the official config files of each version change against the dataclass defaults (which are
# `configs/s2.json`). v2ProPlus is v2Pro with a wider decoder; the code is the same.
_OFFICIAL_OVERRIDES: dict[str, dict[str, Any]] = {
    "v1": {},
    "v2": {},
    "v2Pro": {"gin_channels": 1024, "p_dropout": 0.0},
    "v2ProPlus": {"gin_channels": 1024, "p_dropout": 0.0, "upsample_initial_channel": 768,
                  "upsample_kernel_sizes": [20, 16, 8, 2, 2]},
}


@dataclass
class SoVITSConfig:
    version: str = "v2"
    # Derived from the `data` section: filter_length // 2 + 1 and train.segment_size // hop_length.
    spec_channels: int = 1025
    segment_size: int = 32
    inter_channels: int = 192
    hidden_channels: int = 192
    filter_channels: int = 768
    n_heads: int = 2
    n_layers: int = 6
    kernel_size: int = 3
    p_dropout: float = 0.1
    resblock: str = "1"
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    upsample_rates: list[int] = field(default_factory=lambda: [10, 8, 2, 2, 2])
    upsample_initial_channel: int = 512
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [16, 16, 8, 2, 2])
    n_layers_q: int = 3
    use_spectral_norm: bool = False
    gin_channels: int = 512
    semantic_frame_rate: str = "25hz"
    freeze_quantizer: bool = True
    n_speakers: int = 0
    # Widths the official code hard-codes; defaults are the official values.
    ssl_dim: int = 768
    codebook_size: int = 1024
    mrte_hidden_channels: int = 512
    posterior_layers: int = 16
    posterior_kernel_size: int = 5
    flow_layers: int = 4
    flow_wn_layers: int = 4
    flow_kernel_size: int = 5
    ref_enc_hidden: int = 128
    # v2Pro/v2ProPlus: width of the speaker-verification embedding `sv_emb` projects from (ERes2NetV2
    # `forward3`: 8 * m_channels * expansion * 10 = 20480 for the released model). Unused by v1/v2.
    sv_dim: int = 20480

    def __post_init__(self) -> None:
        if self.version in ("v3", "v4"):
            raise ValueError(
                f"model.version={self.version!r} is not supported yet: gsv_accel trains v1, v2, v2Pro and "
                "v2ProPlus SoVITS models. Use one of those pretrained models and set model.version."
            )
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"model.version={self.version!r} is unknown; expected one of {list(SUPPORTED_VERSIONS)}"
            )
        if self.semantic_frame_rate not in ("25hz", "50hz"):
            raise ValueError(
                f"model.semantic_frame_rate must be '25hz' or '50hz', got {self.semantic_frame_rate!r}")

    @classmethod
    def for_version(cls, version: str = "v2", **overrides: Any) -> SoVITSConfig:
        """The official default architecture of `version`, with `overrides` on top.

        The dataclass defaults are `configs/s2.json` (v1/v2); v2Pro uses gin_channels 1024 and no
        dropout, v2ProPlus also a wider decoder (`configs/s2v2Pro.json`, `s2v2ProPlus.json`). Built
        like this, a model has exactly the keys and shapes of the released pretrained files.
        """
        if version not in _OFFICIAL_OVERRIDES:
            cls(version=version)  # raises the usual message for v3/v4 and unknown versions
        values: dict[str, Any] = {**copy.deepcopy(_OFFICIAL_OVERRIDES[version]), **overrides}
        return cls(version=version, **values)

    @property
    def is_pro(self) -> bool:
        """Whether the speaker conditioning takes a speaker-verification embedding (v2Pro, v2ProPlus)."""
        return self.version in PRO_VERSIONS

    @property
    def symbols_version(self) -> str:
        """The symbol table the phone ids index: "v1", or "v2" (which the Pro versions use too)."""
        return "v1" if self.version == "v1" else "v2"

    @property
    def n_symbols(self) -> int:
        return SYMBOLS_PER_VERSION[self.version]

    @property
    def hop_length(self) -> int:
        """Samples per spectrogram frame: the product of the decoder's upsample rates."""
        total = 1
        for rate in self.upsample_rates:
            total *= rate
        return total

    @classmethod
    def from_dict(cls, model: dict[str, Any], data: dict[str, Any] | None = None,
                  train: dict[str, Any] | None = None) -> SoVITSConfig:
        """Build from official-style `model` (and optionally `data`/`train`) sections.

        Keys this class does not know are ignored only if they are known official keys that do not
        affect the architecture; anything else raises, naming the key.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        ignorable = {"prosody_encoder", "use_sdp", "spk_emb_channels"}
        unknown = [k for k in model if k not in known and k not in ignorable]
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(sorted(unknown))}")
        values = {k: v for k, v in model.items() if k in known}
        if data is not None and "filter_length" in data:
            values.setdefault("spec_channels", int(data["filter_length"]) // 2 + 1)
        if train is not None and data is not None and "segment_size" in train:
            values.setdefault("segment_size", int(train["segment_size"]) // int(data["hop_length"]))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------
# v3 / v4: the flow-matching SoVITS (`SynthesizerTrnV3`)
# ------------------------------------------------------------------------------------------------

CFM_VERSIONS = ("v3", "v4")


@dataclass(frozen=True)
class CFMFrameRates:
    """How a v3/v4 model maps 25 Hz semantic features onto its mel frames (the only difference
    between v3 and v4 in the model).

    `feature_upsample`: nearest-neighbour factor from the 50 Hz content frames (two per semantic
    token) to mel frames: 1.875 for v3 (24 kHz, hop 256: 93.75 frames/s), 2 for v4 (32 kHz, hop 320:
    100 frames/s). `decode_length_factor`: mel frames per semantic token that `decode_encp` gives its
    WN mask (the official code uses 3.875 for v3, a little more than 2 * 1.875, and 4 for v4).
    """

    feature_upsample: float
    decode_length_factor: float


CFM_FRAME_RATES = {
    "v3": CFMFrameRates(feature_upsample=1.875, decode_length_factor=3.875),
    "v4": CFMFrameRates(feature_upsample=2.0, decode_length_factor=4.0),
}


@dataclass
class SoVITSV3Config(SoVITSConfig):
    """Configuration of the v3/v4 SoVITS (`SynthesizerTrnV3`: text encoder + CFM with a DiT).

    A sibling of `SoVITSConfig` (a subclass, so the official `model` section of `configs/s2.json` is
    read the same way by `from_dict`) that accepts only v3 and v4; `SoVITSConfig` keeps refusing
    them, so a v1/v2 recipe never builds a GAN generator for a v3 config. The decoder fields
    (`resblock*`, `upsample*`) are in the official config but unused by this model.

    The widths the official code hard-codes are fields, with the official values as defaults:
    `inter_channels2` (bridge output, wns1 width, DiT `text_dim`, linear_mel input), `wns1_n_layers`,
    `wns1_kernel_size`, `mel_channels` and the DiT sizes `dit_*`.
    """

    version: str = "v3"
    inter_channels2: int = 512
    wns1_n_layers: int = 8
    wns1_kernel_size: int = 5
    mel_channels: int = 100
    dit_dim: int = 1024
    dit_depth: int = 22
    dit_heads: int = 16
    dit_dim_head: int = 64
    dit_ff_mult: int = 2
    dit_conv_layers: int = 4
    dit_dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.version not in CFM_VERSIONS:
            raise ValueError(f"SoVITSV3Config is for model.version v3 or v4, got {self.version!r} "
                             "(v1/v2/v2Pro/v2ProPlus models use SoVITSConfig)")
        if self.semantic_frame_rate not in ("25hz", "50hz"):
            raise ValueError(
                f"model.semantic_frame_rate must be '25hz' or '50hz', got {self.semantic_frame_rate!r}")

    @classmethod
    def for_version(cls, version: str = "v3", **overrides: Any) -> SoVITSV3Config:
        """The official default architecture (`configs/s2.json` model section, version v3 or v4),
        with `overrides` on top: the key manifests of the released `s2Gv3.pth`/`s2Gv4.pth`."""
        return cls(version=version, **overrides)

    @property
    def frame_rates(self) -> CFMFrameRates:
        return CFM_FRAME_RATES[self.version]

    @property
    def symbols_version(self) -> str:
        return "v2"  # v3/v4 use the v2 phone table

    @property
    def n_symbols(self) -> int:
        return SYMBOLS_PER_VERSION["v2"]
