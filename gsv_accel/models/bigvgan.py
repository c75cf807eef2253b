"""BigVGAN v2 generator (NVIDIA), the vocoder of GPT-SoVITS v3, written for inference.

Mel frames (B, num_mels, T) -> waveform (B, 1, T * prod(upsample_rates)) at the config's
`sampling_rate` (v3: `bigvgan_v2_24khz_100band_256x`, 100 bands, hop 256, 24 kHz).

Structure: a weight-normalised input convolution; per upsampling stage a transposed convolution
(kept in a one-element ModuleList, `ups.<i>.0`, as in the released checkpoints) and
len(resblock_kernel_sizes) parallel "AMP" residual blocks whose outputs are averaged; then an
anti-aliased periodic activation, the output convolution and tanh (or a clamp to [-1, 1]).

Every activation is anti-aliased: the signal is upsampled 2x (zero-stuffing + a low-pass FIR), the
periodic function (Snake x + sin^2(a x) / a, or SnakeBeta x + sin^2(a x) / b, per channel, a and b
stored as logarithms when `snake_logscale`) applied, then low-pass filtered and downsampled 2x. The
FIR filters are Kaiser-windowed sincs (12 taps, cutoff a quarter of the rate at 2x, transition
half-width 0.3 / 2 of it) kept as buffers, so they are part of the state dict like in the released
checkpoints.

Parameter and buffer names follow the released `bigvgan_generator.pt` files (a dict whose
`generator` entry is the state dict, weight-normalised as `weight_g` / `weight_v`, or already folded).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gsv_accel.models.sovits.modules import remove_weight_norm, weight_norm

_EPS = 1e-9  # added to the Snake divisor


@dataclass
class BigVGANConfig:
    """The generator's part of BigVGAN's `config.json` (other keys of that file are ignored)."""

    num_mels: int = 100
    upsample_rates: list[int] = field(default_factory=lambda: [4, 4, 2, 2, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [8, 8, 4, 4, 4, 4])
    upsample_initial_channel: int = 1536
    resblock: str = "1"
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    activation: str = "snakebeta"
    snake_logscale: bool = True
    use_tanh_at_final: bool = False
    use_bias_at_final: bool = False
    sampling_rate: int = 24000

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BigVGANConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def __post_init__(self) -> None:
        if self.resblock not in ("1", "2"):
            raise ValueError(f"BigVGAN resblock must be '1' or '2', got {self.resblock!r}")
        if self.activation not in ("snake", "snakebeta"):
            raise ValueError(f"BigVGAN activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("BigVGAN upsample_rates and upsample_kernel_sizes must have the same length")

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)


# ------------------------------------------------------------------------------------ anti-aliasing


def kaiser_sinc_lowpass(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """A (1, 1, taps) low-pass FIR: sinc at `cutoff` (fraction of the sampling rate) under a Kaiser
    window whose beta follows Kaiser's formula for the attenuation a transition of `half_width` gives
    with this many taps; normalised to unit DC gain. Even `taps`: centred between two samples."""
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, periodic=False, beta=beta)
    offsets = torch.arange(-half, half) + 0.5 if taps % 2 == 0 else torch.arange(taps) - half
    taps_ = 2 * cutoff * window * torch.sinc(2 * cutoff * offsets)
    return (taps_ / taps_.sum()).view(1, 1, taps)


class UpSample1d(nn.Module):
    """`ratio`x upsampling: replicate-pad, zero-stuff through a grouped transposed convolution with
    the low-pass filter (times `ratio` for unit gain), trim to `ratio` * T samples."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.trim_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.trim_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_lowpass(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.size(1)
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = F.conv_transpose1d(x, self.filter.expand(channels, -1, -1), stride=self.ratio, groups=channels)
        return self.ratio * x[..., self.trim_left: x.size(-1) - self.trim_right]


class LowPassFilter1d(nn.Module):
    """Replicate-padded low-pass FIR per channel, then keep every `stride`-th sample."""

    def __init__(self, cutoff: float, half_width: float, stride: int, kernel_size: int = 12) -> None:
        super().__init__()
        self.stride = stride
        self.padding = (kernel_size // 2 - int(kernel_size % 2 == 0), kernel_size // 2)
        self.register_buffer("filter", kaiser_sinc_lowpass(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.padding, mode="replicate")
        return F.conv1d(x, self.filter.expand(x.size(1), -1, -1), stride=self.stride, groups=x.size(1))


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha per channel (alpha = exp(stored) when `logscale`)."""

    def __init__(self, channels: int, logscale: bool = True) -> None:
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def _scale(self, p: torch.Tensor) -> torch.Tensor:
        p = p[None, :, None]
        return p.exp() if self.logscale else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self._scale(self.alpha)
        return x + torch.sin(x * alpha).pow(2) / (alpha + _EPS)


class SnakeBeta(Snake):
    """x + sin^2(alpha x) / beta per channel: separate frequency and magnitude."""

    def __init__(self, channels: int, logscale: bool = True) -> None:
        super().__init__(channels, logscale)
        self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self._scale(self.alpha), self._scale(self.beta)
        return x + torch.sin(x * alpha).pow(2) / (beta + _EPS)


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample 2x, `act`, downsample 2x."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act
        self.upsample = UpSample1d(2, 12)
        self.downsample = DownSample1d(2, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def _activation(cfg: BigVGANConfig, channels: int) -> Activation1d:
    kind = Snake if cfg.activation == "snake" else SnakeBeta
    return Activation1d(kind(channels, cfg.snake_logscale))


def _conv(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    return weight_norm(nn.Conv1d(channels, channels, kernel_size, dilation=dilation,
                                 padding=dilation * (kernel_size - 1) // 2))


# ------------------------------------------------------------------------------------ AMP blocks


class AMPBlock1(nn.Module):
    """Per dilation: act, dilated conv, act, conv (dilation 1), plus the skip connection."""

    def __init__(self, cfg: BigVGANConfig, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_conv(channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(_conv(channels, kernel_size, 1) for _ in dilations)
        # Stored interleaved: activations[2k] before convs1[k], activations[2k + 1] before convs2[k].
        self.activations = nn.ModuleList(_activation(cfg, channels) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, (conv1, conv2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            y = conv1(self.activations[2 * k](x))
            x = x + conv2(self.activations[2 * k + 1](y))
        return x

    def remove_weight_norm(self) -> None:
        for conv in [*self.convs1, *self.convs2]:
            remove_weight_norm(conv)


class AMPBlock2(nn.Module):
    """Per dilation: act, dilated conv, plus the skip connection."""

    def __init__(self, cfg: BigVGANConfig, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_conv(channels, kernel_size, d) for d in dilations)
        self.activations = nn.ModuleList(_activation(cfg, channels) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act in zip(self.convs, self.activations, strict=True):
            x = x + conv(act(x))
        return x

    def remove_weight_norm(self) -> None:
        for conv in self.convs:
            remove_weight_norm(conv)


# ------------------------------------------------------------------------------------ generator


class BigVGAN(nn.Module):
    """The BigVGAN v2 generator (see the module doc). Built weight-normalised, like the checkpoints;
    `remove_weight_norm()` folds every weight norm for inference (`weight_norm_removed` tells)."""

    def __init__(self, cfg: BigVGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.weight_norm_removed = False
        channels = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cfg.num_mels, channels, 7, 1, padding=3))
        block = AMPBlock1 if cfg.resblock == "1" else AMPBlock2
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True):
            self.ups.append(nn.ModuleList([weight_norm(nn.ConvTranspose1d(
                channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2))]))
            channels //= 2
            for block_kernel, dilations in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes,
                                               strict=True):
                self.resblocks.append(block(cfg, channels, block_kernel, dilations))
        self.activation_post = _activation(cfg, channels)
        self.conv_post = weight_norm(nn.Conv1d(channels, 1, 7, 1, padding=3, bias=cfg.use_bias_at_final))

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def sampling_rate(self) -> int:
        return self.cfg.sampling_rate

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for i, stage in enumerate(self.ups):
            for layer in stage:
                x = layer(x)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            summed = blocks[0](x)
            for block in blocks[1:]:
                summed = summed + block(x)
            x = summed / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.cfg.use_tanh_at_final else x.clamp(-1.0, 1.0)

    def remove_weight_norm(self) -> None:
        if self.weight_norm_removed:
            return
        for stage in self.ups:
            for layer in stage:
                remove_weight_norm(layer)
        for block in self.resblocks:
            block.remove_weight_norm()
        remove_weight_norm(self.conv_pre)
        remove_weight_norm(self.conv_post)
        self.weight_norm_removed = True
