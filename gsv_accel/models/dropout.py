"""Dropout whose CPU mask is drawn with `torch.rand` instead of `bernoulli_`.

On the CPUs we train on, `Tensor.bernoulli_(p)` (what `nn.Dropout` draws its mask with) runs at
about 1.5-3x the time of `torch.rand_like(x) >= p` plus the compare, and dropout after every DiT
attention and feed-forward made it ~5% of a v3 training step. The mask has the same distribution
(each element kept with probability 1 - p, kept values scaled by 1 / (1 - p), as `F.dropout`), but it
is drawn from another random stream, so a seeded CPU run drops other elements than `nn.Dropout`
would. Other devices keep PyTorch's fused dropout kernel, which is faster there.
"""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """`nn.Dropout` (same arguments, no state, same module name in state dicts) with a faster CPU mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.inplace or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        # As F.dropout: x * (mask / (1 - p)); the scaled mask is what autograd keeps for backward. The
        # uniforms are fp32 even for bf16/fp16 inputs, whose 8-11 bit uniforms would shift p.
        keep = torch.rand(x.shape, dtype=torch.float32, device=x.device) >= self.p
        mask = keep.to(x.dtype).div_(1 - self.p)
        return x * mask
