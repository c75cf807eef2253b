"""Input features of the speaker encoder, as GPT-SoVITS computes them (`prepare_datasets/2-get-sv.py`).

1. 32 kHz -> 16 kHz with torchaudio's default band-limited resampler (`transforms.Resample(32000, 16000)`).
   torchaudio cannot be a dependency (its wheels are tied to one torch build and do not import with ours),
   and soxr, which the project already uses, designs a different filter: its 16 kHz output differs from
   torchaudio's by about 3e-2 on speech, which would change every embedding. So `sinc_resample` rebuilds
   torchaudio's kernel (Hann-windowed sinc, 6 zero crossings, roll-off 0.99, computed in float64 and
   applied in float32) and applies it the same way (zero padding, strided conv1d, output cut to
   ceil(N * new / orig)), which reproduces torchaudio to float32 rounding.
2. Kaldi-compatible log-mel filterbank (`torchaudio.compliance.kaldi.fbank` with 80 bins, 16 kHz, no
   dither), written here in batched torch so it runs on the GPU with the model. Deliberately *not*
   Kaldi's usual setup in two respects that GPT-SoVITS also skips: the samples stay in [-1, 1] (no
   scaling to int16 range, so values are ln(32768^2) lower than Kaldi's) and there is no mean
   normalisation.
"""

from __future__ import annotations

import functools
import math

import torch

SV_SAMPLE_RATE = 16000

# Kaldi framing at 16 kHz: 25 ms windows every 10 ms, zero-padded to the next power of two for the FFT.
FRAME_LENGTH = 400
FRAME_SHIFT = 160
FFT_SIZE = 512
NUM_MEL_BINS = 80
LOW_FREQ = 20.0
PREEMPHASIS = 0.97
# Kaldi floors energies at std::numeric_limits<float>::epsilon() before the log, whatever the dtype.
LOG_FLOOR = float(torch.finfo(torch.float32).eps)


@functools.lru_cache(maxsize=8)
def _sinc_kernel(orig_freq: int, new_freq: int, lowpass_filter_width: int, rolloff: float
                 ) -> tuple[torch.Tensor, int]:
    """torchaudio's `sinc_interp_hann` kernel for orig -> new (reduced by their gcd): (new, 1, K), width.

    One filter per output phase; each is a sinc at the cut-off `rolloff * min(orig, new)` (relative to
    orig) times a Hann window spanning `lowpass_filter_width` zero crossings on either side.
    """
    base = min(orig_freq, new_freq) * rolloff
    width = math.ceil(lowpass_filter_width * orig_freq / base)
    taps = torch.arange(-width, width + orig_freq, dtype=torch.float64) / orig_freq
    phases = -torch.arange(new_freq, dtype=torch.float64)[:, None] / new_freq
    t = ((phases + taps) * base).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernel = sinc * window * (base / orig_freq)
    return kernel.to(torch.float32).unsqueeze(1), width


def sinc_resample(wave: torch.Tensor, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6,
                  rolloff: float = 0.99) -> torch.Tensor:
    """Resample (..., N) float waveforms exactly as `torchaudio.functional.resample` (sinc_interp_hann)."""
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
    if orig_freq == new_freq:
        return wave
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, float(rolloff))
    kernel = kernel.to(device=wave.device, dtype=wave.dtype)
    lead, length = wave.shape[:-1], wave.shape[-1]
    x = torch.nn.functional.pad(wave.reshape(-1, 1, length), (width, width + orig))
    y = torch.nn.functional.conv1d(x, kernel, stride=orig)  # (B, new, L): phase-major
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : math.ceil(new * length / orig)]
    return y.reshape(*lead, -1)


def resample_32k_to_16k(wave: torch.Tensor) -> torch.Tensor:
    """32 kHz -> 16 kHz as `torchaudio.transforms.Resample(32000, 16000)`: (..., N) -> (..., ceil(N / 2))."""
    return sinc_resample(wave, 32000, SV_SAMPLE_RATE)


def _mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    # Written as ln(1 + f / 700) rather than log1p to round like torchaudio's Kaldi code.
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=4)
def _kaldi_mel_banks(num_bins: int, fft_size: int, sample_rate: int, low_freq: float, high_freq: float
                     ) -> torch.Tensor:
    """Kaldi's triangular mel filters, (fft_size // 2 + 1, num_bins) float32 (Nyquist row zero).

    Triangles are equally spaced on mel = 1127 ln(1 + f / 700) between low_freq and high_freq and are
    evaluated at the FFT bin centres in the mel domain (not in Hz, unlike librosa); no area normalisation.
    Computed in float32 on purpose: torchaudio does, and its filters differ from a float64 evaluation by
    up to 1.4e-5; matching them halves the mean deviation from the reference fbank.
    """
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    edges = mel_low + torch.arange(num_bins + 2, dtype=torch.float32) * delta
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bin_mel = _mel(torch.arange(fft_size // 2, dtype=torch.float32) * (sample_rate / fft_size))[None]
    up = (bin_mel - left) / (centre - left)
    down = (right - bin_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    banks = torch.nn.functional.pad(banks, (0, 1))  # Kaldi gives the Nyquist bin no weight
    return banks.T.contiguous()


@functools.lru_cache(maxsize=1)
def _povey_window() -> torch.Tensor:
    # Kaldi's default window: a symmetric Hann window raised to 0.85 (never exactly zero inside),
    # in float32 like torchaudio.
    return torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float32).pow(0.85)


def kaldi_fbank(wave_16k: torch.Tensor) -> torch.Tensor:
    """80-bin Kaldi log-mel fbank of 16 kHz audio as GPT-SoVITS computes it: (..., N) -> (..., T, 80).

    Equals `torchaudio.compliance.kaldi.fbank(w[None], num_mel_bins=80, sample_frequency=16000, dither=0)`:
    snip_edges framing (T = 1 + (N - 400) // 160, zero frames when N < 400), per-frame DC removal,
    pre-emphasis 0.97 (the first sample is its own predecessor), povey window, 512-point power
    spectrum, mel filters 20-8000 Hz, ln(max(E, float32 eps)); no energy column, no CMN, no int16 scaling.
    Leading dimensions are a batch of equal-length waveforms; the result is float32 on wave's device.
    """
    wave = wave_16k.to(torch.float32)
    lead, n = wave.shape[:-1], wave.shape[-1]
    if n < FRAME_LENGTH:
        return wave.new_zeros(*lead, 0, NUM_MEL_BINS)
    frames = wave.unfold(-1, FRAME_LENGTH, FRAME_SHIFT)  # (..., T, 400), a view
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat((frames[..., :1], frames[..., :-1]), dim=-1)
    frames = (frames - PREEMPHASIS * previous) * _povey_window().to(wave.device)
    power = torch.fft.rfft(frames, n=FFT_SIZE).abs().pow(2.0)  # (..., T, 257)
    banks = _kaldi_mel_banks(NUM_MEL_BINS, FFT_SIZE, SV_SAMPLE_RATE, LOW_FREQ, SV_SAMPLE_RATE / 2)
    return torch.clamp_min(power @ banks.to(wave.device), LOG_FLOOR).log()
