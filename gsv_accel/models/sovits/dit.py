"""The DiT velocity estimator of the v3/v4 SoVITS flow-matching decoder (F5-TTS backbone).

Follows GPT-SoVITS' `f5_tts/model/backbones/dit.py` and `f5_tts/model/modules.py` module for module,
so the parameter names (`time_embed.time_mlp.0`, `text_embed.text_blocks.<i>.grn.gamma`,
`transformer_blocks.<i>.attn.to_out.0`, ...) are those of the released `s2Gv3.pth`/`s2Gv4.pth`.

Data flow of one call (`DiT.forward`), tensors time-major inside (B, T, C):

    t, dt --sinusoid + MLP--> (B, dim) each, summed: the conditioning of every AdaLN
    mu (content features, text_dim) --+ sinusoidal positions --ConvNeXt-V2 blocks--> text_embed
    [x_t | prompt | text_embed] --linear + conv position embedding--> (B, T, dim)
    depth x DiTBlock (AdaLN-zero, self-attention with rotary positions, feed-forward)
    AdaLN final --linear--> velocity (B, T, mel_dim)

Rotary positions use x_transformers' `RotaryEmbedding`, as the official code does: the module
registers a persistent `inv_freq` buffer that is part of the released state dicts. The official code
rotates the query/key with x_transformers' `apply_rotary_pos_emb` before they are split into heads,
so only the first `dim_head` features (the first head) are rotated. That quirk is kept, since the
released weights were trained with it; `rotate_leading` computes the same rotation (bit for bit)
without the slice/concatenate copies of the whole query and key that autograd adds around it.

Where the official code does more work than the result needs, this one does less (same outputs up to
float rounding, checked against the official fixtures): the attention mask is broadcast instead of
expanded to (B, heads, T, T) and left out when no frame is padded; the AdaLN modulations and gated
residuals are one fused multiply-add (`torch.addcmul`); dropout draws its CPU mask with `torch.rand`
(`gsv_accel.models.dropout`); the position convolution runs on PyTorch's native CPU kernels
(`gsv_accel.models.cpu_conv`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from x_transformers.x_transformers import RotaryEmbedding, apply_rotary_pos_emb

from ..cpu_conv import Conv1d
from ..dropout import Dropout
from .commons import sequence_mask

# Width of the sinusoidal embedding of t and dt before their MLPs.
TIME_FREQ_DIM = 256
# Text positions beyond this share the last sinusoidal position (~44 s of 24 kHz mel frames).
TEXT_MAX_POSITIONS = 4096


def sinusoidal_embedding(x: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """(B,) scalars -> (B, dim) [sin | cos] features with geometric frequencies 1 .. 1/10000."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=x.device).float() * -step)
    angles = scale * x.unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def text_position_table(dim: int, length: int, theta: float = 10000.0) -> torch.Tensor:
    """(length, dim) [cos | sin] table of position * frequency, frequencies 1/theta^(2i/dim)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    angles = torch.outer(torch.arange(length, device=freqs.device), freqs).float()
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """x_transformers' pairwise quarter turn: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class _RotateLeading(torch.autograd.Function):
    """Rotate the first cos.shape[-1] features of t (B, T, C) by the angles of cos/sin (1, T, r)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rot = cos.shape[-1]
        head = t[..., :rot]
        out = t.clone()
        out[..., :rot] = head * cos + rotate_half(head) * sin  # x_transformers' expression and order
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        rot = cos.shape[-1]
        head = grad[..., :rot]
        grad_t = grad.clone()
        # The transpose of the rotation: rotate_half^T = -rotate_half.
        grad_t[..., :rot] = head * cos - rotate_half(head * sin)
        return grad_t, None, None


def rotate_leading(t: torch.Tensor, freqs: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """`x_transformers.apply_rotary_pos_emb(t, freqs, scale)` for time-major t (B, T, C) and freqs
    (1, >=T, r): the first r features rotated by position, the rest unchanged; same values, less
    memory traffic. xpos scales (not used by the DiT) go to x_transformers' function."""
    if torch.is_tensor(scale) or scale != 1.0 or t.ndim != 3:
        return apply_rotary_pos_emb(t, freqs, scale)
    freqs = freqs[:, -t.shape[-2]:, :]
    # As x_transformers: the angles and the rotation in fp32 (autocast off), the result in t's dtype.
    with torch.autocast(device_type=t.device.type, enabled=False):
        return _RotateLeading.apply(t, freqs.cos(), freqs.sin())


class TimestepEmbedding(nn.Module):
    """Flow time (or step size) (B,) -> (B, dim): sinusoidal features, Linear, SiLU, Linear."""

    def __init__(self, dim: int, freq_embed_dim: int = TIME_FREQ_DIM) -> None:
        super().__init__()
        self.freq_embed_dim = freq_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_embed_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, timestep: torch.Tensor) -> torch.Tensor:
        hidden = sinusoidal_embedding(timestep, self.freq_embed_dim).to(timestep.dtype)
        return self.time_mlp(hidden)


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2) over the time axis of (B, T, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=1, keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Residual block on (B, T, C): depthwise conv (k=7), LayerNorm, Linear, GELU, GRN, Linear."""

    def __init__(self, dim: int, intermediate_dim: int, dilation: int = 1) -> None:
        super().__init__()
        padding = dilation * (7 - 1) // 2
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=padding, groups=dim, dilation=dilation)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.act = nn.GELU()
        self.grn = GRN(intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x.transpose(1, 2)).transpose(1, 2)
        h = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(h)))))
        return x + h


class TextEmbedding(nn.Module):
    """The content features' embedding: sinusoidal positions added, then ConvNeXt-V2 blocks.

    In GPT-SoVITS the "text" is the content feature sequence `mu` (one frame per mel frame), not
    token ids. The position table is a non-persistent buffer (not in the state dict).
    """

    def __init__(self, text_dim: int, conv_layers: int = 0, conv_mult: int = 2) -> None:
        super().__init__()
        self.extra_modeling = conv_layers > 0
        if self.extra_modeling:
            self.register_buffer("freqs_cis", text_position_table(text_dim, TEXT_MAX_POSITIONS),
                                 persistent=False)
            self.text_blocks = nn.Sequential(
                *[ConvNeXtV2Block(text_dim, text_dim * conv_mult) for _ in range(conv_layers)])

    def forward(self, text: torch.Tensor, seq_len: int, drop_text: bool = False) -> torch.Tensor:
        """text: (B, T, text_dim) -> (B, T, text_dim). `drop_text` zeroes the features (CFG)."""
        if drop_text:
            text = torch.zeros_like(text)
        if not self.extra_modeling:
            return text
        positions = torch.arange(seq_len, device=text.device).clamp(max=TEXT_MAX_POSITIONS - 1)
        text = text + self.freqs_cis[positions]
        return self.text_blocks(text)


class ConvPositionEmbedding(nn.Module):
    """Two grouped convolutions (k=31) with Mish on (B, T, C): a relative position signal."""

    def __init__(self, dim: int, kernel_size: int = 31, groups: int = 16) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"ConvPositionEmbedding needs an odd kernel size, got {kernel_size}")
        self.conv1d = nn.Sequential(
            Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2), nn.Mish(),
            Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2), nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1d(x.transpose(1, 2)).transpose(1, 2)


class InputEmbedding(nn.Module):
    """[noisy mel | prompt mel | text embedding] -> model width, plus the conv position embedding."""

    def __init__(self, mel_dim: int, text_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(mel_dim * 2 + text_dim, out_dim)
        self.conv_pos_embed = ConvPositionEmbedding(dim=out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, text_embed: torch.Tensor,
                drop_audio_cond: bool = False) -> torch.Tensor:
        if drop_audio_cond:
            cond = torch.zeros_like(cond)
        x = self.proj(torch.cat((x, cond, text_embed), dim=-1))
        return self.conv_pos_embed(x) + x


class AdaLayerNormZero(nn.Module):
    """LayerNorm modulated by the time embedding; also returns the feed-forward's modulation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, dim * 6)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        emb = self.linear(self.silu(emb))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = torch.chunk(emb, 6, dim=1)
        x = torch.addcmul(shift_msa[:, None], self.norm(x), 1 + scale_msa[:, None])
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroFinal(nn.Module):
    """The output LayerNorm, modulated (scale, shift) by the time embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, dim * 2)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = torch.chunk(self.linear(self.silu(emb)), 2, dim=1)
        return torch.addcmul(shift[:, None, :], self.norm(x), (1 + scale)[:, None, :])


class FeedForward(nn.Module):
    """Linear, GELU (tanh approximation in the DiT), dropout, Linear; keys `ff.0.0`, `ff.2`."""

    def __init__(self, dim: int, mult: float = 4, dropout: float = 0.0, approximate: str = "none") -> None:
        super().__init__()
        inner_dim = int(dim * mult)
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU(approximate=approximate)),
            Dropout(dropout),
            nn.Linear(inner_dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions and key padding mask.

    `to_q`, `to_k`, `to_v` and `to_out.0` are the layers LoRA targets. Padded query rows are zeroed
    after the output projection.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.heads = heads
        self.inner_dim = dim_head * heads
        self.to_q = nn.Linear(dim, self.inner_dim)
        self.to_k = nn.Linear(dim, self.inner_dim)
        self.to_v = nn.Linear(dim, self.inner_dim)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, dim), Dropout(dropout)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, float | torch.Tensor] | None = None) -> torch.Tensor:
        """x: (B, T, dim); mask: (B, T) bool, True on valid frames, or None when none is padded;
        rope: (freqs, xpos scale)."""
        batch = x.shape[0]
        query, key, value = self.to_q(x), self.to_k(x), self.to_v(x)
        if rope is not None:
            freqs, xpos_scale = rope
            query = rotate_leading(query, freqs, xpos_scale)
            key = rotate_leading(key, freqs, xpos_scale ** -1.0)

        head_dim = key.shape[-1] // self.heads
        query, key, value = (t.view(batch, -1, self.heads, head_dim).transpose(1, 2)
                             for t in (query, key, value))
        # Key padding, broadcast over heads and queries (the official code expands it to B x H x T x T).
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=0.0,
                                             is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, self.heads * head_dim).to(query.dtype)
        out = self.to_out[1](self.to_out[0](out))
        if mask is not None:
            out = out.masked_fill(~mask.unsqueeze(-1), 0.0)
        return out


class DiTBlock(nn.Module):
    """AdaLN-zero transformer block: gated attention and gated feed-forward residuals."""

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: float = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn_norm = AdaLayerNormZero(dim)
        self.attn = Attention(dim=dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.ff_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim=dim, mult=ff_mult, dropout=dropout, approximate="tanh")

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, float | torch.Tensor] | None = None) -> torch.Tensor:
        norm, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(x, emb=t)
        x = torch.addcmul(x, gate_msa.unsqueeze(1), self.attn(norm, mask=mask, rope=rope))
        norm = torch.addcmul(shift_mlp[:, None], self.ff_norm(x), 1 + scale_mlp[:, None])
        return torch.addcmul(x, gate_mlp.unsqueeze(1), self.ff(norm))


class DiT(nn.Module):
    """The velocity estimator v(x_t, prompt, mu, t, dt) of the CFM decoder.

    Inputs and the output follow the official call: x_t, prompt (B, mel_dim, T) and mu (B, text_dim, T)
    channel-first; x_lens (B,) valid frames; t and dt (B,). Returns the velocity time-major,
    (B, T, mel_dim).
    """

    def __init__(self, *, dim: int, depth: int = 8, heads: int = 8, dim_head: int = 64, dropout: float = 0.1,
                 ff_mult: float = 4, mel_dim: int = 100, text_dim: int | None = None, conv_layers: int = 0
                 ) -> None:
        super().__init__()
        text_dim = mel_dim if text_dim is None else text_dim
        self.dim = dim
        self.depth = depth
        self.time_embed = TimestepEmbedding(dim)
        self.d_embed = TimestepEmbedding(dim)
        self.text_embed = TextEmbedding(text_dim, conv_layers=conv_layers)
        self.input_embed = InputEmbedding(mel_dim, text_dim, dim)
        self.rotary_embed = RotaryEmbedding(dim_head)
        self.transformer_blocks = nn.ModuleList(
            [DiTBlock(dim=dim, heads=heads, dim_head=dim_head, ff_mult=ff_mult, dropout=dropout)
             for _ in range(depth)])
        self.norm_out = AdaLayerNormZeroFinal(dim)
        self.proj_out = nn.Linear(dim, mel_dim)

    def embed_text(self, mu: torch.Tensor, drop_text: bool = False) -> torch.Tensor:
        """The text embedding of content features mu (B, text_dim, T), time-major (B, T, text_dim).
        It does not depend on x_t or t, so sampling loops compute it once."""
        return self.text_embed(mu.transpose(2, 1), mu.shape[-1], drop_text=drop_text)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, x_lens: torch.Tensor, time: torch.Tensor,
                dt: torch.Tensor, mu: torch.Tensor | None, use_grad_ckpt: bool = False,
                drop_audio_cond: bool = False, drop_text: bool = False,
                text_embed: torch.Tensor | None = None, dt_embed: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (B, T, mel_dim). `text_embed` / `dt_embed`, when given, replace the embeddings of
        `mu` / `dt` (see `embed_text`; `dt_embed` is `d_embed(dt)`); `mu` may then be None."""
        x = x.transpose(2, 1)
        cond = cond.transpose(2, 1)
        batch, seq_len = x.shape[0], x.shape[1]
        # No mask when no item is padded: attention then skips reading one (one host sync per call).
        mask = None if bool((x_lens >= seq_len).all()) else sequence_mask(x_lens, seq_len).to(x.device)
        if time.ndim == 0:
            time = time.repeat(batch)

        t = self.time_embed(time)
        t = t + (self.d_embed(dt) if dt_embed is None else dt_embed)
        if text_embed is None:
            text_embed = self.embed_text(mu, drop_text=drop_text)
        x = self.input_embed(x, cond, text_embed, drop_audio_cond=drop_audio_cond)
        rope = self.rotary_embed.forward_from_seq_len(seq_len)

        for block in self.transformer_blocks:
            if use_grad_ckpt and torch.is_grad_enabled():
                x = checkpoint(block, x, t, mask, rope, use_reentrant=False)
            else:
                x = block(x, t, mask=mask, rope=rope)
        return self.proj_out(self.norm_out(x, t))
