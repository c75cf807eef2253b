"""ERes2NetV2: the speaker-verification network whose features condition v2Pro/v2ProPlus voices.

GPT-SoVITS v2Pro/v2ProPlus add a speaker embedding to the SoVITS reference-encoder output. It is taken from
3D-Speaker's ERes2NetV2 (released as `pretrained_eres2netv2w24s4ep4.ckpt`, a plain state dict) but not from
its usual x-vector head: GPT-SoVITS reads the fused last-stage feature map, flattens it channel-major and
averages it over time (`ERes2NetV2.embed` here, `forward3` in the official code), a 20480-long vector for the
released model.

This is an independent implementation. Module names and the order of registration follow the released
state dict exactly (1001 keys, `num_batches_tracked` included), so the file loads with a strict
`load_state_dict`; the blocks' internal structure is described in the docstrings below.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _clipped_relu() -> nn.Module:
    # The official blocks use Hardtanh(0, 20) wherever they say "ReLU"; the stem alone uses a plain ReLU.
    return nn.Hardtanh(0.0, 20.0)


def _halve(size: int) -> int:
    """Output size of one stride-2 stage (1x1 conv without padding or 3x3 conv with padding 1)."""
    return (size + 1) // 2


class AFF(nn.Module):
    """Attentional feature fusion of two same-shaped maps.

    A bottleneck (1x1 conv 2C -> C/r, BN, SiLU, 1x1 conv C/r -> C, BN) on the concatenation gives a gate
    att = 1 + tanh(a) in (0, 2); the output is x * att + y * (2 - att), a learned per-position blend.
    `local_att` keeps the official Sequential indices (0, 1, 3, 4 carry weights; 2 is the SiLU).
    """

    def __init__(self, channels: int, r: int = 4):
        super().__init__()
        inter = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(2 * channels, inter, kernel_size=1),
            nn.BatchNorm2d(inter),
            nn.SiLU(),
            nn.Conv2d(inter, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        att = 1.0 + torch.tanh(self.local_att(torch.cat((x, y), dim=1)))
        return x * att + y * (2.0 - att)


class ERes2NetV2Block(nn.Module):
    """One residual block of ERes2NetV2 (the plain variant in layer1/2, the AFF variant in layer3/4).

    1x1 conv (carrying the stride) to `scale * width` channels, BN, activation; the result is cut into
    `scale` groups of `width` channels processed in a chain: group i is first merged with the previous
    group's output (by addition, or by AFF when `fuse` is set), then goes through a 3x3 conv, BN and
    activation. The concatenated outputs are projected back by a 1x1 conv and BN, the shortcut is added
    (a strided 1x1 conv + BN when the shape changes) and the activation applied.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, base_width: int, scale: int,
                 expansion: int, fuse: bool):
        super().__init__()
        width = int(math.floor(planes * base_width / 64.0))
        out_planes = planes * expansion
        self.width = width
        self.scale = scale
        self.conv1 = nn.Conv2d(in_planes, width * scale, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False) for _ in range(scale))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scale))
        # Only the AFF variant has parameters for merging groups; the plain variant adds them.
        self.fuse_models = nn.ModuleList(AFF(width, r=4) for _ in range(scale - 1)) if fuse else None
        self.relu = _clipped_relu()
        self.conv3 = nn.Conv2d(width * scale, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, dim=1)
        outs = []
        sp = groups[0]
        for i in range(self.scale):
            if i > 0 and self.fuse_models is not None:
                sp = self.fuse_models[i - 1](sp, groups[i])
            elif i > 0:
                sp = sp + groups[i]
            sp = self.relu(self.bns[i](self.convs[i](sp)))
            outs.append(sp)
        out = self.bn3(self.conv3(torch.cat(outs, dim=1)))
        return self.relu(out + self.shortcut(x))


class ERes2NetV2(nn.Module):
    """ERes2NetV2 over (B, T, feat_dim) log-mel fbanks.

    Defaults are the released GPT-SoVITS model (`ERes2NetV2(baseWidth=24, scale=4, expansion=4)`):
    m_channels 64, feat_dim 80, embedding_size 192, TSTP pooling, a single embedding layer.

    The fbank is treated as a one-channel image with frequency as height. A 3x3 stem (plain ReLU) is
    followed by four stages (layer1..4, strides 1, 2, 2, 2, channels m, 2m, 4m, 8m times `expansion`;
    layer3/4 use AFF to merge groups). layer3's output is also downsampled by a strided 3x3 conv
    (`layer3_ds`) and fused with layer4's by AFF (`fuse34`).

    - `embed(fbank)`: what GPT-SoVITS uses (`forward3`): the fused map flattened channel-major
      (index c * F' + f) and averaged over time, length 8 * m * expansion * F' with F' = 10 for 80 bins.
    - `forward(fbank)`: 3D-Speaker's own x-vector: mean and (unbiased) std over time, then `seg_1`.
      GPT-SoVITS does not use it, but its weights are in the released file.
    """

    def __init__(self, m_channels: int = 64, base_width: int = 24, scale: int = 4, expansion: int = 4,
                 feat_dim: int = 80, embedding_size: int = 192,
                 num_blocks: tuple[int, int, int, int] | list[int] = (3, 4, 6, 3)):
        super().__init__()
        self.m_channels = m_channels
        self.base_width = base_width
        self.scale = scale
        self.expansion = expansion
        self.feat_dim = feat_dim
        self.embedding_size = embedding_size
        self.num_blocks = tuple(num_blocks)

        self.conv1 = nn.Conv2d(1, m_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self._in_planes = m_channels
        self.layer1 = self._make_layer(m_channels, self.num_blocks[0], stride=1, fuse=False)
        self.layer2 = self._make_layer(2 * m_channels, self.num_blocks[1], stride=2, fuse=False)
        self.layer3 = self._make_layer(4 * m_channels, self.num_blocks[2], stride=2, fuse=True)
        self.layer4 = self._make_layer(8 * m_channels, self.num_blocks[3], stride=2, fuse=True)
        top = 8 * m_channels * expansion
        self.layer3_ds = nn.Conv2d(4 * m_channels * expansion, top, kernel_size=3, stride=2, padding=1,
                                   bias=False)
        self.fuse34 = AFF(top, r=4)
        # Sized as in the official code (int(feat_dim / 8) frequency rows), mean and std concatenated.
        self.seg_1 = nn.Linear(2 * top * int(feat_dim / 8), embedding_size)

    def _make_layer(self, planes: int, blocks: int, stride: int, fuse: bool) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(ERes2NetV2Block(self._in_planes, planes, s, self.base_width, self.scale,
                                          self.expansion, fuse))
            self._in_planes = planes * self.expansion
        return nn.Sequential(*layers)

    @property
    def constructor_kwargs(self) -> dict:
        return {"m_channels": self.m_channels, "base_width": self.base_width, "scale": self.scale,
                "expansion": self.expansion, "feat_dim": self.feat_dim,
                "embedding_size": self.embedding_size, "num_blocks": list(self.num_blocks)}

    @property
    def embedding_dim(self) -> int:
        """Length of `embed`'s output: channels x frequency rows after three stride-2 stages."""
        return 8 * self.m_channels * self.expansion * _halve(_halve(_halve(self.feat_dim)))

    def feature_map(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, feat_dim) -> fused top feature map (B, 8 * m * expansion, F', T')."""
        if fbank.dim() != 3 or fbank.shape[-1] != self.feat_dim:
            raise ValueError(f"expected fbank of shape (B, T, {self.feat_dim}), got {tuple(fbank.shape)}")
        if fbank.shape[1] == 0:
            raise ValueError("empty fbank (no frames): the audio is shorter than one 25 ms window")
        x = fbank.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T): frequency is the image height
        out = F.relu(self.bn1(self.conv1(x)))
        out3 = self.layer3(self.layer2(self.layer1(out)))
        return self.fuse34(self.layer4(out3), self.layer3_ds(out3))

    def embed(self, fbank: torch.Tensor) -> torch.Tensor:
        """GPT-SoVITS's speaker vector (official `forward3`): (B, T, feat_dim) -> (B, embedding_dim)."""
        return self.feature_map(fbank).flatten(1, 2).mean(dim=-1)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """3D-Speaker's x-vector (TSTP pooling + seg_1): (B, T, feat_dim) -> (B, embedding_size)."""
        fused = self.feature_map(fbank).flatten(1, 2)
        # torch.var is unbiased, as in the official pooling; the 1e-8 keeps sqrt differentiable at 0.
        stats = torch.cat((fused.mean(dim=-1), torch.sqrt(fused.var(dim=-1) + 1e-8)), dim=1)
        return self.seg_1(stats)
