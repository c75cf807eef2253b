"""Gradient checkpointing (`train.grad_ckpt`) of the SoVITS generator and the GPT: the same loss and
gradients as the plain pass (dropout active, so the recomputation must draw the same masks), fewer
activations kept, and unchanged state-dict keys."""

from __future__ import annotations

import torch

from gsv_accel.models.gpt import GPTConfig, Text2SemanticDecoder
from gsv_accel.models.sovits import SynthesizerTrn

from .test_gpt import _tiny_batch as gpt_batch
from .test_gpt import _tiny_config as gpt_config
from .test_sovits_generator import _tiny_batch as sovits_batch
from .test_sovits_generator import _tiny_config as sovits_config


def saved_activation_bytes(run) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of `run()`."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


def loss_and_grads(model, loss_fn, seed: int = 7):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks, noise and segment draws for both passes
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_identical(plain, checkpointed) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = plain, checkpointed
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=0, atol=1e-6, msg=name)


def test_sovits_generator_checkpointing_gives_the_same_loss_and_gradients():
    config = sovits_config(p_dropout=0.1, segment_size=4)
    model = SynthesizerTrn(config).train()
    batch = sovits_batch(config, lengths=(40, 30), text_lengths=(12, 9))

    def loss():
        out = model(*batch)
        z, z_p, m_p, logs_p, m_q, logs_q = out.latents
        return (out.wav.square().mean() + (z_p - m_p).square().mean() + logs_q.mean() + m_q.abs().mean()
                + out.commit_loss)

    keys = list(model.state_dict())
    plain = loss_and_grads(model, loss)
    plain_bytes = saved_activation_bytes(loss)
    model.set_grad_checkpointing(True)
    assert list(model.state_dict()) == keys  # exports and manifests see the same model
    assert_identical(plain, loss_and_grads(model, loss))
    assert saved_activation_bytes(loss) < plain_bytes / 2
    # Inference and validation (no autograd) run as before.
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(*batch).wav
        model.set_grad_checkpointing(False)
        torch.manual_seed(1)
        assert torch.equal(a, model(*batch).wav)


def test_gpt_checkpointing_gives_the_same_loss_and_gradients():
    config: GPTConfig = gpt_config(transformer_dropout=0.1, position_dropout=0.1, n_layer=3)
    model = Text2SemanticDecoder(config).train()
    batch = gpt_batch(config)

    def loss():
        return model.forward_teacher_forced(*batch)[0]

    keys = list(model.state_dict())
    plain = loss_and_grads(model, loss)
    plain_bytes = saved_activation_bytes(loss)
    model.set_grad_checkpointing(True)
    assert list(model.state_dict()) == keys
    assert_identical(plain, loss_and_grads(model, loss))
    assert saved_activation_bytes(loss) < plain_bytes / 2
