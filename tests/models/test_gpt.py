"""GPT (stage 1) text-to-semantic decoder: config, checkpoint layout, agreement with the official
training forward, training, DPO and generation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gsv_accel.formats import load_gsv_file, load_weights_into
from gsv_accel.models.gpt import (
    GPTConfig,
    GPTLightningLayout,
    Text2SemanticDecoder,
    add_model_prefix,
    make_rejected_semantic,
    strip_model_prefix,
    top_k_accuracy,
)


def _tiny_config(**overrides) -> GPTConfig:
    values = dict(vocab_size=33, EOS=32, phoneme_vocab_size=20, embedding_dim=16, hidden_dim=16,
                  head=2, n_layer=2, bert_dim=8)
    values.update(overrides)
    return GPTConfig(**values)


def _tiny_batch(config: GPTConfig, x_lens=(7, 5), y_lens=(9, 6), seed=0):
    """Phones left-padded, semantic ids right-padded, as the trainer batches them."""
    g = torch.Generator().manual_seed(seed)
    batch, tx, ty = len(x_lens), max(x_lens), max(y_lens)
    phones = torch.zeros(batch, tx, dtype=torch.long)
    bert = torch.zeros(batch, config.bert_dim, tx)
    semantic = torch.full((batch, ty), config.EOS, dtype=torch.long)
    for b, (lx, ly) in enumerate(zip(x_lens, y_lens, strict=True)):
        phones[b, tx - lx:] = torch.randint(0, config.phoneme_vocab_size, (lx,), generator=g)
        bert[b, :, tx - lx:] = torch.randn(config.bert_dim, lx, generator=g)
        semantic[b, :ly] = torch.randint(0, config.EOS, (ly,), generator=g)
    return phones, torch.tensor(x_lens), semantic, torch.tensor(y_lens), bert


# ----------------------------------------------------------------------------------- config


def test_config_defaults_are_s1longer_v2_and_round_trip():
    official = {"vocab_size": 1025, "phoneme_vocab_size": 732, "embedding_dim": 512, "hidden_dim": 512,
                "head": 16, "linear_units": 2048, "n_layer": 24, "dropout": 0, "EOS": 1024,
                "random_bert": 0}
    config = GPTConfig.from_dict(official)
    assert config == GPTConfig()
    assert config.official_dict() == official
    assert GPTConfig.from_dict(config.to_dict()) == config
    assert config.ffn_dim == 2048


def test_config_rejects_unknown_and_inconsistent_keys():
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig.from_dict({"n_layers": 4})
    with pytest.raises(ValueError, match="EOS"):
        GPTConfig(EOS=1000)
    with pytest.raises(ValueError, match="embedding_dim"):
        GPTConfig(embedding_dim=256)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(head=7)


def test_linear_units_does_not_change_the_architecture():
    # As officially: the feed-forward width is always 4 * hidden_dim.
    model = Text2SemanticDecoder(_tiny_config(linear_units=999))
    assert model.h.layers[0].linear1.weight.shape == (64, 16)


# ---------------------------------------------------------------------------- checkpoint layout


def test_default_state_dict_matches_official_manifest(reference_file):
    with open(reference_file("s1_v2_keys.json")) as f:
        expected = json.load(f)
    model = GPTLightningLayout(Text2SemanticDecoder(GPTConfig()))
    actual = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert actual == expected
    assert len(actual) == 295


def test_prefix_helpers_round_trip():
    bare = Text2SemanticDecoder(_tiny_config()).state_dict()
    prefixed = add_model_prefix(bare)
    assert all(k.startswith("model.") for k in prefixed)
    assert add_model_prefix(prefixed).keys() == prefixed.keys()
    assert strip_model_prefix(prefixed).keys() == bare.keys()


# ------------------------------------------------------------------ agreement with the official


def _fixture_model(reference_file) -> Text2SemanticDecoder:
    export = load_gsv_file(reference_file("s1_small_v2_export.ckpt"))
    model = Text2SemanticDecoder(GPTConfig.from_dict(export.config["model"]))
    weights = {k: v.float() for k, v in export.state_dict.items()}
    GPTLightningLayout(model).load_state_dict(weights)  # strict: nothing missing or unexpected
    return model.eval()


def test_teacher_forced_forward_matches_official(reference_file):
    model = _fixture_model(reference_file)
    io = load_file(reference_file("s1_small_v2_io.safetensors"))
    with torch.no_grad():
        loss, acc = model.forward_teacher_forced(io["phoneme_ids"], io["phoneme_ids_len"],
                                                 io["semantic_ids"], io["semantic_ids_len"],
                                                 io["bert_feature"])
    expected = io["loss"].reshape(())
    assert torch.allclose(loss, expected, rtol=1e-3, atol=0.0), (loss.item(), expected.item())
    assert acc.item() == io["acc"].item()


def test_bare_decoder_loads_official_export_strictly(reference_file):
    export = load_gsv_file(reference_file("s1_small_v2_export.ckpt"))
    model = Text2SemanticDecoder(GPTConfig.from_dict(export.config["model"]))
    load_weights_into(model, export, strict=True)  # strips the `model.` prefix
    expected = export.state_dict["model.h.layers.1.linear2.weight"].float()
    assert torch.equal(model.h.layers[1].linear2.weight, expected)


# ------------------------------------------------------------------------------------ metrics


def test_top_k_accuracy_matches_definition():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 10, generator=g)
    targets = torch.randint(0, 10, (3, 7), generator=g)
    targets[0, :3] = 9  # ignored class
    top3 = logits.topk(3, dim=-1).indices
    hits = kept = 0
    for b in range(3):
        for t in range(7):
            if targets[b, t] == 9:
                continue
            kept += 1
            hits += int(targets[b, t] in top3[b, t])
    assert top_k_accuracy(logits, targets, 3, ignore_index=9).item() == pytest.approx(hits / kept)
    # Every target ignored: 0, not NaN.
    assert top_k_accuracy(logits, torch.full_like(targets, 9), 3, ignore_index=9).item() == 0.0
    # Target among the top k everywhere: 1.
    assert top_k_accuracy(logits, logits.argmax(-1), 3).item() == 1.0


# ----------------------------------------------------------------------------------- training


def test_padding_does_not_change_a_row():
    config = _tiny_config(position_dropout=0.0, transformer_dropout=0.0)
    torch.manual_seed(0)
    model = Text2SemanticDecoder(config).eval()
    phones, x_lens, semantic, y_lens, bert = _tiny_batch(config, x_lens=(7, 4), y_lens=(9, 5))
    with torch.no_grad():
        logits, targets = model.teacher_forced_logits(phones, x_lens, semantic, y_lens, bert)
        # Row 1 alone, without padding (its text positions shift: they count the left padding).
        alone, alone_targets = model.teacher_forced_logits(
            phones[1:, 3:], x_lens[1:], semantic[1:, :5], y_lens[1:], bert[1:, :, 3:])
    assert targets.shape == (2, 10)
    assert torch.equal(targets[1, :6], alone_targets[0])
    assert (targets[1, 5:] == config.EOS).all() and (targets[0, 9:] == config.EOS).all()
    # Same row with the text positions of the padded batch: identical predictions.
    model.ar_text_position.alpha.data.zero_()
    with torch.no_grad():
        logits, _ = model.teacher_forced_logits(phones, x_lens, semantic, y_lens, bert)
        alone, _ = model.teacher_forced_logits(
            phones[1:, 3:], x_lens[1:], semantic[1:, :5], y_lens[1:], bert[1:, :, 3:])
    assert torch.allclose(logits[1, :6], alone[0], atol=1e-5)


def test_tiny_model_trains_on_a_fixed_batch():
    config = _tiny_config()
    torch.manual_seed(0)
    model = Text2SemanticDecoder(config).train()
    batch = _tiny_batch(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss, acc = model(*batch)
        assert loss.ndim == 0 and acc.ndim == 0 and not acc.requires_grad
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


def test_dpo_forward_adds_the_preference_term():
    config = _tiny_config()
    torch.manual_seed(0)
    model = Text2SemanticDecoder(config).eval()
    phones, x_lens, semantic, y_lens, bert = _tiny_batch(config)
    rejected, rejected_lens = make_rejected_semantic(semantic, torch.Generator().manual_seed(3))
    assert rejected.size(0) == 2 and (rejected_lens >= semantic.size(1)).all()
    with torch.no_grad():
        ce, acc = model.forward_teacher_forced(phones, x_lens, semantic, y_lens, bert)
        total, dpo_acc = model.forward_dpo(phones, x_lens, semantic, y_lens, bert, rejected, rejected_lens)
        # Rejected == chosen: logp difference 0, DPO term log(2).
        same, _ = model.forward_dpo(phones, x_lens, semantic, y_lens, bert, semantic, y_lens)
    assert dpo_acc == acc
    assert torch.allclose(same - ce, torch.log(torch.tensor(2.0)), atol=1e-5)
    assert total.item() != pytest.approx(ce.item())
    model.train()
    loss, _ = model(phones, x_lens, semantic, y_lens, bert, dpo=True)
    loss.backward()


# --------------------------------------------------------------------------------- generation


def test_greedy_generation_with_cache_matches_full_recomputation():
    config = _tiny_config()
    torch.manual_seed(0)
    model = Text2SemanticDecoder(config)
    phones, x_lens, semantic, _, bert = _tiny_batch(config, x_lens=(6,), y_lens=(4,))
    prompt = semantic[:, :4]
    out = model.infer(phones, bert, prompt, max_new_tokens=12, top_k=1, repetition_penalty=1.0,
                      min_new_tokens=12)
    assert model.training  # mode restored
    tokens = out.tokens[0]
    assert tokens.numel() == 12 and out.hit_eos == [False]
    full = torch.cat([prompt[0], tokens]).unsqueeze(0)
    model.eval()
    with torch.no_grad():
        logits, _ = model.teacher_forced_logits(phones, x_lens, full, torch.tensor([full.size(1)]), bert)
    logits[..., config.EOS] = float("-inf")
    assert torch.equal(logits[0, 4:16].argmax(-1), tokens)


def _rig_output(model: Text2SemanticDecoder, favour_eos: bool) -> None:
    """Make every output the same constant vector, and EOS the most (or least) likely id."""
    dim = model.config.hidden_dim
    last = model.h.layers[-1].norm2
    direction = torch.ones(dim)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(direction)
        model.ar_predict_layer.weight.zero_()
        model.ar_predict_layer.weight[model.eos] = direction * (1.0 if favour_eos else -1.0)
        model.ar_predict_layer.weight[3] = direction * 0.5


def test_generation_stops_at_eos_and_respects_the_length_limits():
    config = _tiny_config()
    torch.manual_seed(0)
    model = Text2SemanticDecoder(config)
    phones, _, semantic, _, bert = _tiny_batch(config, x_lens=(5, 5), y_lens=(3, 3))

    _rig_output(model, favour_eos=True)
    out = model.infer(phones, bert, semantic[:, :3], top_k=1, min_new_tokens=2)
    assert out.hit_eos == [True, True]
    assert [t.tolist() for t in out.tokens] == [[3, 3], [3, 3]]  # EOS banned for 2 steps, then stop
    out = model.infer(phones, bert, None, top_k=1, min_new_tokens=0)  # reference-free
    assert out.hit_eos == [True, True] and [t.numel() for t in out.tokens] == [0, 0]

    _rig_output(model, favour_eos=False)
    out = model.infer(phones, bert, semantic[:, :3], max_new_tokens=7,
                      generator=torch.Generator().manual_seed(0))
    assert out.hit_eos == [False, False]
    assert all(t.numel() == 7 and (t != config.EOS).all() for t in out.tokens)
