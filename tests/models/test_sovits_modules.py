"""Tests of the SoVITS building blocks (gsv_accel.models.sovits.modules).

Key names and shapes are checked against the official manifest; everything that runs uses tiny sizes.
"""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
from torch import nn

from gsv_accel.models.sovits.modules import (
    WN,
    Flip,
    HiFiGANGenerator,
    MelStyleEncoder,
    PosteriorEncoder,
    ResidualCouplingBlock,
    ResidualCouplingLayer,
    normalized_weights_reused,
    remove_weight_norm,
    weight_norm,
)


def _official_default(prefix: str) -> nn.Module:
    """The module as the official v2 SynthesizerTrn builds it from the default config."""
    if prefix == "enc_q":
        return PosteriorEncoder(1025, 192, 192, 5, 1, 16, gin_channels=512)
    if prefix == "flow":
        return ResidualCouplingBlock(192, 192, 5, 1, 4, gin_channels=512)
    if prefix == "dec":
        return HiFiGANGenerator(192, "1", [3, 7, 11], [[1, 3, 5]] * 3, [10, 8, 2, 2, 2], 512,
                                [16, 16, 8, 2, 2], gin_channels=512)
    if prefix == "ref_enc":
        return MelStyleEncoder(704, style_vector_dim=512)
    raise KeyError(prefix)


def _randomize(module: nn.Module, std: float = 0.1) -> nn.Module:
    """Non-trivial weights (the flow's zero-initialised projections would make it the identity)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * std)
    return module


def _lengths_mask(lengths: list[int], total: int) -> torch.Tensor:
    return (torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]).unsqueeze(1).float()


@pytest.mark.parametrize("prefix", ["enc_q", "flow", "dec", "ref_enc"])
def test_keys_and_shapes_match_official_manifest(reference_file, prefix):
    with open(reference_file("s2_v2_generator_keys.json")) as f:
        manifest = json.load(f)
    expected = {k[len(prefix) + 1:]: list(v) for k, v in manifest.items() if k.startswith(prefix + ".")}
    assert expected, f"no {prefix}.* keys in the manifest"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated weight-norm API in use
        module = _official_default(prefix)
    produced = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert produced == expected


# ---- weight norm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: nn.Conv1d(4, 6, 3, padding=1),
    lambda: nn.ConvTranspose1d(6, 4, 4, 2, padding=1),
    lambda: nn.Conv2d(2, 3, (5, 1), padding=(2, 0)),
])
def test_weight_norm_keys_math_and_removal(make):
    torch.manual_seed(0)
    plain = make()
    wn = weight_norm(copy.deepcopy(plain))
    assert set(wn.state_dict()) == {"bias", "weight_g", "weight_v"}
    # Magnitude has the weight's first dimension and ones elsewhere, like the legacy torch API.
    assert wn.weight_g.shape == (plain.weight.shape[0],) + (1,) * (plain.weight.dim() - 1)

    x = torch.randn(2, plain.weight.shape[0 if isinstance(plain, nn.ConvTranspose1d) else 1],
                    *((8, 1) if isinstance(plain, nn.Conv2d) else (8,)))
    torch.testing.assert_close(wn(x), plain(x))  # g = ||v|| initially: same function

    with torch.no_grad():
        wn.weight_g.mul_(torch.rand_like(wn.weight_g) + 0.5)
    v = wn.weight_v.detach()
    norm = v.reshape(v.size(0), -1).norm(dim=1).view(wn.weight_g.shape)
    with torch.no_grad():
        plain.weight.copy_(wn.weight_g * v / norm)
    out = wn(x)
    torch.testing.assert_close(out, plain(x))

    remove_weight_norm(wn)
    assert set(wn.state_dict()) == {"bias", "weight"}
    torch.testing.assert_close(wn(x), out)


def test_weight_norm_twice_raises():
    conv = weight_norm(nn.Conv1d(2, 2, 1))
    with pytest.raises(RuntimeError):
        weight_norm(conv)


def test_weight_norm_module_can_be_deep_copied_after_training_forward():
    conv = weight_norm(nn.Conv1d(3, 4, 3))
    x = torch.randn(1, 3, 7)
    out = conv(x)
    out.sum().backward()
    clone = copy.deepcopy(conv)
    torch.testing.assert_close(clone(x), out)
    with torch.no_grad():
        clone.weight_g.mul_(2)
    torch.testing.assert_close(conv(x), out)  # the copy has its own parameters and hooks
    remove_weight_norm(clone)
    assert set(clone.state_dict()) == {"bias", "weight"}
    assert set(conv.state_dict()) == {"bias", "weight_g", "weight_v"}


def test_weight_norm_gradients_reach_magnitude_and_direction():
    conv = weight_norm(nn.Conv1d(3, 4, 3))
    conv(torch.randn(1, 3, 7)).square().sum().backward()
    assert conv.weight_g.grad is not None and conv.weight_v.grad is not None


def test_weight_norm_matches_the_legacy_torch_function_in_values_and_gradients():
    torch.manual_seed(0)
    ours = weight_norm(nn.Conv1d(3, 4, 3))
    legacy = copy.deepcopy(ours)
    remove_weight_norm(legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        legacy = nn.utils.weight_norm(legacy)
    with torch.no_grad():
        legacy.weight_g.copy_(ours.weight_g), legacy.weight_v.copy_(ours.weight_v)
    x = torch.randn(2, 3, 9)
    torch.testing.assert_close(ours(x), legacy(x))
    ours(x).square().sum().backward()
    legacy(x).square().sum().backward()
    torch.testing.assert_close(ours.weight_g.grad, legacy.weight_g.grad)
    torch.testing.assert_close(ours.weight_v.grad, legacy.weight_v.grad)


def test_normalized_weights_reused_gives_the_same_outputs_and_gradients_with_one_weight():
    torch.manual_seed(0)
    block = nn.Sequential(weight_norm(nn.Conv1d(3, 4, 3)), nn.ReLU(), weight_norm(nn.Conv1d(4, 2, 1)))
    a, b = torch.randn(1, 3, 8), torch.randn(2, 3, 8)

    def two_calls() -> list[torch.Tensor]:
        loss = block(a).square().sum() + block(b).abs().sum()
        return [loss, *torch.autograd.grad(loss, list(block.parameters()))]

    plain = two_calls()
    with normalized_weights_reused(block):
        reused = two_calls()
        # The weight was built on entry: a change of g inside the block is not seen.
        out = block(a)
        with torch.no_grad():
            block[0].weight_g.mul_(3)
        torch.testing.assert_close(block(a), out)
        with torch.no_grad():
            block[0].weight_g.div_(3)
    for got, want in zip(reused, plain, strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():
        block[0].weight_g.mul_(3)
    assert not torch.allclose(block(a), out)  # rebuilt at every call again after the block
    assert not any(k.startswith("_reused") for layer in block for k in vars(layer))


# ---- WN / posterior encoder ------------------------------------------------------------------------


def test_wn_output_is_masked_and_conditioned():
    torch.manual_seed(0)
    wn = _randomize(WN(8, 3, 2, 3, gin_channels=4))
    x, mask = torch.randn(2, 8, 10), _lengths_mask([10, 6], 10)
    g = torch.randn(2, 4, 1)
    out = wn(x, mask, g=g)
    assert out.shape == x.shape
    assert torch.all(out[1, :, 6:] == 0)
    assert not torch.allclose(out, wn(x, mask, g=torch.zeros_like(g)))


def test_posterior_encoder_shapes_mask_and_detached_condition():
    torch.manual_seed(0)
    enc = PosteriorEncoder(12, 6, 8, 5, 1, 2, gin_channels=4)
    spec = torch.randn(2, 12, 9)
    g = torch.randn(2, 4, 1, requires_grad=True)
    z, m, logs, mask = enc(spec, torch.tensor([9, 5]), g=g)
    assert z.shape == m.shape == logs.shape == (2, 6, 9)
    assert mask.shape == (2, 1, 9) and mask.dtype == spec.dtype
    assert torch.all(z[1, :, 5:] == 0) and torch.all(m[1, :, 5:] == 0)
    z.sum().backward()
    assert g.grad is None  # the official encoder detaches the style embedding
    assert enc.pre.weight.grad is not None


# ---- flow ------------------------------------------------------------------------------------------


def test_flow_is_invertible():
    torch.manual_seed(0)
    flow = _randomize(ResidualCouplingBlock(8, 16, 5, 1, 2, n_flows=3, gin_channels=4)).eval()
    mask = _lengths_mask([11, 7], 11)
    x = torch.randn(2, 8, 11) * mask
    g = torch.randn(2, 4, 1)
    with torch.no_grad():
        y = flow(x, mask, g=g)
        x_back = flow(y, mask, g=g, reverse=True)
    assert (y - x).abs().max() > 1e-2  # a real transformation, not the identity
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=0)


def test_fresh_flow_is_identity_up_to_flips():
    # Zero-initialised projections: each coupling is the identity, so 2 flips cancel out.
    flow = ResidualCouplingBlock(4, 8, 3, 1, 1, n_flows=2)
    x, mask = torch.randn(1, 4, 5), torch.ones(1, 1, 5)
    torch.testing.assert_close(flow(x, mask), x)


def test_affine_coupling_layer_inverse_and_logdet():
    torch.manual_seed(0)
    layer = _randomize(ResidualCouplingLayer(6, 8, 3, 1, 2, mean_only=False)).eval()
    mask = _lengths_mask([9, 4], 9)
    x = torch.randn(2, 6, 9) * mask
    with torch.no_grad():
        y, logdet = layer(x, mask)
        x_back = layer(y, mask, reverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=0)
    assert logdet.shape == (2,)
    assert torch.all(y[:, :3] == x[:, :3])  # the conditioning half passes through


def test_flip_interface():
    x = torch.arange(6.0).view(1, 3, 2)
    y, logdet = Flip()(x, None)
    assert torch.equal(y, x.flip(1)) and torch.equal(logdet, torch.zeros(1))
    assert torch.equal(Flip()(y, None, reverse=True), x)


# ---- HiFi-GAN --------------------------------------------------------------------------------------


@pytest.mark.parametrize("resblock,kernels,dilations", [
    ("1", [3, 5], [[1, 3, 5], [1, 3, 5]]),
    ("2", [3], [[1, 3]]),
])
def test_hifigan_output_length_and_weight_norm_removal(resblock, kernels, dilations):
    torch.manual_seed(0)
    rates = [4, 2, 3]
    dec = HiFiGANGenerator(6, resblock, kernels, dilations, rates, 16, [8, 4, 5], gin_channels=4).eval()
    frames = 7
    z, g = torch.randn(2, 6, frames), torch.randn(2, 4, 1)
    with torch.no_grad():
        wav = dec(z, g=g)
        assert wav.shape == (2, 1, frames * math.prod(rates))
        assert wav.abs().max() <= 1.0  # tanh output
        assert not torch.allclose(wav, dec(z, g=torch.zeros_like(g)))
        dec.remove_weight_norm()
        assert not any(k.endswith(("weight_g", "weight_v")) for k in dec.state_dict())
        torch.testing.assert_close(dec(z, g=g), wav)


def test_hifigan_without_conditioning_has_no_cond_layer():
    dec = HiFiGANGenerator(4, "1", [3], [[1, 3, 5]], [2, 2], 8, [4, 4])
    assert not hasattr(dec, "cond")
    assert dec(torch.randn(1, 4, 5)).shape == (1, 1, 20)


def test_hifigan_rejects_upsample_kernel_with_odd_margin():
    with pytest.raises(ValueError, match="even difference"):
        HiFiGANGenerator(4, "1", [3], [[1, 3, 5]], [3], 8, [6])


def test_hifigan_backward():
    dec = HiFiGANGenerator(4, "1", [3], [[1, 3, 5]], [2, 2], 8, [4, 4], gin_channels=3)
    dec(torch.randn(1, 4, 5), g=torch.randn(1, 3, 1)).sum().backward()
    assert dec.ups[0].weight_v.grad is not None and dec.cond.weight.grad is not None


# ---- mel style encoder -----------------------------------------------------------------------------


def _tiny_style_encoder() -> MelStyleEncoder:
    torch.manual_seed(0)
    return MelStyleEncoder(10, style_hidden=8, style_vector_dim=6, style_kernel_size=3, style_head=2).eval()


def test_style_encoder_output_shape():
    enc = _tiny_style_encoder()
    x = torch.randn(3, 10, 12)
    assert enc(x).shape == (3, 6, 1)
    assert enc(x, torch.ones(3, 1, 12)).shape == (3, 6, 1)


def test_style_encoder_all_ones_mask_equals_no_mask():
    enc = _tiny_style_encoder()
    x = torch.randn(2, 10, 12)
    with torch.no_grad():
        torch.testing.assert_close(enc(x, torch.ones(2, 1, 12)), enc(x))


def test_style_encoder_ignores_padded_frames_beyond_the_conv_receptive_field():
    # Padded frames are excluded from the attention keys and from the average. The two gated convs
    # (kernel 3 here) still read up to 2 frames past the end, as in the official code, so only the
    # frames further out must have no influence at all.
    enc = _tiny_style_encoder()
    mask = _lengths_mask([12, 6], 12)
    x = torch.randn(2, 10, 12)
    changed = x.clone()
    changed[1, :, 8:] = torch.randn(10, 4) * 100
    with torch.no_grad():
        torch.testing.assert_close(enc(changed, mask), enc(x, mask))


def test_style_encoder_backward_in_train_mode():
    enc = _tiny_style_encoder().train()
    enc(torch.randn(2, 10, 6), torch.ones(2, 1, 6)).sum().backward()
    assert enc.spectral[0].fc.weight.grad is not None and enc.slf_attn.w_qs.weight.grad is not None
