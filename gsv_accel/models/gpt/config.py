"""Configuration of the GPT (stage 1) text-to-semantic decoder.

Field names follow the `model` section of GPT-SoVITS' `configs/s1longer-v2.yaml`, so an official
config (or the `config` stored inside an exported GPT `.ckpt`) reads directly with
`GPTConfig.from_dict(config["model"])`. Defaults are the s1longer-v2 values, whose model has exactly
the keys of the released v2 GPT checkpoints.

Two official fields have no effect on the architecture, exactly as in the official code:

* `linear_units`: the feed-forward width is always `ffn_multiplier * hidden_dim` (4x); a config's
  `linear_units` is kept only so that `to_dict()` gives the section back unchanged.
* `random_bert`: not read by the model.

The official code also hard-codes some values; they are fields here, defaults equal to the official
values: `bert_dim` (1024, the width of the Chinese RoBERTa features), `ffn_multiplier` (4),
`position_dropout` and `transformer_dropout` (both 0.1: the config's `dropout` only applies to the
token embeddings), `norm_first` (False: post-norm layers and no final norm), `accuracy_top_k` (3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class GPTConfig:
    # Official `model` section (s1longer-v2 defaults).
    vocab_size: int = 1025
    phoneme_vocab_size: int = 732
    embedding_dim: int = 512
    hidden_dim: int = 512
    head: int = 16
    linear_units: int = 2048
    n_layer: int = 24
    dropout: float = 0.0
    EOS: int = 1024
    random_bert: int = 0
    # Values the official code hard-codes; defaults are the official values.
    bert_dim: int = 1024
    ffn_multiplier: int = 4
    position_dropout: float = 0.1
    transformer_dropout: float = 0.1
    norm_first: bool = False
    accuracy_top_k: int = 3

    def __post_init__(self) -> None:
        if self.EOS != self.vocab_size - 1:
            raise ValueError(
                f"model.EOS ({self.EOS}) must be the last semantic id, vocab_size - 1 "
                f"({self.vocab_size - 1}), as the official model requires")
        if self.embedding_dim != self.hidden_dim:
            raise ValueError(
                f"model.embedding_dim ({self.embedding_dim}) must equal model.hidden_dim "
                f"({self.hidden_dim}): the embeddings feed the transformer directly")
        if self.head <= 0 or self.hidden_dim % self.head != 0:
            raise ValueError(
                f"model.hidden_dim ({self.hidden_dim}) must be divisible by model.head ({self.head})")
        for name in ("vocab_size", "phoneme_vocab_size", "n_layer", "bert_dim", "ffn_multiplier",
                     "accuracy_top_k"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name in ("dropout", "position_dropout", "transformer_dropout"):
            value = float(getattr(self, name))
            if not 0.0 <= value < 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), got {value}")

    @property
    def ffn_dim(self) -> int:
        """Width of each layer's feed-forward block (the official model ignores `linear_units`)."""
        return self.ffn_multiplier * self.hidden_dim

    @classmethod
    def from_dict(cls, model: dict[str, Any]) -> GPTConfig:
        """Build from an official-style `model` section.

        Every official key is a field (some, documented above, without architectural effect), so
        any key this class does not know raises, naming it.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in model if k not in known]
        if unknown:
            raise ValueError(f"unknown GPT model config key(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**dict(model))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def official_dict(self) -> dict[str, Any]:
        """Only the official `model` section's fields, as GPT exports store them."""
        hard_coded = {"bert_dim", "ffn_multiplier", "position_dropout", "transformer_dropout",
                      "norm_first", "accuracy_top_k"}
        return {k: v for k, v in self.to_dict().items() if k not in hard_coded}
