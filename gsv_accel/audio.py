"""Audio I/O and the spectrogram features of the GPT-SoVITS trainer.

Audio is read with soundfile (wav/flac/ogg), mixed to mono and resampled with soxr; no ffmpeg process
is ever spawned. The spectrograms reproduce the official `spectrogram_torch` / `spec_to_mel_torch` /
`mel_spectrogram_torch` exactly: reflect padding of (n_fft - hop) / 2 on both sides, an uncentred STFT
with a periodic Hann window, magnitude sqrt(|X|^2 + 1e-8), a Slaney-normalised mel filter bank (the
librosa default, here taken from `transformers.audio_utils`) and log(clamp(mel, 1e-5)).

`SpectrogramExtractor` is an `nn.Module` whose window and filter bank are buffers, so it works batched
on any device and dtype after `.to(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr
import torch
from torch import nn
from transformers.audio_utils import mel_filter_bank

# Magnitude floor inside the square root, and the clamp before the log, as in the official trainer.
MAGNITUDE_EPS = 1e-8
LOG_CLAMP = 1e-5


class AudioReadError(Exception):
    """An audio file could not be read or decoded; the message names the file and the cause."""


@dataclass(frozen=True)
class SpectrogramConfig:
    """The `data` section of GPT-SoVITS' s2.json that concerns features (official defaults)."""

    sampling_rate: int = 32000
    filter_length: int = 2048
    hop_length: int = 640
    win_length: int = 2048
    n_mel_channels: int = 128
    mel_fmin: float = 0.0
    mel_fmax: float | None = None

    @property
    def n_freq_bins(self) -> int:
        return self.filter_length // 2 + 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpectrogramConfig:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


def load_audio(path: str | Path, sampling_rate: int) -> np.ndarray:
    """Read an audio file as mono float32 in [-1, 1] at `sampling_rate` Hz.

    Multi-channel audio is averaged to mono; other rates are resampled with soxr (high quality, the
    same resampler librosa uses by default, which the official preparation goes through).
    """
    path = Path(path)
    try:
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        raise AudioReadError(f"cannot read audio file {path}: {err}") from err
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if file_rate != sampling_rate and mono.size > 0:
        mono = soxr.resample(mono, file_rate, sampling_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def slaney_mel_basis(cfg: SpectrogramConfig) -> torch.Tensor:
    """Mel filter bank (n_mels, n_freq_bins) equal to librosa.filters.mel's defaults (Slaney)."""
    fmax = cfg.mel_fmax if cfg.mel_fmax is not None else cfg.sampling_rate / 2
    bank = mel_filter_bank(
        num_frequency_bins=cfg.n_freq_bins,
        num_mel_filters=cfg.n_mel_channels,
        min_frequency=cfg.mel_fmin,
        max_frequency=fmax,
        sampling_rate=cfg.sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.ascontiguousarray(bank.T, dtype=np.float32))


class SpectrogramExtractor(nn.Module):
    """Linear and log-mel spectrograms of (B, T) or (T,) waveforms, as the official trainer computes."""

    def __init__(self, cfg: SpectrogramConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SpectrogramConfig()
        # Non-persistent: derived from the config, so they never enter a checkpoint.
        self.register_buffer("window", torch.hann_window(self.cfg.win_length), persistent=False)
        self.register_buffer("mel_basis", slaney_mel_basis(self.cfg), persistent=False)

    def linear(self, wav: torch.Tensor) -> torch.Tensor:
        """Magnitude spectrogram (B, n_fft/2+1, frames) with frames = T // hop."""
        squeeze = wav.dim() == 1
        if squeeze:
            wav = wav.unsqueeze(0)
        cfg = self.cfg
        pad = (cfg.filter_length - cfg.hop_length) // 2
        # reflect-pad needs a channel dimension for 1-D signals.
        padded = nn.functional.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        stft = torch.stft(
            padded,
            cfg.filter_length,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window.to(dtype=wav.dtype),
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec = stft.abs().pow(2).add(MAGNITUDE_EPS).sqrt()
        return spec[0] if squeeze else spec

    def linear_to_mel(self, spec: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, n_mels, frames) from a linear magnitude spectrogram."""
        mel = torch.matmul(self.mel_basis.to(dtype=spec.dtype), spec)
        return torch.log(torch.clamp(mel, min=LOG_CLAMP))

    def mel(self, wav: torch.Tensor) -> torch.Tensor:
        """Log-mel spectrogram of a waveform."""
        return self.linear_to_mel(self.linear(wav))

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.linear(wav)
