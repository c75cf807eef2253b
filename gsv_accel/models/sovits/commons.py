"""Small tensor helpers shared by the SoVITS modules."""

from __future__ import annotations

import torch
from torch import nn


def init_conv_weights(module: nn.Module, mean: float = 0.0, std: float = 0.01) -> None:
    """Normal init for convolution weights (the HiFi-GAN convention); other modules are left alone."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d)):
        module.weight.data.normal_(mean, std)


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the length of a stride-1 convolution unchanged."""
    return (kernel_size * dilation - dilation) // 2


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean mask (B, T): True where the position is inside the sequence."""
    if max_length is None:
        max_length = int(lengths.max())
    positions = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def slice_segments(x: torch.Tensor, starts: torch.Tensor, segment_size: int) -> torch.Tensor:
    """Cut `segment_size` frames from each batch item of `x` (B, C, T) starting at `starts` (B,)."""
    index = starts.to(x.device).view(-1, 1) + torch.arange(segment_size, device=x.device).view(1, -1)
    index = index.unsqueeze(1).expand(-1, x.size(1), -1)
    return torch.gather(x, 2, index)


def rand_slice_segments(x: torch.Tensor, lengths: torch.Tensor | None, segment_size: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training window per item, drawn from the global RNG (so checkpointed RNG state
    reproduces it): start ~ U{0, ..., length - segment_size}."""
    batch, _, total = x.size()
    if lengths is None:
        lengths = torch.full((batch,), total, device=x.device)
    max_start = (lengths - segment_size + 1).clamp(min=1)
    starts = (torch.rand(batch, device=x.device) * max_start).long()
    return slice_segments(x, starts, segment_size), starts


def gated_tanh_sigmoid(a: torch.Tensor, b: torch.Tensor, n_channels: int) -> torch.Tensor:
    """WaveNet gate: tanh(first half of a+b) * sigmoid(second half)."""
    summed = a + b
    return torch.tanh(summed[:, :n_channels]) * torch.sigmoid(summed[:, n_channels:])
