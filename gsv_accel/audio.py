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


# --------------------------------------------------------------------------------------------------
# Target mels of the v3/v4 flow-matching SoVITS (`TextAudioSpeakerLoaderV3/V4.get_audio`)
# --------------------------------------------------------------------------------------------------

# v3 mels are taken from 24 kHz audio (hop 256: 93.75 frames/s), v4 mels from the 32 kHz audio itself
# (hop 320: 100 frames/s); both have 100 Slaney mel bins from 0 Hz to Nyquist.
CFM_MEL_CONFIGS: dict[str, SpectrogramConfig] = {
    "v3": SpectrogramConfig(sampling_rate=24000, filter_length=1024, hop_length=256, win_length=1024,
                            n_mel_channels=100, mel_fmin=0.0, mel_fmax=None),
    "v4": SpectrogramConfig(sampling_rate=32000, filter_length=1280, hop_length=320, win_length=1280,
                            n_mel_channels=100, mel_fmin=0.0, mel_fmax=None),
}
# Log-mel range mapped onto [-1, 1] (official `norm_spec` / `denorm_spec`); log(1e-5) maps to -0.9304
# and nothing is clipped.
CFM_MEL_LOG_MIN = -12.0
CFM_MEL_LOG_MAX = 2.0


def normalize_cfm_mel(log_mel: torch.Tensor) -> torch.Tensor:
    """Log-mel -> the CFM's target scale: (x + 12) / 14 * 2 - 1."""
    return (log_mel - CFM_MEL_LOG_MIN) / (CFM_MEL_LOG_MAX - CFM_MEL_LOG_MIN) * 2 - 1


def denormalize_cfm_mel(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize_cfm_mel` (what a vocoder takes)."""
    return (mel + 1) / 2 * (CFM_MEL_LOG_MAX - CFM_MEL_LOG_MIN) + CFM_MEL_LOG_MIN


def resample_audio(wav: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono float audio with soxr (HQ), to floor(N * to_rate / from_rate) samples.

    The official v3 loader resamples with ffmpeg (swresample defaults), whose output has that length;
    soxr's may be one sample longer, which is dropped so frame counts agree with the official. For
    32 kHz -> 24 kHz speech the two resamplers differ by up to ~3e-4 per sample, which moves the
    normalised v3 mel by ~2.4e-4 on average and up to ~0.03 (measured on the reference sentence).
    """
    wav = np.asarray(wav, dtype=np.float32)
    if from_rate == to_rate:
        return wav
    out = soxr.resample(wav, from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(out[: wav.shape[0] * to_rate // from_rate], dtype=np.float32)


class CFMMelExtractor(nn.Module):
    """Normalised target mels of a v3 or v4 model, batched, from audio at the mel's sampling rate.

    `forward(wav, lengths)` takes (B, T) audio at `self.sampling_rate` (24 kHz for v3, 32 kHz for v4)
    with per-item valid lengths and returns (mel (B, 100, F), frames (B,)). Each item is reflect-padded
    at its own end, so every item's frames equal those of the item alone (floor(length / hop) frames);
    frames past an item's end are 0, as the official collate pads them. `from_32k` starts from the
    dataset's 32 kHz audio (v3 resamples it with soxr, see `resample_audio`).
    """

    def __init__(self, version: str) -> None:
        super().__init__()
        if version not in CFM_MEL_CONFIGS:
            raise ValueError(f"target mels exist for v3 and v4 models only, got version {version!r}")
        self.version = version
        self.cfg = CFM_MEL_CONFIGS[version]
        self.spectrogram = SpectrogramExtractor(self.cfg)

    @property
    def sampling_rate(self) -> int:
        return self.cfg.sampling_rate

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() == 1:
            wav = wav.unsqueeze(0)
        if lengths is None:
            lengths = torch.full((wav.size(0),), wav.size(1), dtype=torch.long)
        lengths = lengths.to("cpu", torch.long)
        cfg = self.cfg
        pad = (cfg.filter_length - cfg.hop_length) // 2
        padded = [nn.functional.pad(wav[i: i + 1, : int(n)].unsqueeze(1), (pad, pad), mode="reflect")[0, 0]
                  for i, n in enumerate(lengths.tolist())]
        batch = nn.utils.rnn.pad_sequence(padded, batch_first=True)
        spec = torch.stft(batch, cfg.filter_length, hop_length=cfg.hop_length, win_length=cfg.win_length,
                          window=self.spectrogram.window.to(dtype=batch.dtype), center=False,
                          normalized=False, onesided=True, return_complex=True)
        spec = spec.abs().pow(2).add(MAGNITUDE_EPS).sqrt()
        frames = lengths // cfg.hop_length
        mel = normalize_cfm_mel(self.spectrogram.linear_to_mel(spec[..., : int(frames.max())]))
        valid = torch.arange(mel.size(-1)).unsqueeze(0) < frames.unsqueeze(1)
        mel = mel * valid.unsqueeze(1).to(device=mel.device, dtype=mel.dtype)
        return mel, frames.to(mel.device)

    def from_32k(self, wavs: list[np.ndarray] | list[torch.Tensor], source_rate: int = 32000
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mels of a list of mono waveforms at `source_rate` (the dataset's 32 kHz audio)."""
        items = [resample_audio(np.asarray(w, dtype=np.float32).reshape(-1), source_rate, self.sampling_rate)
                 for w in wavs]
        lengths = torch.tensor([len(w) for w in items], dtype=torch.long)
        batch = nn.utils.rnn.pad_sequence([torch.from_numpy(w) for w in items], batch_first=True)
        return self(batch.to(self.spectrogram.window.device), lengths)
