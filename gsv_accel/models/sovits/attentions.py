"""Transformer blocks of the SoVITS text/content encoder.

Everything here works on channel-first tensors (B, C, T) with float masks (B, 1, T), the layout of
the VITS family, and the parameter names are those of GPT-SoVITS checkpoints (`conv_q`, `emb_rel_k`,
`norm_layers_1.N.gamma`, ...), so released weights load unchanged.

* `ChannelLayerNorm`: layer norm over the channel axis.
* `RelativeMultiHeadAttention`: multi-head attention whose self-attention form adds learned relative
  position embeddings for offsets -window..window (keys and values), as in VITS.
* `ConvFFN`: two "same"-padded 1-D convolutions with a ReLU between them.
* `AttentionEncoder`: post-norm transformer encoder stack built from the three above.
* `MRTE`: the multi-reference timbre encoder, which lets content frames attend to phone encodings and
  adds the global speaker embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Attention scores at masked positions are set to this value (not -inf) before the softmax, so a row
# that is fully masked (a padded query) gives a uniform distribution instead of NaNs. Using the same
# constant as the reference implementation keeps the outputs of padded rows identical too.
_MASKED_SCORE = -1e4


class ChannelLayerNorm(nn.Module):
    """Layer norm over dim 1 of a (B, C, ...) tensor, with `gamma`/`beta` parameters."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, -1)
        x = F.layer_norm(x, (self.channels,), self.gamma, self.beta, self.eps)
        return x.transpose(1, -1)


class RelativeMultiHeadAttention(nn.Module):
    """Multi-head attention over (B, C, T) sequences with 1x1-convolution projections.

    With `window_size` set, relative position embeddings (shared by all heads) are added to the
    attention logits (`emb_rel_k`) and to the attended values (`emb_rel_v`); offsets beyond the
    window get a zero embedding. That form requires queries and keys of the same length
    (self-attention). Without a window this is plain scaled dot-product attention and works as
    cross-attention too (MRTE).
    """

    def __init__(self, channels: int, out_channels: int, n_heads: int, p_dropout: float = 0.0,
                 window_size: int | None = None) -> None:
        super().__init__()
        if channels % n_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_channels = channels // n_heads
        self.window_size = window_size

        if window_size is not None:
            # One table for all heads (hence the leading 1), one row per offset -w..w.
            std = self.head_channels ** -0.5
            self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.head_channels) * std)
            self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.head_channels) * std)

        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, out_channels, 1)
        self.drop = nn.Dropout(p_dropout)
        for conv in (self.conv_q, self.conv_k, self.conv_v):
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: queries (B, C, Tq); context: keys/values (B, C, Tk); attn_mask broadcastable to
        (B, heads, Tq, Tk), zero where attention is not allowed. Returns (B, out_channels, Tq)."""
        q = self._split_heads(self.conv_q(x))
        k = self._split_heads(self.conv_k(context))
        v = self._split_heads(self.conv_v(context))
        out = self._attend(q, k, v, attn_mask)
        batch, heads, length, head_channels = out.shape
        out = out.transpose(2, 3).reshape(batch, heads * head_channels, length)
        return self.conv_o(out)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads*d, T) -> (B, heads, T, d); channel c belongs to head c // d."""
        batch, _, length = x.shape
        return x.view(batch, self.n_heads, self.head_channels, length).transpose(2, 3)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        q = q / math.sqrt(self.head_channels)
        scores = torch.matmul(q, k.transpose(-2, -1))  # (B, h, Tq, Tk)
        if self.window_size is not None:
            length = k.size(2)
            if q.size(2) != length:
                raise ValueError("relative position attention needs queries and keys of equal length")
            rel_k = self._embeddings_for_length(self.emb_rel_k, length)  # (1, 2T-1, d)
            rel_logits = torch.matmul(q, rel_k.unsqueeze(0).transpose(-2, -1))  # (B, h, T, 2T-1)
            scores = scores + _relative_to_absolute(rel_logits)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask == 0, _MASKED_SCORE)
        probs = self.drop(F.softmax(scores, dim=-1))
        out = torch.matmul(probs, v)
        if self.window_size is not None:
            rel_v = self._embeddings_for_length(self.emb_rel_v, k.size(2))
            out = out + torch.matmul(_absolute_to_relative(probs), rel_v.unsqueeze(0))
        return out

    def _embeddings_for_length(self, table: torch.Tensor, length: int) -> torch.Tensor:
        """Rows of `table` (1, 2w+1, d) for every offset -(T-1)..(T-1): (1, 2T-1, d).

        Offsets outside the window get zero rows (padding); if the sequence is shorter than the
        window the table is cropped instead.
        """
        window = self.window_size
        pad = max(length - 1 - window, 0)
        if pad > 0:
            table = F.pad(table, (0, 0, pad, pad))
        start = max(window - (length - 1), 0)
        return table[:, start:start + 2 * length - 1]


def _relative_to_absolute(rel: torch.Tensor) -> torch.Tensor:
    """(B, h, T, 2T-1) logits indexed by offset (j - i) + T - 1 -> (B, h, T, T) indexed by key j."""
    length = rel.size(2)
    positions = torch.arange(length, device=rel.device)
    # Column j of query row i holds the entry for offset j - i.
    index = positions.view(1, -1) - positions.view(-1, 1) + (length - 1)
    return torch.gather(rel, -1, index.expand(*rel.shape[:2], length, length))


def _absolute_to_relative(probs: torch.Tensor) -> torch.Tensor:
    """Inverse layout change: (B, h, T, T) weights by key j -> (B, h, T, 2T-1) by offset j - i,
    with zeros for offsets that fall outside the sequence."""
    length = probs.size(2)
    # After padding T-1 zeros on both sides, key j of row i sits at column j + T - 1, so offset
    # r - (T - 1) of row i (key i + r - (T - 1)) sits at column i + r.
    padded = F.pad(probs, (length - 1, length - 1))
    positions = torch.arange(length, device=probs.device)
    offsets = torch.arange(2 * length - 1, device=probs.device)
    index = positions.view(-1, 1) + offsets.view(1, -1)
    return torch.gather(padded, -1, index.expand(*probs.shape[:2], length, 2 * length - 1))


class ConvFFN(nn.Module):
    """Position-wise feed-forward made of two 1-D convolutions ("same" padding, ReLU between).

    Padded frames are zeroed before each convolution so they cannot leak into valid frames.
    """

    def __init__(self, in_channels: int, out_channels: int, filter_channels: int, kernel_size: int,
                 p_dropout: float = 0.0) -> None:
        super().__init__()
        # For even kernels the extra frame of padding goes to the right.
        self.padding = ((kernel_size - 1) // 2, kernel_size // 2)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, out_channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        x = self.conv_1(F.pad(x * x_mask, self.padding))
        x = self.drop(torch.relu(x))
        x = self.conv_2(F.pad(x * x_mask, self.padding))
        return x * x_mask


class AttentionEncoder(nn.Module):
    """Stack of post-norm transformer layers (relative self-attention, then conv FFN)."""

    def __init__(self, hidden_channels: int, filter_channels: int, n_heads: int, n_layers: int,
                 kernel_size: int = 1, p_dropout: float = 0.0, window_size: int = 4) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList()
        self.norm_layers_1 = nn.ModuleList()
        self.ffn_layers = nn.ModuleList()
        self.norm_layers_2 = nn.ModuleList()
        for _ in range(n_layers):
            self.attn_layers.append(RelativeMultiHeadAttention(
                hidden_channels, hidden_channels, n_heads, p_dropout=p_dropout, window_size=window_size))
            self.norm_layers_1.append(ChannelLayerNorm(hidden_channels))
            self.ffn_layers.append(ConvFFN(
                hidden_channels, hidden_channels, filter_channels, kernel_size, p_dropout=p_dropout))
            self.norm_layers_2.append(ChannelLayerNorm(hidden_channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # (B, 1, T, T)
        x = x * x_mask
        for attn, norm_1, ffn, norm_2 in zip(self.attn_layers, self.norm_layers_1,
                                             self.ffn_layers, self.norm_layers_2, strict=True):
            x = norm_1(x + self.drop(attn(x, x, attn_mask)))
            x = norm_2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask


class MRTE(nn.Module):
    """Multi-reference timbre encoder.

    Content frames (B, content_channels, T) are lifted to `hidden_channels`, attend to the lifted
    phone encodings (B, content_channels, Tt) through 4-head cross-attention, get the content itself
    and the global speaker embedding `ge` (B, hidden_channels, 1) added, and are projected back to
    `out_channels`. `ge` therefore must have `hidden_channels` channels (512 in released models).
    """

    def __init__(self, content_channels: int = 192, hidden_channels: int = 512, out_channels: int = 192,
                 n_heads: int = 4) -> None:
        super().__init__()
        self.cross_attention = RelativeMultiHeadAttention(hidden_channels, hidden_channels, n_heads)
        self.c_pre = nn.Conv1d(content_channels, hidden_channels, 1)
        self.text_pre = nn.Conv1d(content_channels, hidden_channels, 1)
        self.c_post = nn.Conv1d(hidden_channels, out_channels, 1)

    def forward(self, content: torch.Tensor, content_mask: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor, ge: torch.Tensor | None) -> torch.Tensor:
        attn_mask = text_mask.unsqueeze(2) * content_mask.unsqueeze(-1)  # (B, 1, T, Tt)
        content = self.c_pre(content * content_mask)
        text = self.text_pre(text * text_mask)
        x = self.cross_attention(content * content_mask, text * text_mask, attn_mask) + content
        if ge is not None:
            x = x + ge
        return self.c_post(x * content_mask)
