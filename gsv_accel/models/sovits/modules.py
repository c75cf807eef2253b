"""Building blocks of the SoVITS generator: WaveNet stack, posterior encoder, normalising flow,
HiFi-GAN decoder and the mel style (reference) encoder.

Parameter names and shapes follow GPT-SoVITS' `module/modules.py` and `module/models.py` exactly, so
released checkpoints (`s2G*.pth`, exported `SoVITS_weights/*.pth`) load key for key. In particular the
weight-normalised convolutions store `weight_g` (magnitude) and `weight_v` (direction), see
`weight_norm` below.

Tensor layout is (batch, channels, time) unless noted; masks are (batch, 1, time) floats with 1 on
valid frames.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from gsv_accel.models.cpu_conv import Conv1d
from gsv_accel.models.grad_ckpt import checkpointed
from gsv_accel.models.sovits.commons import gated_tanh_sigmoid, same_padding, sequence_mask

# Negative slope of the leaky ReLUs inside HiFi-GAN and the discriminators.
LRELU_SLOPE = 0.1


# --------------------------------------------------------------------------------------------------
# Weight normalisation
# --------------------------------------------------------------------------------------------------
# The official code uses the legacy `torch.nn.utils.weight_norm`, which names the parameters
# `<name>_g` / `<name>_v` (the newer parametrization API would name them
# `parametrizations.weight.original0/1` and break checkpoint compatibility). The legacy function is
# deprecated, so this small equivalent is used instead: same parameter names, same math
# (w = g * v / ||v||, the norm taken over every dimension except the first).


def _norm_except_first_dim(v: torch.Tensor) -> torch.Tensor:
    norm = torch.linalg.vector_norm(v.reshape(v.size(0), -1), dim=1)
    return norm.view(-1, *([1] * (v.dim() - 1)))


def _weight_from(module: nn.Module, name: str) -> torch.Tensor:
    g = getattr(module, name + "_g")
    v = getattr(module, name + "_v")
    # The fused kernel the legacy torch function calls: one pass over v forward and one backward.
    # Written out as v * (g / norm), autograd makes five or six passes over v (norm, division,
    # product, and their backwards with a zero-norm mask); the discriminator's 1024x1024x5 weights
    # made that 8% of an S2 training step on CPU.
    return torch._weight_norm(v, g, 0)


class _SetNormalizedWeight:
    """Forward pre-hook: build `module.<name>` from `<name>_g` and `<name>_v` for this call."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, inputs: object) -> None:
        # A plain attribute, not a Parameter: the state dict holds only g and v.
        reused = module.__dict__.get(_REUSED_PREFIX + self.name)
        setattr(module, self.name, reused if reused is not None else _weight_from(module, self.name))


class _DropNormalizedWeight:
    """Forward hook: forget the derived weight after the call.

    Unlike the legacy torch implementation, the derived (non-leaf) tensor is not kept on the module
    between calls, so weight-normalised modules can be deep-copied and pickled at any time.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, module: nn.Module, inputs: object, output: object) -> None:
        module.__dict__.pop(self.name, None)


def _find_hooks(hooks: dict, hook_class: type, name: str) -> list:
    return [key for key, hook in hooks.items() if isinstance(hook, hook_class) and hook.name == name]


_REUSED_PREFIX = "_reused_normalized_"


@contextmanager
def normalized_weights_reused(module: nn.Module) -> Iterator[None]:
    """Inside the block, every weight-normalised layer of `module` uses one weight built on entry
    instead of rebuilding it at each call.

    For a module called several times with the same parameters (the discriminator on real, then on
    generated audio): the result is the same, the weights are normalised once. Under autograd the
    gradients of every call flow back through the one weight. The parameters must not change inside
    the block.
    """
    layers = [(layer, hook.name) for layer in module.modules() for hook in layer._forward_pre_hooks.values()
              if isinstance(hook, _SetNormalizedWeight)]
    for layer, name in layers:
        layer.__dict__[_REUSED_PREFIX + name] = _weight_from(layer, name)
    try:
        yield
    finally:
        for layer, name in layers:
            layer.__dict__.pop(_REUSED_PREFIX + name, None)


def weight_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Reparametrise `module.<name>` as magnitude `<name>_g` times direction `<name>_v` / ||`<name>_v`||.

    Replaces the legacy `torch.nn.utils.weight_norm(module)` (dim=0): same state-dict keys, same
    initial values (g = ||w||, v = w, so the layer computes the same function as before). The
    normalised weight is rebuilt at every forward; it is not available as `module.<name>` outside one.
    """
    if _find_hooks(module._forward_pre_hooks, _SetNormalizedWeight, name):
        raise RuntimeError(f"weight_norm already applied to parameter {name!r} of {module}")
    weight = getattr(module, name).detach()
    del module._parameters[name]
    module.register_parameter(name + "_g", nn.Parameter(_norm_except_first_dim(weight).clone()))
    module.register_parameter(name + "_v", nn.Parameter(weight))
    module.register_forward_pre_hook(_SetNormalizedWeight(name))
    module.register_forward_hook(_DropNormalizedWeight(name))
    return module


def remove_weight_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Fold `<name>_g` / `<name>_v` back into a single `<name>` parameter (for inference export)."""
    pre_keys = _find_hooks(module._forward_pre_hooks, _SetNormalizedWeight, name)
    if not pre_keys:
        raise ValueError(f"weight_norm of {name!r} not found in {module}")
    weight = _weight_from(module, name).detach()
    for key in pre_keys:
        del module._forward_pre_hooks[key]
    for key in _find_hooks(module._forward_hooks, _DropNormalizedWeight, name):
        del module._forward_hooks[key]
    module.__dict__.pop(name, None)
    del module._parameters[name + "_g"]
    del module._parameters[name + "_v"]
    module.register_parameter(name, nn.Parameter(weight))
    return module


def apply_norm(module: nn.Module, use_spectral_norm: bool = False) -> nn.Module:
    """Weight norm (default) or spectral norm on a convolution, as the official `norm_f`."""
    if use_spectral_norm:
        return nn.utils.spectral_norm(module)
    return weight_norm(module)


# --------------------------------------------------------------------------------------------------
# WaveNet stack, posterior encoder, flow
# --------------------------------------------------------------------------------------------------


class WN(nn.Module):
    """Non-causal WaveNet: dilated gated convolutions with residual and summed skip outputs.

    Global conditioning `g` (B, gin_channels, 1) goes through one 1x1 conv (`cond_layer`) whose output
    is split into one (2 * hidden) slice per layer and added before the gate.
    """

    def __init__(self, hidden_channels: int, kernel_size: int, dilation_rate: int, n_layers: int,
                 gin_channels: int = 0, p_dropout: float = 0.0) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WN needs an odd kernel size, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.dilation_rate = dilation_rate
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.p_dropout = p_dropout

        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.drop = nn.Dropout(p_dropout)
        if gin_channels != 0:
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))

        for i in range(n_layers):
            dilation = dilation_rate ** i
            # Native CPU kernels: see gsv_accel.models.cpu_conv.
            self.in_layers.append(weight_norm(Conv1d(
                hidden_channels, 2 * hidden_channels, kernel_size,
                dilation=dilation, padding=same_padding(kernel_size, dilation))))
            # Every layer but the last emits a residual half and a skip half; the last only a skip.
            out_channels = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden_channels, out_channels, 1)))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.hidden_channels
        output = torch.zeros_like(x)
        cond_all = self.cond_layer(g) if g is not None else None

        layers = zip(self.in_layers, self.res_skip_layers, strict=True)
        for i, (in_layer, res_skip_layer) in enumerate(layers):
            x_in = in_layer(x)
            if cond_all is not None:
                cond = cond_all[:, i * 2 * hidden:(i + 1) * 2 * hidden, :]
            else:
                cond = torch.zeros_like(x_in)
            acts = self.drop(gated_tanh_sigmoid(x_in, cond, hidden))
            res_skip = res_skip_layer(acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :hidden, :]) * x_mask
                output = output + res_skip[:, hidden:, :]
            else:
                output = output + res_skip
        return output * x_mask

    def remove_weight_norm(self) -> None:
        if self.gin_channels != 0:
            remove_weight_norm(self.cond_layer)
        for layer in [*self.in_layers, *self.res_skip_layers]:
            remove_weight_norm(layer)


class PosteriorEncoder(nn.Module):
    """q(z | linear spectrogram): 1x1 conv, WN stack, projection to mean and log-std, then a sample.
    `grad_ckpt` checkpoints the WN stack."""

    grad_ckpt = False

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, kernel_size: int,
                 dilation_rate: int, n_layers: int, gin_channels: int = 0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.gin_channels = gin_channels

        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, 2 * out_channels, 1)

    def forward(self, x: torch.Tensor, x_lengths: torch.Tensor, g: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (z, m, logs, x_mask); z = m + N(0, 1) * exp(logs) on valid frames, 0 elsewhere."""
        if g is not None:
            # The speaker/style embedding is trained through the other branches only.
            g = g.detach()
        x_mask = sequence_mask(x_lengths, x.size(2)).unsqueeze(1).to(x.dtype)
        h = self.pre(x) * x_mask
        h = checkpointed(self.enc, h, x_mask, g=g, enabled=self.grad_ckpt)
        stats = self.proj(h) * x_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask


class ResidualCouplingLayer(nn.Module):
    """Affine coupling: the first channel half predicts a shift (and, unless `mean_only`, a log-scale)
    for the second half. forward returns (y, logdet); reverse returns x only."""

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int,
                 n_layers: int, p_dropout: float = 0.0, gin_channels: int = 0,
                 mean_only: bool = False) -> None:
        super().__init__()
        if channels % 2 != 0:
            raise ValueError(f"coupling layer needs an even channel count, got {channels}")
        self.channels = channels
        self.half_channels = channels // 2
        self.mean_only = mean_only

        self.pre = nn.Conv1d(self.half_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers,
                      gin_channels=gin_channels, p_dropout=p_dropout)
        self.post = nn.Conv1d(hidden_channels, self.half_channels * (1 if mean_only else 2), 1)
        # Zero init: every coupling starts as the identity map.
        self.post.weight.data.zero_()
        self.post.bias.data.zero_()

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None,
                reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        x0, x1 = torch.split(x, self.half_channels, dim=1)
        h = self.pre(x0) * x_mask
        h = self.enc(h, x_mask, g=g)
        stats = self.post(h) * x_mask
        if self.mean_only:
            m, logs = stats, torch.zeros_like(stats)
        else:
            m, logs = torch.split(stats, self.half_channels, dim=1)

        if reverse:
            x1 = (x1 - m) * torch.exp(-logs) * x_mask
            return torch.cat([x0, x1], dim=1)
        x1 = m + x1 * torch.exp(logs) * x_mask
        logdet = torch.sum(logs, dim=[1, 2])
        return torch.cat([x0, x1], dim=1), logdet


class Flip(nn.Module):
    """Reverse the channel order so the next coupling transforms the other half."""

    def forward(self, x: torch.Tensor, *args: object, reverse: bool = False, **kwargs: object
                ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        x = torch.flip(x, [1])
        if reverse:
            return x
        return x, torch.zeros(x.size(0), dtype=x.dtype, device=x.device)


class ResidualCouplingBlock(nn.Module):
    """Volume-preserving flow: `n_flows` x (mean-only coupling, flip). Returns only the mapped tensor.
    `grad_ckpt` checkpoints each coupling of the forward (training) direction."""

    grad_ckpt = False

    def __init__(self, channels: int, hidden_channels: int, kernel_size: int, dilation_rate: int,
                 n_layers: int, n_flows: int = 4, gin_channels: int = 0) -> None:
        super().__init__()
        self.channels = channels
        self.n_flows = n_flows
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(ResidualCouplingLayer(channels, hidden_channels, kernel_size, dilation_rate,
                                                    n_layers, gin_channels=gin_channels, mean_only=True))
            self.flows.append(Flip())

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None,
                reverse: bool = False) -> torch.Tensor:
        if reverse:
            for flow in reversed(self.flows):
                x = flow(x, x_mask, g=g, reverse=True)
        else:
            for flow in self.flows:
                x, _ = checkpointed(flow, x, x_mask, g=g, reverse=False,
                                    enabled=self.grad_ckpt and not isinstance(flow, Flip))
        return x


# --------------------------------------------------------------------------------------------------
# HiFi-GAN decoder
# --------------------------------------------------------------------------------------------------
# Note on initialisation: the official code calls a normal(0, 0.01) init on these layers *after*
# wrapping them in weight norm, which only overwrites the derived `weight` tensor that the next
# forward recomputes from g and v; the trained parameters therefore keep PyTorch's default init with
# g = ||v||. We reproduce that effective behaviour by not re-initialising them at all.


def _wn_conv1d(channels: int, kernel_size: int, dilation: int) -> nn.Conv1d:
    return weight_norm(nn.Conv1d(channels, channels, kernel_size, 1, dilation=dilation,
                                 padding=same_padding(kernel_size, dilation)))


class ResBlock1(nn.Module):
    """HiFi-GAN residual block type 1: per dilation, (lrelu, dilated conv, lrelu, conv) + skip."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(_wn_conv1d(channels, kernel_size, d) for d in dilation)
        self.convs2 = nn.ModuleList(_wn_conv1d(channels, kernel_size, 1) for _ in dilation)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            xt = conv1(xt)
            xt = F.leaky_relu(xt, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            x = conv2(xt) + x
        if x_mask is not None:
            x = x * x_mask
        return x

    def remove_weight_norm(self) -> None:
        for layer in [*self.convs1, *self.convs2]:
            remove_weight_norm(layer)


class ResBlock2(nn.Module):
    """HiFi-GAN residual block type 2: per dilation, (lrelu, dilated conv) + skip."""

    def __init__(self, channels: int, kernel_size: int = 3, dilation: Sequence[int] = (1, 3)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_wn_conv1d(channels, kernel_size, d) for d in dilation)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor | None = None) -> torch.Tensor:
        for conv in self.convs:
            xt = F.leaky_relu(x, LRELU_SLOPE)
            if x_mask is not None:
                xt = xt * x_mask
            x = conv(xt) + x
        if x_mask is not None:
            x = x * x_mask
        return x

    def remove_weight_norm(self) -> None:
        for layer in self.convs:
            remove_weight_norm(layer)


class HiFiGANGenerator(nn.Module):
    """HiFi-GAN vocoder: latent frames (B, initial_channel, T) -> waveform (B, 1, T * prod(upsample_rates)).

    The official `Generator` class of GPT-SoVITS' models.py. Each upsampling stage halves the channel
    count and is followed by len(resblock_kernel_sizes) parallel residual blocks whose outputs are
    averaged. `is_bias` gives the last convolution a bias (the v4 vocoder has one, the v2 decoder not);
    `remove_weight_norm()` folds the weight norms into plain `weight` parameters, the layout of the
    inference checkpoints (`gsv-v4-pretrained/vocoder.pth`). `grad_ckpt` checkpoints each upsampling
    stage with its residual blocks.
    """

    grad_ckpt = False

    def __init__(self, initial_channel: int, resblock: str, resblock_kernel_sizes: Sequence[int],
                 resblock_dilation_sizes: Sequence[Sequence[int]], upsample_rates: Sequence[int],
                 upsample_initial_channel: int, upsample_kernel_sizes: Sequence[int],
                 gin_channels: int = 0, is_bias: bool = False) -> None:
        super().__init__()
        if resblock not in ("1", "2"):
            raise ValueError(f"resblock must be '1' or '2', got {resblock!r}")
        if len(upsample_rates) != len(upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes, strict=True):
            # Otherwise the transposed conv yields rate * T + 1 samples instead of rate * T.
            if kernel < rate or (kernel - rate) % 2:
                raise ValueError(f"upsample kernel {kernel} must be >= rate {rate} with an even difference")
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        block_class = ResBlock1 if resblock == "1" else ResBlock2

        self.conv_pre = nn.Conv1d(initial_channel, upsample_initial_channel, 7, 1, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes, strict=True):
            self.ups.append(weight_norm(nn.ConvTranspose1d(
                channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2)))
            channels //= 2
            for block_kernel, dilations in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(block_class(channels, block_kernel, dilations))
        self.conv_post = nn.Conv1d(channels, 1, 7, 1, padding=3, bias=is_bias)
        self.hop_length = math.prod(upsample_rates)
        if gin_channels != 0:
            self.cond = nn.Conv1d(gin_channels, upsample_initial_channel, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv_pre(x)
        if g is not None:
            x = x + self.cond(g)
        for i in range(self.num_upsamples):
            x = checkpointed(self._stage, i, x, enabled=self.grad_ckpt)
        # The official code uses leaky_relu's default slope (0.01) here, not LRELU_SLOPE.
        x = self.conv_post(F.leaky_relu(x))
        return torch.tanh(x)

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Upsampling stage i: upsample, then the mean of its residual blocks."""
        x = self.ups[i](F.leaky_relu(x, LRELU_SLOPE))
        blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
        summed = blocks[0](x)
        for block in blocks[1:]:
            summed = summed + block(x)
        return summed / self.num_kernels

    def remove_weight_norm(self) -> None:
        for layer in self.ups:
            remove_weight_norm(layer)
        for block in self.resblocks:
            block.remove_weight_norm()


# --------------------------------------------------------------------------------------------------
# Mel style encoder (reference encoder `ref_enc`)
# --------------------------------------------------------------------------------------------------


class LinearNorm(nn.Module):
    """nn.Linear kept under `.fc` (for the official key names), optionally spectrally normalised."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, out_channels, bias)
        if spectral_norm:
            self.fc = nn.utils.spectral_norm(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ConvNorm(nn.Module):
    """nn.Conv1d kept under `.conv`, "same" padding by default, optionally spectrally normalised."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, bias: bool = True,
                 spectral_norm: bool = False) -> None:
        super().__init__()
        if padding is None:
            if kernel_size % 2 != 1:
                raise ValueError(f"'same' padding needs an odd kernel size, got {kernel_size}")
            padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                              padding=padding, dilation=dilation, bias=bias)
        if spectral_norm:
            self.conv = nn.utils.spectral_norm(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Mish(nn.Module):
    """x * tanh(softplus(x)), written out as in the official code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


class Conv1dGLU(nn.Module):
    """Residual gated conv: x + dropout(a * sigmoid(b)) with (a, b) = conv(x). Needs in == out channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = ConvNorm(in_channels, 2 * out_channels, kernel_size=kernel_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.conv1(x), self.out_channels, dim=1)
        return x + self.dropout(a * torch.sigmoid(b))


class MultiHeadAttention(nn.Module):
    """Self-attention with residual connection, on (B, T, d_model) inputs.

    As in the official style encoder, scores are divided by sqrt(d_model) (not sqrt(d_k)), and the
    boolean `mask` (B, T, T) marks the *excluded* (padded) key positions.
    """

    def __init__(self, n_head: int, d_model: int, d_k: int, d_v: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.d_k = d_k
        self.d_v = d_v
        self.temperature = math.sqrt(d_model)
        self.w_qs = nn.Linear(d_model, n_head * d_k)
        self.w_ks = nn.Linear(d_model, n_head * d_k)
        self.w_vs = nn.Linear(d_model, n_head * d_v)
        self.fc = nn.Linear(n_head * d_v, d_model)
        self.attn_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (output (B, T, d_model), attention weights (B, n_head, T, T))."""
        batch, length, _ = x.shape
        # (B, T, H * d) -> (B, H, T, d)
        q = self.w_qs(x).view(batch, length, self.n_head, self.d_k).transpose(1, 2)
        k = self.w_ks(x).view(batch, length, self.n_head, self.d_k).transpose(1, 2)
        v = self.w_vs(x).view(batch, length, self.n_head, self.d_v).transpose(1, 2)

        scores = torch.matmul(q, k.transpose(-1, -2)) / self.temperature
        if mask is not None:
            scores = scores.masked_fill(mask.unsqueeze(1), float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(self.attn_dropout(attn), v)

        out = out.transpose(1, 2).reshape(batch, length, self.n_head * self.d_v)
        return self.dropout(self.fc(out)) + x, attn


class MelStyleEncoder(nn.Module):
    """Global style vector from a spectrogram (B, n_mel_channels, T) -> (B, style_vector_dim, 1).

    Frame-wise MLP (Mish), two residual gated convs, one self-attention layer, a linear projection,
    then an average over the valid frames.
    """

    def __init__(self, n_mel_channels: int = 80, style_hidden: int = 128, style_vector_dim: int = 256,
                 style_kernel_size: int = 5, style_head: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_dim = n_mel_channels
        self.hidden_dim = style_hidden
        self.out_dim = style_vector_dim
        self.kernel_size = style_kernel_size
        self.n_head = style_head

        # Sequential indices (0 and 3 carry weights) are part of the official key names.
        self.spectral = nn.Sequential(
            LinearNorm(n_mel_channels, style_hidden), Mish(), nn.Dropout(dropout),
            LinearNorm(style_hidden, style_hidden), Mish(), nn.Dropout(dropout),
        )
        self.temporal = nn.Sequential(
            Conv1dGLU(style_hidden, style_hidden, style_kernel_size, dropout),
            Conv1dGLU(style_hidden, style_hidden, style_kernel_size, dropout),
        )
        head_dim = style_hidden // style_head
        self.slf_attn = MultiHeadAttention(style_head, style_hidden, head_dim, head_dim, dropout)
        self.fc = LinearNorm(style_hidden, style_vector_dim)

    @staticmethod
    def temporal_avg_pool(x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over time of (B, T, D); `padding` (B, T) is True on frames to leave out."""
        if padding is None:
            return torch.mean(x, dim=1)
        n_valid = (~padding).sum(dim=1).view(-1, 1, 1)
        dtype = x.dtype
        # Each frame is divided by the count before summing (float32), as the official code does.
        x = x.masked_fill(padding.unsqueeze(-1), 0).float() / n_valid
        return x.sum(dim=1).to(dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, n_mel_channels, T); mask: (B, 1, T), nonzero on valid frames (None: all valid)."""
        x = x.transpose(1, 2)
        padding = (mask.int() == 0).squeeze(1) if mask is not None else None
        attn_mask = padding.unsqueeze(1).expand(-1, x.size(1), -1) if padding is not None else None

        x = self.spectral(x)
        x = self.temporal(x.transpose(1, 2)).transpose(1, 2)
        if padding is not None:
            x = x.masked_fill(padding.unsqueeze(-1), 0)
        x, _ = self.slf_attn(x, mask=attn_mask)
        x = self.fc(x)
        return self.temporal_avg_pool(x, padding).unsqueeze(-1)
