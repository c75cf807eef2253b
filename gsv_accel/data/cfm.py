"""Batches for the v3/v4 (flow-matching) SoVITS stage, from the same prepared datasets as v1/v2.

The v3/v4 models need, besides the S2 batch (HuBERT features, linear spectrogram, phones), the
normalised target mel of each utterance: v3 at 24 kHz (100 bins, hop 256), v4 at 32 kHz (hop 320).
It is computed here from the dataset's 32 kHz audio (`gsv_accel.audio.CFMMelExtractor`), so a
dataset prepared for v2 trains v3/v4 unchanged. The padded mel length follows the official collates
(`TextAudioSpeakerCollateV3` / `V4`): the model trims the mel and the upsampled content features to
the shorter of the two, so the padding decides how long a target the loss sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..audio import CFMMelExtractor, SpectrogramConfig
from .dataset import S2Collate


def official_mel_padding(version: str, max_ssl_frames: int, max_spec_frames: int) -> int:
    """Padded target-mel frames of a batch, as the official v3/v4 collates compute it."""
    if version == "v3":
        # 25 Hz features x 2 (50 Hz) x 1.875 (24 kHz / 256); the official rounds the SSL length to 8.
        return int(8 * (max_ssl_frames // 8 + 1) * 1.25 * 1.5)
    return 2 * (2 * (max_spec_frames // 2 + 1))  # v4: twice the padded spectrogram length


class CFMCollate:
    """S2 batch (`S2Collate`) plus `mel` (B, 100, Tm), the normalised target mels, and `mel_lengths`."""

    def __init__(self, version: str, spectrogram_config: SpectrogramConfig | None = None) -> None:
        self.version = version
        self.s2 = S2Collate(spectrogram_config)
        self._mel: CFMMelExtractor | None = None

    @property
    def mel_extractor(self) -> CFMMelExtractor:
        if self._mel is None:  # built lazily: DataLoader workers get the collate pickled
            self._mel = CFMMelExtractor(self.version)
        return self._mel

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mel"] = None
        return state

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        batch = self.s2(items)
        waves = [batch["wav"][row, 0, : int(n)] for row, n in enumerate(batch["wav_lengths"])]
        mel, frames = self.mel_extractor.from_32k(waves)
        max_ssl = max(int(item["ssl"].size(-1)) for item in items)
        padded = max(official_mel_padding(self.version, max_ssl, int(batch["spec_lengths"].max())),
                     mel.size(-1))
        batch["mel"] = torch.nn.functional.pad(mel, (0, padded - mel.size(-1)))
        batch["mel_lengths"] = frames.to(torch.long)
        return batch
