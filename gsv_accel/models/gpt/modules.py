"""Building blocks of the GPT (stage 1) decoder.

Parameter names are those of GPT-SoVITS checkpoints (`word_embeddings.weight`, `alpha`,
`self_attn.in_proj_weight`, `self_attn.out_proj`, `linear1`, `norm1`, ...), so released weights load
unchanged.

* `TokenEmbedding`: an embedding table followed by dropout.
* `SinePositionalEmbedding`: adds `alpha * PE` (a learnable scalar times the classic sin/cos table).
* `SelfAttention`: multi-head self-attention with a packed q/k/v projection and an optional key/value
  cache for incremental decoding.
* `TransformerLayer`: attention + ReLU feed-forward block, post-norm (the official layout) or pre-norm.
* `TransformerStack`: `layers` and, for pre-norm stacks, a final `norm`.

All sequences are batch-first (B, T, C). Attention masks are boolean with True where attention is
allowed, broadcastable to (B, heads, queries, keys).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..grad_ckpt import checkpointed

KVCache = tuple[torch.Tensor, torch.Tensor]


class TokenEmbedding(nn.Module):
    """Token ids (B, T) -> vectors (B, T, dim), then dropout."""

    def __init__(self, dim: int, vocab_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.word_embeddings(ids))


def sine_table(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal position table (len(positions), dim) in float32: sin on even, cos on odd channels.

    Channel pair i uses the frequency 10000^(-2i/dim).
    """
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
                      * (-math.log(10000.0) / dim))
    angles = positions.to(torch.float32).unsqueeze(1) * freqs
    table = torch.zeros(positions.numel(), dim, dtype=torch.float32, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


class SinePositionalEmbedding(nn.Module):
    """x (B, T, dim) -> dropout(x + alpha * PE[offset : offset + T]), with a learnable scalar `alpha`.

    The table is computed on the fly (it is not part of the state dict), so any length works.
    """

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.alpha = nn.Parameter(torch.ones(1))
        self.dropout = nn.Dropout(dropout)

    def table(self, length: int, offset: int = 0, *, device: torch.device, dtype: torch.dtype
              ) -> torch.Tensor:
        positions = torch.arange(offset, offset + length, device=device)
        return sine_table(positions, self.dim).to(dtype)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        pe = self.table(x.size(1), offset, device=x.device, dtype=x.dtype)
        return self.dropout(x + self.alpha * pe)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one packed (3*dim, dim) input projection.

    `forward(x, mask, cache)` attends the queries of `x` to the cached keys/values (if any) followed
    by those of `x`, and returns the output and the extended cache.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim = dim
        self.heads = heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, length, _ = t.shape
        return t.view(b, length, self.heads, self.dim // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        b, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(b, length, self.dim)
        return self.out_proj(out), (k, v)


class TransformerLayer(nn.Module):
    """Self-attention and a ReLU feed-forward block, each with dropout and a residual connection.

    Post-norm (`norm_first=False`, the official layout): x = norm(x + block(x)). Pre-norm:
    x = x + block(norm(x)).
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1,
                 norm_first: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)  # inside the feed-forward block
        self.dropout1 = nn.Dropout(dropout)  # attention output
        self.dropout2 = nn.Dropout(dropout)  # feed-forward output

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        if self.norm_first:
            attn, cache = self.self_attn(self.norm1(x), mask, cache)
            x = x + self.dropout1(attn)
            x = x + self._ffn(self.norm2(x))
        else:
            attn, cache = self.self_attn(x, mask, cache)
            x = self.norm1(x + self.dropout1(attn))
            x = self.norm2(x + self._ffn(x))
        return x, cache


class TransformerStack(nn.Module):
    """`layers` applied in turn; pre-norm stacks end with `norm` (post-norm stacks have none).
    `grad_ckpt` checkpoints each layer in passes that record gradients."""

    grad_ckpt = False

    def __init__(self, dim: int, heads: int, ffn_dim: int, num_layers: int, dropout: float = 0.1,
                 norm_first: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(dim, heads, ffn_dim, dropout, norm_first) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim) if norm_first else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                caches: list[KVCache] | None = None) -> tuple[torch.Tensor, list[KVCache]]:
        new_caches = []
        for i, layer in enumerate(self.layers):
            x, cache = checkpointed(layer, x, mask, None if caches is None else caches[i],
                                    enabled=self.grad_ckpt)
            new_caches.append(cache)
        if self.norm is not None:
            x = self.norm(x)
        return x, new_caches
