"""Configuration of the SoVITS (stage 2) model.

Field names follow the `model` section of GPT-SoVITS' `configs/s2.json`, so an official config (or
the `config` stored inside an exported `.pth`) can be read directly with `SoVITSConfig.from_dict`.
A few widths that the official code hard-codes are fields here too (`mrte_hidden_channels`,
`posterior_layers`, `flow_layers`, ...), with defaults equal to the official values, so tiny models
can be built for tests while the default config still matches the released checkpoints key for key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Symbol table sizes per model version (phone ids index into these tables).
SYMBOLS_PER_VERSION = {"v1": 322, "v2": 732}
SUPPORTED_VERSIONS = ("v1", "v2")


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

    def __post_init__(self) -> None:
        if self.version in ("v2Pro", "v2ProPlus", "v3", "v4"):
            raise ValueError(
                f"model.version={self.version!r} is not supported yet: gsv_accel trains v1 and v2 "
                "SoVITS models. Use a v2 pretrained model, or set model.version: v2."
            )
        if self.version not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"model.version={self.version!r} is unknown; expected one of {list(SUPPORTED_VERSIONS)}"
            )
        if self.semantic_frame_rate not in ("25hz", "50hz"):
            raise ValueError(
                f"model.semantic_frame_rate must be '25hz' or '50hz', got {self.semantic_frame_rate!r}")

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
