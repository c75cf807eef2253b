"""GPT (stage 1) data: the official length filters and the batch layout the decoder expects.

The GPT stage reads three columns of a prepared dataset: `phone_ids`, `bert` (BERT phone features,
zeros for non-Chinese text, as the official pipeline does) and `semantic` (25 Hz codes; the dataset
must have been prepared with `--s2-pretrained`).

Filters, as the official `Text2SemanticDataset` applies them (each dropped item is reported):
* semantic length <= `max_sec` * 25 codes (54 s by default);
* at most `max_phones` phones (540);
* phones per second within [`min_phones_per_sec`, `max_phones_per_sec`] ([3, 25]), where seconds =
  semantic length / 25; an item with no semantic codes is rejected as empty rather than divided by.

Batch layout (`S1Collate`): phones and BERT features are padded on the LEFT (the decoder's text mask
treats the first Tx - len positions as padding, which is what reproduces the official fixture), the
semantic ids on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

SEMANTIC_RATE = 25  # codes per second


@dataclass(frozen=True)
class S1Filter:
    max_sec: float = 54.0
    max_phones: int = 540
    min_phones_per_sec: float = 3.0
    max_phones_per_sec: float = 25.0

    def reason(self, n_phones: int, n_semantic: int) -> str | None:
        """Why an item is dropped, or None to keep it."""
        if n_semantic == 0:
            return "no semantic codes"
        if n_phones == 0:
            return "no phones"
        if n_semantic > self.max_sec * SEMANTIC_RATE:
            return f"{n_semantic / SEMANTIC_RATE:.1f} s of semantic codes > data.max_sec {self.max_sec:g}"
        if n_phones > self.max_phones:
            return f"{n_phones} phones > data.max_phones {self.max_phones}"
        per_sec = n_phones / (n_semantic / SEMANTIC_RATE)
        if not self.min_phones_per_sec <= per_sec <= self.max_phones_per_sec:
            return (f"{per_sec:.1f} phones per second outside [{self.min_phones_per_sec:g}, "
                    f"{self.max_phones_per_sec:g}]")
        return None


def filter_items(phone_counts: Sequence[int], semantic_counts: Sequence[int], names: Sequence[str],
                 rules: S1Filter) -> tuple[list[int], list[tuple[str, str]]]:
    """Indices of the items kept, and (name, reason) of those dropped."""
    kept, dropped = [], []
    for index, (n_phones, n_semantic) in enumerate(zip(phone_counts, semantic_counts, strict=True)):
        reason = rules.reason(int(n_phones), int(n_semantic))
        if reason is None:
            kept.append(index)
        else:
            dropped.append((names[index], reason))
    return kept, dropped


class S1Collate:
    """Pads `GSVDataset` items (features phones, semantic, bert) into the decoder's batch:
    `phoneme_ids` (B, Tx) and `bert_feature` (B, bert_dim, Tx) left-padded, `semantic_ids` (B, Ty)
    right-padded, their lengths, and `names`."""

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = len(items)
        max_x = max(item["phones"].numel() for item in items)
        max_y = max(item["semantic"].numel() for item in items)
        bert_dim = items[0]["bert"].size(0)
        phoneme_ids = torch.zeros(batch, max_x, dtype=torch.long)
        bert = torch.zeros(batch, bert_dim, max_x)
        semantic = torch.zeros(batch, max_y, dtype=torch.long)
        x_lens = torch.zeros(batch, dtype=torch.long)
        y_lens = torch.zeros(batch, dtype=torch.long)
        for row, item in enumerate(items):
            n_x, n_y = item["phones"].numel(), item["semantic"].numel()
            phoneme_ids[row, max_x - n_x:] = item["phones"]
            bert[row, :, max_x - n_x:] = item["bert"]
            semantic[row, :n_y] = item["semantic"]
            x_lens[row], y_lens[row] = n_x, n_y
        return {"phoneme_ids": phoneme_ids, "phoneme_ids_len": x_lens, "semantic_ids": semantic,
                "semantic_ids_len": y_lens, "bert_feature": bert, "names": [i["name"] for i in items]}
