"""Residual vector quantizer of the SoVITS semantic tokens.

The projected SSL features (B, D, T) are quantized against codebooks of `codebook_size` vectors by
nearest Euclidean neighbour; each further stage quantizes the residual left by the previous ones
(GPT-SoVITS uses a single stage). Codebooks are not trained by gradients: in training mode they are
initialised by k-means on the first batch, then follow an exponential moving average of the vectors
assigned to them, and codes that fall out of use are re-seeded from the batch. Fine-tuning normally
keeps the quantizer in eval mode (frozen), where none of that happens.

State-dict names follow GPT-SoVITS checkpoints: `vq.layers.N._codebook.{inited, cluster_size, embed,
embed_avg}`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _squared_distances(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """||x_i - e_j||^2 for x (N, D) and codebook (K, D) -> (N, K), via the expanded form so that no
    (N, K, D) tensor is materialised. The term order is kept fixed so code choices are reproducible."""
    return (x.pow(2).sum(1, keepdim=True)
            - 2 * x @ codebook.t()
            + codebook.pow(2).sum(1).unsqueeze(0))


def _sample_rows(samples: torch.Tensor, count: int) -> torch.Tensor:
    """`count` rows of `samples`, without repetition when there are enough of them."""
    n = samples.size(0)
    if n >= count:
        index = torch.randperm(n, device=samples.device)[:count]
    else:
        index = torch.randint(0, n, (count,), device=samples.device)
    return samples[index]


def _kmeans(samples: torch.Tensor, n_clusters: int, n_iters: int, max_samples: int = 500
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on at most `max_samples` rows. Clusters left empty keep their previous
    centre. Returns (centres (K, D), final cluster sizes (K,))."""
    samples = samples[:max_samples]
    centres = _sample_rows(samples, n_clusters)
    counts = torch.zeros(n_clusters, dtype=torch.long, device=samples.device)
    for _ in range(n_iters):
        assignment = _squared_distances(samples, centres).argmin(dim=-1)
        counts = torch.bincount(assignment, minlength=n_clusters)
        sums = torch.zeros_like(centres).index_add_(0, assignment, samples)
        means = sums / counts.clamp(min=1).unsqueeze(1).to(samples.dtype)
        centres = torch.where((counts == 0).unsqueeze(1), centres, means)
    return centres, counts


class EuclideanCodebook(nn.Module):
    """One codebook with k-means initialisation, EMA updates and dead-code re-seeding."""

    def __init__(self, dim: int, codebook_size: int, kmeans_init: bool = True, kmeans_iters: int = 50,
                 decay: float = 0.99, epsilon: float = 1e-5, threshold_ema_dead_code: int = 2) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.kmeans_iters = kmeans_iters
        self.decay = decay
        self.epsilon = epsilon
        self.threshold_ema_dead_code = threshold_ema_dead_code
        if kmeans_init:
            embed = torch.zeros(codebook_size, dim)  # filled by k-means on the first training batch
        else:
            embed = nn.init.kaiming_uniform_(torch.empty(codebook_size, dim))
        # Stored as float (1.0 / 0.0) rather than bool, as in released checkpoints.
        self.register_buffer("inited", torch.tensor([0.0 if kmeans_init else 1.0]))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each vector of x (..., D) -> (...)."""
        flat = x.reshape(-1, x.size(-1))
        return _squared_distances(flat, self.embed).argmin(dim=-1).view(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.embed)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantize x (..., D); in training mode, also update the codebook from this batch.
        Returns (quantized, codes); the quantized vectors are those before the update."""
        if self.training:
            flat = x.detach().reshape(-1, x.size(-1))
            if not bool(self.inited.item()):
                self._kmeans_init_(flat)
            codes = self.encode(x)
            quantized = self.decode(codes)
            self._expire_dead_codes_(flat)
            self._ema_update_(flat, codes.reshape(-1))
            return quantized, codes
        codes = self.encode(x)
        return self.decode(codes), codes

    @torch.no_grad()
    def _kmeans_init_(self, samples: torch.Tensor) -> None:
        centres, counts = _kmeans(samples, self.codebook_size, self.kmeans_iters)
        self.embed.copy_(centres)
        self.embed_avg.copy_(centres)
        self.cluster_size.copy_(counts)
        self.inited.fill_(1.0)

    @torch.no_grad()
    def _expire_dead_codes_(self, samples: torch.Tensor) -> None:
        """Replace codes whose EMA usage fell below the threshold by random batch vectors."""
        if self.threshold_ema_dead_code == 0:
            return
        dead = self.cluster_size < self.threshold_ema_dead_code
        if not bool(dead.any()):
            return
        replacement = _sample_rows(samples, self.codebook_size)
        self.embed.copy_(torch.where(dead.unsqueeze(1), replacement, self.embed))

    @torch.no_grad()
    def _ema_update_(self, samples: torch.Tensor, codes: torch.Tensor) -> None:
        one_hot = F.one_hot(codes, self.codebook_size).to(samples.dtype)  # (N, K)
        self.cluster_size.mul_(self.decay).add_(one_hot.sum(0), alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(one_hot.t() @ samples, alpha=1 - self.decay)
        # Laplace smoothing keeps unused codes from dividing by zero while preserving the total.
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(1))


class VectorQuantizer(nn.Module):
    """One quantization stage on channel-first tensors (B, D, T)."""

    def __init__(self, dim: int, codebook_size: int, commitment_weight: float = 1.0,
                 **codebook_kwargs) -> None:
        super().__init__()
        self.commitment_weight = commitment_weight
        self._codebook = EuclideanCodebook(dim, codebook_size, **codebook_kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D, T) -> codes (B, T)."""
        return self._codebook.encode(x.transpose(1, 2))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T) -> (B, D, T)."""
        return self._codebook.decode(codes).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (quantized (B, D, T), codes (B, T), commitment loss (scalar)).

        In training mode the output uses the straight-through estimator (gradients pass to x as if
        quantization were the identity) and the loss is the weighted MSE between x and its codes;
        in eval mode the output is the codebook vectors themselves and the loss is zero.
        """
        x = x.transpose(1, 2)
        quantized, codes = self._codebook(x)
        if self.training:
            quantized = x + (quantized - x).detach()
            loss = F.mse_loss(quantized.detach(), x) * self.commitment_weight
        else:
            loss = x.new_zeros(())
        return quantized.transpose(1, 2), codes, loss


class _Stages(nn.Module):
    """Holds the stages; exists so parameter names read `vq.layers.N...` as in checkpoints."""

    def __init__(self, stages: list[VectorQuantizer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(stages)


class ResidualVectorQuantizer(nn.Module):
    """`n_q` stages, each quantizing what the previous ones left unexplained.

    Codes are laid out stage-first: (n_q, B, T).
    """

    def __init__(self, dimension: int = 768, n_q: int = 1, bins: int = 1024, decay: float = 0.99,
                 kmeans_init: bool = True, kmeans_iters: int = 50, threshold_ema_dead_code: int = 2) -> None:
        super().__init__()
        self.n_q = n_q
        self.dimension = dimension
        self.bins = bins
        self.vq = _Stages([
            VectorQuantizer(dimension, bins, decay=decay, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                            threshold_ema_dead_code=threshold_ema_dead_code)
            for _ in range(n_q)
        ])

    def forward(self, x: torch.Tensor, n_q: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize x (B, D, T) with the first `n_q` stages (all by default).

        Returns (quantized (B, D, T), codes (n_q, B, T), commitment loss averaged over stages).
        """
        stages = self.vq.layers[: n_q or self.n_q]
        residual = x
        quantized_sum = torch.zeros_like(x)
        all_codes, losses = [], []
        for stage in stages:
            quantized, codes, loss = stage(residual)
            residual = residual - quantized
            quantized_sum = quantized_sum + quantized
            all_codes.append(codes)
            losses.append(loss)
        return quantized_sum, torch.stack(all_codes), torch.stack(losses).mean()

    @torch.no_grad()
    def encode(self, x: torch.Tensor, n_q: int | None = None, start: int = 0) -> torch.Tensor:
        """Codes (n_stages, B, T) of x (B, D, T) for stages `start`..`n_q`-1, with no codebook update."""
        residual = x
        all_codes = []
        for stage in self.vq.layers[start: n_q or self.n_q]:
            codes = stage.encode(residual)
            residual = residual - stage.decode(codes)
            all_codes.append(codes)
        return torch.stack(all_codes)

    def decode(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Sum of the codebook vectors of codes (n_stages, B, T), stage i using layer start + i."""
        quantized = None
        for i, stage_codes in enumerate(codes):
            part = self.vq.layers[start + i].decode(stage_codes)
            quantized = part if quantized is None else quantized + part
        return quantized
