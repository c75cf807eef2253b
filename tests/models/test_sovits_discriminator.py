"""Tests of the multi-period discriminator (gsv_accel.models.sovits.discriminator)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from gsv_accel.models.sovits.discriminator import (
    DiscriminatorP,
    DiscriminatorS,
    MultiPeriodDiscriminator,
)

TINY_SCALE = (4, 8, 16, 16, 16, 16)
TINY_PERIOD = (4, 8, 16, 16, 16)


def _tiny(periods=(2, 3), use_spectral_norm=False) -> MultiPeriodDiscriminator:
    torch.manual_seed(0)
    return MultiPeriodDiscriminator(use_spectral_norm=use_spectral_norm, periods=periods,
                                    scale_channels=TINY_SCALE, period_channels=TINY_PERIOD)


def test_default_keys_and_shapes_match_official_manifest(reference_file):
    with open(reference_file("s2_v2_discriminator_keys.json")) as f:
        manifest = json.load(f)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        disc = MultiPeriodDiscriminator()
    produced = {k: list(v.shape) for k, v in disc.state_dict().items()}
    assert produced == {k: list(v) for k, v in manifest.items()}


@pytest.mark.parametrize("version,periods", [
    ("v1", (2, 3, 5, 7, 11)),
    ("v2", (2, 3, 5, 7, 11)),
    ("v2Pro", (2, 3, 5, 7, 11, 17, 23)),
    ("v2ProPlus", (2, 3, 5, 7, 11, 17, 23)),
])
def test_official_periods_per_version(version, periods):
    disc = MultiPeriodDiscriminator(version=version, scale_channels=TINY_SCALE, period_channels=TINY_PERIOD)
    assert disc.periods == periods
    assert isinstance(disc.discriminators[0], DiscriminatorS)
    assert [d.period for d in disc.discriminators[1:]] == list(periods)


def test_unknown_version_raises():
    with pytest.raises(ValueError, match="version"):
        MultiPeriodDiscriminator(version="v9")


def test_tiny_forward_shapes_and_feature_maps():
    disc = _tiny()
    y, y_hat = torch.randn(2, 1, 301), torch.randn(2, 1, 301)  # 301: not a multiple of 2 or 3
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = disc(y, y_hat)
    assert len(y_d_rs) == len(y_d_gs) == len(fmap_rs) == len(fmap_gs) == 3
    assert [len(f) for f in fmap_rs] == [7, 6, 6]  # every conv plus conv_post
    for real, gen in zip(y_d_rs, y_d_gs, strict=True):
        assert real.dim() == 2 and real.shape == gen.shape and real.shape[0] == 2
    for maps_r, maps_g in zip(fmap_rs, fmap_gs, strict=True):
        assert [m.shape for m in maps_r] == [m.shape for m in maps_g]
    # Period discriminators fold time into (T / p, p).
    assert fmap_rs[2][0].shape[-1] == 3


def test_tiny_backward_reaches_discriminator_and_generator_output():
    disc = _tiny()
    y = torch.randn(1, 1, 256)
    y_hat = torch.randn(1, 1, 256, requires_grad=True)
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = disc(y, y_hat)
    loss = sum(((1 - r) ** 2).mean() + (g ** 2).mean() for r, g in zip(y_d_rs, y_d_gs, strict=True))
    for maps_r, maps_g in zip(fmap_rs, fmap_gs, strict=True):
        loss = loss + sum((a - b).abs().mean() for a, b in zip(maps_r, maps_g, strict=True))
    loss.backward()
    assert y_hat.grad is not None and torch.isfinite(y_hat.grad).all()
    for name, param in disc.named_parameters():
        assert param.grad is not None, name


def test_spectral_norm_variant():
    disc = _tiny(periods=(2,), use_spectral_norm=True)
    keys = disc.state_dict().keys()
    assert "discriminators.0.convs.0.weight_orig" in keys and "discriminators.1.conv_post.weight_u" in keys
    assert not any(k.endswith("weight_g") for k in keys)
    y_d_rs, _, _, _ = disc(torch.randn(1, 1, 128), torch.randn(1, 1, 128))
    assert len(y_d_rs) == 2


def test_single_discriminators_with_default_widths_are_official():
    # Hard-coded official widths are the defaults (shapes of the first and last layers).
    p = DiscriminatorP(2)
    assert p.convs[0].weight_v.shape == (32, 1, 5, 1) and p.conv_post.weight_v.shape == (1, 1024, 3, 1)
    s = DiscriminatorS()
    assert [c.groups for c in s.convs] == [1, 4, 16, 64, 256, 1]


def test_scale_discriminator_rejects_bad_widths():
    with pytest.raises(ValueError):
        DiscriminatorS(channels=(4, 8, 16))


def _per_item_reference(disc, y, y_hat):
    """Each sub-discriminator called on y and y_hat separately (the official way)."""
    scores_r, scores_g, maps_r, maps_g = [], [], [], []
    for sub in disc.discriminators:
        (sr, fr), (sg, fg) = sub(y), sub(y_hat)
        scores_r.append(sr), scores_g.append(sg), maps_r.append(fr), maps_g.append(fg)
    return scores_r, scores_g, maps_r, maps_g


def test_discriminator_step_batches_real_and_generated_with_the_same_results_and_gradients():
    # D's own step (trainable D, detached y_hat) runs both halves as one batch: same scores, feature
    # maps and parameter gradients as two separate calls.
    disc = _tiny()
    y, y_hat = torch.randn(2, 1, 301), torch.randn(2, 1, 301)

    def loss_and_grads(outputs):
        real, gen, _, _ = outputs
        loss = sum(((1 - r) ** 2).mean() + (g ** 2).mean() for r, g in zip(real, gen, strict=True))
        grads = torch.autograd.grad(loss, list(disc.parameters()))
        return loss, grads

    joint, separate = disc(y, y_hat), _per_item_reference(disc, y, y_hat)
    for got, want in zip(joint, separate, strict=True):
        flat_got = [t for x in got for t in (x if isinstance(x, list) else [x])]
        flat_want = [t for x in want for t in (x if isinstance(x, list) else [x])]
        for a, b in zip(flat_got, flat_want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    loss_j, grads_j = loss_and_grads(disc(y, y_hat))
    loss_s, grads_s = loss_and_grads(_per_item_reference(disc, y, y_hat))
    torch.testing.assert_close(loss_j, loss_s, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_j, grads_s, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_frozen_discriminator_builds_no_graph_for_the_real_half():
    # G's step: D frozen, so the real feature maps are constants and only y_hat's half is differentiated.
    disc = _tiny()
    disc.requires_grad_(False)
    y, y_hat = torch.randn(1, 1, 256), torch.randn(1, 1, 256, requires_grad=True)
    real, gen, maps_r, maps_g = disc(y, y_hat)
    assert all(m.grad_fn is None for maps in maps_r for m in maps)
    assert all(s.grad_fn is not None for s in gen)
    want_r, want_g, _, _ = _per_item_reference(disc, y, y_hat)
    for a, b in zip(real + gen, want_r + want_g, strict=True):
        torch.testing.assert_close(a, b)
