"""GAN and KL losses against values worked out by hand."""

from __future__ import annotations

import math

import torch

from gsv_accel.losses import (
    discriminator_lsgan_loss,
    feature_matching_loss,
    generator_lsgan_loss,
    kl_divergence_loss,
)


def test_lsgan_losses_by_hand():
    real = [torch.tensor([1.0, 0.0]), torch.tensor([[0.5]])]
    fake = [torch.tensor([0.0, 2.0]), torch.tensor([[1.0]])]
    # D: mean((1-r)^2) + mean(f^2) = (0 + 1)/2 + (0 + 4)/2, then (0.25) + (1)
    assert discriminator_lsgan_loss(real, fake).item() == 0.5 + 2.0 + 0.25 + 1.0
    # G: mean((1-f)^2) = (1 + 1)/2 and 0
    assert generator_lsgan_loss(fake).item() == 1.0


def test_feature_matching_is_twice_the_summed_l1_and_detaches_real():
    real = [[torch.tensor([1.0, 3.0], requires_grad=True)], [torch.tensor([0.0])]]
    fake = [[torch.tensor([2.0, 1.0], requires_grad=True)], [torch.tensor([0.5], requires_grad=True)]]
    loss = feature_matching_loss(real, fake)
    assert loss.item() == 2 * ((1 + 2) / 2 + 0.5)
    loss.backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None


def test_kl_estimator_values_and_masked_mean():
    z = torch.zeros(1, 2, 3)
    # Every element contributes logs_p - logs_q - 0.5 = -0.5; 6 elements over a mask sum of 3 (the mask
    # is summed over time only, as the official loss does) gives -1.
    assert kl_divergence_loss(z, z, z, z, torch.ones(1, 1, 3)).item() == -1.0
    # logs_p = 0, logs_q = 0, (z_p - m_p) = 2 at the single unmasked frame: -0.5 + 0.5 * 4 = 1.5 per
    # channel; two channels, one unmasked position → sum 3.0 over mask sum 1 → 3.0.
    z_p = torch.full((1, 2, 3), 2.0)
    mask = torch.tensor([[[1.0, 0.0, 0.0]]])
    assert math.isclose(kl_divergence_loss(z_p, z, z, z, mask).item(), 3.0)
