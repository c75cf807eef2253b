"""The faster equivalents the v3/v4 DiT and the WaveNet layers use in place of the official operations
(`gsv_accel.models.cpu_conv`, `gsv_accel.models.dropout`, the DiT's rotary and attention mask,
`FusedLoraLinear`): each computes what the operation it replaces computes, forward and backward."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from x_transformers.x_transformers import RotaryEmbedding, apply_rotary_pos_emb

from gsv_accel.models import cpu_conv
from gsv_accel.models.cpu_conv import NATIVE_MAX_BATCH, Conv1d, _NativeConv1d
from gsv_accel.models.dropout import Dropout
from gsv_accel.models.sovits import SoVITSV3Config, SynthesizerTrnV3
from gsv_accel.models.sovits.dit import Attention, rotate_leading
from gsv_accel.models.sovits.lora import LORA_TARGET_MODULES, FusedLoraLinear, add_lora, cfm_lora_config

# ------------------------------------------------------------------------------------ Conv1d


@pytest.mark.parametrize("groups, channels, kernel, bias",
                         [(1, 8, 5, True), (4, 16, 31, True), (1, 6, 3, False)])
def test_native_conv1d_matches_conv1d_forward_and_backward(groups, channels, kernel, bias):
    torch.manual_seed(0)
    conv = Conv1d(channels, 2 * channels, kernel, padding=kernel // 2, groups=groups, bias=bias)
    x = torch.randn(2, channels, 50, requires_grad=True)
    out = conv(x)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected_x = x.detach().clone().requires_grad_(True)
    weight = conv.weight.detach().clone().requires_grad_(True)
    bias_ref = None if conv.bias is None else conv.bias.detach().clone().requires_grad_(True)
    expected = F.conv1d(expected_x, weight, bias_ref, padding=kernel // 2, groups=groups)
    expected.backward(grad)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, expected_x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.weight.grad, weight.grad, rtol=1e-4, atol=1e-4)
    if bias:
        torch.testing.assert_close(conv.bias.grad, bias_ref.grad, rtol=1e-4, atol=1e-4)
    assert torch.backends.mkldnn.enabled  # the switch is restored after forward and backward


def test_native_conv1d_gradients_are_exact_in_float64():
    x = torch.randn(2, 4, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _NativeConv1d.apply(x, w, b, 1, 1, 2), (x, weight, bias))
    weight_full = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: _NativeConv1d.apply(x.detach(), w, None, 2, 0, 1),
                                    (weight_full,))


def test_native_conv1d_restores_the_switch_on_errors_and_keeps_nn_conv1d_keys():
    conv = Conv1d(4, 4, 3, padding=1)
    assert conv.state_dict().keys() == torch.nn.Conv1d(4, 4, 3).state_dict().keys()
    with pytest.raises(RuntimeError):
        conv(torch.randn(1, 5, 10))  # wrong channel count
    assert torch.backends.mkldnn.enabled


def test_native_kernels_only_for_small_fp32_cpu_batches(monkeypatch):
    calls = []
    apply = _NativeConv1d.apply

    def counted(*args):
        calls.append(args[0].shape)
        return apply(*args)

    monkeypatch.setattr(cpu_conv._NativeConv1d, "apply", counted)
    conv = Conv1d(4, 4, 3, padding=1)
    for batch in (1, NATIVE_MAX_BATCH, NATIVE_MAX_BATCH + 1):
        conv(torch.randn(batch, 4, 10))
    conv.double()(torch.randn(1, 4, 10, dtype=torch.float64))
    assert [shape[0] for shape in calls] == [1, NATIVE_MAX_BATCH]


def test_native_conv1d_leaves_autocast_and_dilation_to_pytorch():
    conv = Conv1d(4, 4, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(1, 4, 10)).dtype == torch.bfloat16
    dilated = Conv1d(4, 4, 3, padding=2, dilation=2)
    x = torch.randn(1, 4, 10)
    torch.testing.assert_close(dilated(x), F.conv1d(x, dilated.weight, dilated.bias, padding=2, dilation=2))


# ----------------------------------------------------------------------------------- Dropout


def test_dropout_keeps_one_minus_p_scaled_and_backpropagates_through_the_same_mask():
    p = 0.1
    drop = Dropout(p).train()
    x = torch.rand(1000, 1000) + 0.5
    x.requires_grad_(True)
    torch.manual_seed(3)
    out = drop(x)
    kept = out != 0
    n = kept.numel()
    # Within 5 standard deviations of the binomial.
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    torch.testing.assert_close(out[kept], x.detach()[kept] / (1 - p), rtol=1e-6, atol=0)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - p), rtol=1e-6, atol=0)
    torch.manual_seed(3)
    assert torch.equal(drop(x), out)  # the global generator decides the mask
    assert torch.equal(drop.eval()(x), x)


def test_dropout_of_bf16_uses_fp32_uniforms():
    torch.manual_seed(0)
    out = Dropout(0.1).train()(torch.ones(2000, 1000, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    # bf16 uniforms are multiples of 1/256: they would drop 26/256 = 0.1016 of the values.
    assert abs((out == 0).float().mean().item() - 0.1) < 5 * (0.09 / out.numel()) ** 0.5


# ------------------------------------------------------------------------------------ rotary


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_leading_is_x_transformers_rotation(dtype):
    torch.manual_seed(0)
    freqs, scale = RotaryEmbedding(16).forward_from_seq_len(12)
    t = torch.randn(3, 12, 64, dtype=dtype, requires_grad=True)
    ours = rotate_leading(t, freqs, scale)
    reference_t = t.detach().clone().requires_grad_(True)
    reference = apply_rotary_pos_emb(reference_t, freqs, scale)
    assert ours.dtype == dtype and torch.equal(ours, reference)  # bit for bit
    grad = torch.randn_like(ours)
    ours.backward(grad)
    reference.backward(grad)
    # bf16: x_transformers rounds each backward op to bf16, ours rounds once: a few ulps apart.
    tolerance = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 1e-2}
    torch.testing.assert_close(t.grad, reference_t.grad, **tolerance)
    assert torch.equal(t.grad[..., 16:], grad[..., 16:])


def test_rotate_leading_gradient_in_float64():
    freqs, _ = RotaryEmbedding(8).forward_from_seq_len(5)
    t = torch.randn(2, 5, 20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rotate_leading(t, freqs.double()), (t,))


# ---------------------------------------------------------------------------- attention mask


def test_attention_without_a_mask_equals_an_all_valid_mask():
    torch.manual_seed(0)
    attention = Attention(dim=32, heads=4, dim_head=8).eval()
    x = torch.randn(2, 10, 32)
    rope = RotaryEmbedding(8).forward_from_seq_len(10)
    with torch.no_grad():
        unmasked = attention(x, None, rope)
        masked = attention(x, torch.ones(2, 10, dtype=torch.bool), rope)
        padded = attention(x, torch.arange(10).unsqueeze(0) < torch.tensor([[10], [6]]), rope)
    torch.testing.assert_close(unmasked, masked)
    assert torch.equal(padded[1, 6:], torch.zeros(4, 32))  # padded query rows are zeroed
    torch.testing.assert_close(padded[0], unmasked[0])


# -------------------------------------------------------------------------------------- LoRA


def _tiny_dit_model() -> SynthesizerTrnV3:
    return SynthesizerTrnV3(SoVITSV3Config(dit_dim=64, dit_depth=1, dit_heads=2, dit_dim_head=32,
                                           inter_channels2=64, wns1_n_layers=1))


def test_add_lora_builds_fused_layers_on_every_target():
    model = add_lora(_tiny_dit_model(), 4)
    layers = [m for m in model.cfm.modules() if isinstance(m, PeftLoraLinear)]
    assert len(layers) == len(LORA_TARGET_MODULES)
    assert all(type(m) is FusedLoraLinear for m in layers)


@pytest.mark.parametrize("alpha", [8, 3])  # scaling 1 (the official alpha = rank) and another
def test_fused_lora_linear_equals_peft_linear(alpha):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(16, 24))
    stock = get_peft_model(base, LoraConfig(target_modules=["0"], r=8, lora_alpha=alpha))
    config = LoraConfig(target_modules=["0"], r=8, lora_alpha=alpha)
    config._register_custom_module({torch.nn.Linear: FusedLoraLinear})
    fused = get_peft_model(torch.nn.Sequential(torch.nn.Linear(16, 24)), config)
    torch.nn.init.normal_(stock.base_model.model[0].lora_B["default"].weight)
    fused.load_state_dict(stock.state_dict())
    assert type(fused.base_model.model[0]) is FusedLoraLinear

    x = torch.randn(3, 5, 16)
    outs, grads = [], []
    for model in (stock, fused):
        out = model(x)
        out.square().sum().backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(outs[1], outs[0])
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = [model(x) for model in (stock, fused)]
    assert low[1].dtype == low[0].dtype == torch.bfloat16
    torch.testing.assert_close(low[1], low[0], rtol=2e-2, atol=2e-2)
    with torch.no_grad(), fused.disable_adapter():  # falls back to peft: the base layer alone
        torch.testing.assert_close(fused(x), fused.base_model.model[0].base_layer(x))


def test_cfm_lora_config_registers_the_fused_layer():
    config = cfm_lora_config(4)
    assert config._custom_modules == {torch.nn.Linear: FusedLoraLinear}
    assert config.r == config.lora_alpha == 4


def test_v3_training_step_with_dropout_is_the_same_with_gradient_checkpointing():
    """In training mode (DiT dropout active), checkpointed blocks recompute with the same dropout
    masks: the loss and every gradient equal those of the plain pass."""
    torch.manual_seed(0)
    model = add_lora(_tiny_dit_model(), 4).train()
    assert model.cfm.base_model.model.estimator.transformer_blocks[0].ff.ff[1].p > 0
    for module in model.cfm.modules():  # non-zero B so that the LoRA A matrices get gradients too
        if isinstance(module, FusedLoraLinear):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.1)
    frames, mel_frames = 16, 30
    mel = torch.rand(2, 100, mel_frames) * 2 - 1
    # ssl, spec, mel, ssl_lengths, spec_lengths, text, text_lengths, mel_lengths
    inputs = (torch.randn(2, 768, frames), torch.rand(2, 1025, frames), mel, torch.tensor([frames, frames]),
              torch.tensor([frames, 12]), torch.randint(1, 300, (2, 7)), torch.tensor([7, 5]),
              torch.tensor([mel_frames, 22]))
    results = []
    for use_ckpt in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        loss = model(*inputs, use_grad_ckpt=use_ckpt, rng=random.Random(0)).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and any(".lora_A." in n for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6)
