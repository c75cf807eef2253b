"""Losses of SoVITS GAN training, with the official GPT-SoVITS weighting conventions.

All losses are computed in float32 whatever the autocast dtype, because the squared LSGAN terms and the
KL exponentials overflow easily in half precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def discriminator_lsgan_loss(real_scores: Sequence[torch.Tensor], fake_scores: Sequence[torch.Tensor]
                             ) -> torch.Tensor:
    """LSGAN discriminator loss summed over sub-discriminators: mean((1 - D(real))^2) + mean(D(fake)^2)."""
    total = real_scores[0].new_zeros((), dtype=torch.float32)
    for real, fake in zip(real_scores, fake_scores, strict=True):
        total = total + torch.mean((1 - real.float()) ** 2) + torch.mean(fake.float() ** 2)
    return total


def generator_lsgan_loss(fake_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator loss summed over sub-discriminators: mean((1 - D(fake))^2)."""
    total = fake_scores[0].new_zeros((), dtype=torch.float32)
    for fake in fake_scores:
        total = total + torch.mean((1 - fake.float()) ** 2)
    return total


def feature_matching_loss(real_features: Sequence[Sequence[torch.Tensor]],
                          fake_features: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """L1 between discriminator feature maps of real (detached) and generated audio, summed over every
    layer of every sub-discriminator, times 2 (the official weighting)."""
    total = real_features[0][0].new_zeros((), dtype=torch.float32)
    for real_maps, fake_maps in zip(real_features, fake_features, strict=True):
        for real, fake in zip(real_maps, fake_maps, strict=True):
            total = total + torch.mean(torch.abs(real.float().detach() - fake.float()))
    return 2 * total


def kl_divergence_loss(z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """KL between the flow-mapped posterior sample z_p and the prior N(m_p, exp(logs_p)), averaged over
    the unmasked positions (the VITS estimator with a single posterior sample)."""
    z_p, logs_q, m_p, logs_p, mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, mask))
    kl = logs_p - logs_q - 0.5 + 0.5 * (z_p - m_p) ** 2 * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * mask) / torch.sum(mask)
