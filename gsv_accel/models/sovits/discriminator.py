"""HiFi-GAN multi-period discriminator of GPT-SoVITS (one scale discriminator + period discriminators).

State-dict keys and shapes match the official `MultiPeriodDiscriminator` (the released `s2D*.pth`).
The channel widths the official code hard-codes are constructor arguments here, with the official
values as defaults, so that tiny discriminators can be built for tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gsv_accel.models.sovits.commons import same_padding
from gsv_accel.models.sovits.modules import LRELU_SLOPE, apply_norm, normalized_weights_reused

# Official periods per model version; v2Pro/v2ProPlus add two longer periods.
PERIODS_PER_VERSION = {
    "v1": (2, 3, 5, 7, 11),
    "v2": (2, 3, 5, 7, 11),
    "v2Pro": (2, 3, 5, 7, 11, 17, 23),
    "v2ProPlus": (2, 3, 5, 7, 11, 17, 23),
}

DEFAULT_PERIOD_CHANNELS = (32, 128, 512, 1024, 1024)
DEFAULT_SCALE_CHANNELS = (16, 64, 256, 1024, 1024, 1024)

# The strided convolutions of the scale discriminator are grouped with this many input channels per
# group (official: 16/4, 64/16, 256/64, 1024/256).
_SCALE_GROUP_WIDTH = 4

DiscriminatorOutput = tuple[torch.Tensor, list[torch.Tensor]]


class DiscriminatorP(nn.Module):
    """Period discriminator: folds the waveform into (T / period, period) and applies 2-D convs
    that only mix along time, so each phase of the period is judged separately."""

    def __init__(self, period: int, kernel_size: int = 5, stride: int = 3, use_spectral_norm: bool = False,
                 channels: Sequence[int] = DEFAULT_PERIOD_CHANNELS) -> None:
        super().__init__()
        self.period = period
        self.use_spectral_norm = use_spectral_norm
        padding = (same_padding(kernel_size, 1), 0)
        widths = [1, *channels]
        self.convs = nn.ModuleList()
        for i, (in_ch, out_ch) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            # All layers are strided except the last one.
            layer_stride = (stride, 1) if i < len(channels) - 1 else 1
            self.convs.append(apply_norm(
                nn.Conv2d(in_ch, out_ch, (kernel_size, 1), layer_stride, padding=padding), use_spectral_norm))
        self.conv_post = apply_norm(nn.Conv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0)), use_spectral_norm)

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        """x: (B, 1, T). Returns (flattened scores (B, N), feature maps after every layer)."""
        batch, channels, length = x.shape
        remainder = length % self.period
        if remainder != 0:
            x = F.pad(x, (0, self.period - remainder), "reflect")
            length += self.period - remainder
        x = x.view(batch, channels, length // self.period, self.period)

        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class DiscriminatorS(nn.Module):
    """Scale discriminator on the raw waveform: 1-D convs, the middle ones strided and grouped."""

    def __init__(self, use_spectral_norm: bool = False,
                 channels: Sequence[int] = DEFAULT_SCALE_CHANNELS) -> None:
        super().__init__()
        if len(channels) != 6:
            raise ValueError(f"DiscriminatorS takes 6 channel widths, got {list(channels)}")
        widths = [1, *channels]
        self.convs = nn.ModuleList()
        self.convs.append(apply_norm(nn.Conv1d(1, widths[1], 15, 1, padding=7), use_spectral_norm))
        for in_ch, out_ch in zip(widths[1:5], widths[2:6], strict=True):
            groups = max(1, in_ch // _SCALE_GROUP_WIDTH)
            if in_ch % groups or out_ch % groups:
                raise ValueError(
                    f"DiscriminatorS widths {in_ch}->{out_ch} are not divisible into {groups} groups")
            self.convs.append(apply_norm(nn.Conv1d(in_ch, out_ch, 41, 4, groups=groups, padding=20),
                                      use_spectral_norm))
        self.convs.append(apply_norm(nn.Conv1d(widths[5], widths[6], 5, 1, padding=2), use_spectral_norm))
        self.conv_post = apply_norm(nn.Conv1d(widths[6], 1, 3, 1, padding=1), use_spectral_norm)

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        """x: (B, 1, T). Returns (flattened scores (B, N), feature maps after every layer)."""
        fmap = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            fmap.append(x)
        x = self.conv_post(x)
        fmap.append(x)
        return torch.flatten(x, 1, -1), fmap


class MultiPeriodDiscriminator(nn.Module):
    """DiscriminatorS followed by one DiscriminatorP per period (key prefix `discriminators.<i>.`).

    `periods` overrides the version's official periods (for small test models); the widths default
    to the official ones.
    """

    def __init__(self, use_spectral_norm: bool = False, version: str = "v2",
                 periods: Sequence[int] | None = None,
                 scale_channels: Sequence[int] = DEFAULT_SCALE_CHANNELS,
                 period_channels: Sequence[int] = DEFAULT_PERIOD_CHANNELS) -> None:
        super().__init__()
        if periods is None:
            if version not in PERIODS_PER_VERSION:
                raise ValueError(
                    f"unknown model version {version!r}; expected one of {list(PERIODS_PER_VERSION)}")
            periods = PERIODS_PER_VERSION[version]
        self.periods = tuple(periods)
        self.use_spectral_norm = use_spectral_norm
        discriminators: list[nn.Module] = [DiscriminatorS(use_spectral_norm, channels=scale_channels)]
        discriminators += [DiscriminatorP(p, use_spectral_norm=use_spectral_norm, channels=period_channels)
                           for p in self.periods]
        self.discriminators = nn.ModuleList(discriminators)

    def forward(self, y: torch.Tensor, y_hat: torch.Tensor) -> tuple[
            list[torch.Tensor], list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """Judge real `y` and generated `y_hat` (B, 1, T) with every sub-discriminator.

        Returns (real scores, generated scores, real feature maps, generated feature maps), one entry
        per sub-discriminator.
        """
        joint = self._judge_jointly(y, y_hat)
        y_d_rs, y_d_gs, fmap_rs, fmap_gs = [], [], [], []
        for discriminator in self.discriminators:
            if joint:
                score, fmap = discriminator(torch.cat([y, y_hat]))
                score_real, score_gen = score.chunk(2)
                fmap_real, fmap_gen = zip(*(f.chunk(2) for f in fmap), strict=True)
            else:
                with normalized_weights_reused(discriminator):
                    score_real, fmap_real = discriminator(y)
                    score_gen, fmap_gen = discriminator(y_hat)
            y_d_rs.append(score_real)
            y_d_gs.append(score_gen)
            fmap_rs.append(list(fmap_real))
            fmap_gs.append(list(fmap_gen))
        return y_d_rs, y_d_gs, fmap_rs, fmap_gs

    def _judge_jointly(self, y: torch.Tensor, y_hat: torch.Tensor) -> bool:
        """Whether to run real and generated audio as one batch of 2B (same function: every layer
        is per item).

        One batch halves the calls (and the weight-norm evaluations) and lets each convolution reuse
        its weights over twice the positions: D's forward and backward in its own step took about a
        fifth less on CPU (default v2, batch 1).
        It is chosen only when both halves are differentiated anyway (the discriminator's own step,
        its parameters trainable): in the generator's step D is frozen and the real half needs no
        graph, so two separate passes do less work (no input gradients for the real half). Spectral
        norm advances its power iteration once per call in training mode, so it keeps two calls, as
        the official code makes them.
        """
        if self.use_spectral_norm or y.shape != y_hat.shape or not torch.is_grad_enabled():
            return False
        return y.requires_grad or any(p.requires_grad for p in self.parameters())
