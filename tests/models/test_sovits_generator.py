"""SoVITS generator: checkpoint layout, numerical agreement with the official model, training pass."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from gsv_accel.models.sovits import SoVITSConfig, SynthesizerTrn
from gsv_accel.models.sovits.quantize import ResidualVectorQuantizer


def _tiny_config(**overrides) -> SoVITSConfig:
    """A few-thousand-parameter model (apart from the fixed 768-wide SSL path) for fast CPU tests."""
    values = dict(
        inter_channels=8, hidden_channels=16, filter_channels=32, n_heads=2, n_layers=2,
        upsample_rates=[10, 8, 8], upsample_kernel_sizes=[20, 16, 16], upsample_initial_channel=32,
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], gin_channels=16,
        mrte_hidden_channels=16, posterior_layers=2, flow_layers=2, flow_wn_layers=1,
        ref_enc_hidden=16, codebook_size=64, segment_size=4,
    )
    values.update(overrides)
    return SoVITSConfig(**values)


def _tiny_batch(config: SoVITSConfig, lengths=(12, 8), text_lengths=(7, 5)):
    torch.manual_seed(0)
    batch, frames = len(lengths), max(lengths)
    y_lengths = torch.tensor(lengths)
    y = torch.rand(batch, config.spec_channels, frames)
    y = y * (torch.arange(frames) < y_lengths[:, None]).unsqueeze(1)
    ssl = torch.randn(batch, config.ssl_dim, frames)  # 50 Hz features: 2 per 25 Hz token
    text = torch.randint(0, config.n_symbols, (batch, max(text_lengths)))
    return ssl, y, y_lengths, text, torch.tensor(text_lengths)


# ----------------------------------------------------------------------------- checkpoint layout


def test_default_v2_state_dict_matches_official_manifest(reference_file):
    with open(reference_file("s2_v2_generator_keys.json")) as f:
        expected = json.load(f)
    model = SynthesizerTrn(SoVITSConfig())
    actual = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert actual == expected


def test_v1_variant_builds_with_v1_tables():
    model = SynthesizerTrn(SoVITSConfig(version="v1"))
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert shapes["enc_p.text_embedding.weight"] == (322, 192)
    # v1 computes the reference embedding over every spectrogram bin.
    assert shapes["ref_enc.spectral.0.fc.weight"] == (128, 1025)
    assert model.reference_bins == 1025


def test_v1_tiny_model_runs_on_full_spectrogram():
    config = _tiny_config(version="v1", spec_channels=64)
    model = SynthesizerTrn(config)
    ssl, y, y_lengths, text, text_lengths = _tiny_batch(config)
    out = model(ssl, y, y_lengths, text, text_lengths)
    assert out.wav.shape == (2, 1, config.segment_size * config.hop_length)


# ----------------------------------------------------------------------------- official fixture


def test_small_export_reproduces_official_outputs(reference_file, small_s2_model_config):
    from gsv_accel.formats import load_gsv_file

    config = SoVITSConfig.from_dict(small_s2_model_config)
    loaded = load_gsv_file(reference_file("s2_small_v2_export.pth"))
    # The config stored in the export describes the same architecture.
    stored = loaded.config
    assert SoVITSConfig.from_dict(stored["model"], stored["data"], stored["train"]) == config

    model = SynthesizerTrn(config)
    result = model.load_state_dict(loaded.state_dict, strict=False)
    assert result.unexpected_keys == []
    # Exports drop the posterior encoder (only needed for training); nothing else may be missing.
    assert all(name.startswith("enc_q.") for name in result.missing_keys)
    model.eval()

    io = load_file(str(reference_file("s2_small_v2_io.safetensors")))
    codes = model.extract_latent(io["ssl"])
    assert torch.equal(codes, io["codes"])

    with torch.no_grad():
        ge = model.reference_embedding(io["refer"], torch.ones(1, 1, io["refer"].size(2)))
    ge_err = (ge - io["ge"]).abs().max().item()
    assert ge_err < 1e-4, ge_err

    wav = model.decode(io["codes"], io["text"], io["refer"], noise_scale=0.0)
    assert wav.shape == io["wav_out"].shape
    wav_err = (wav - io["wav_out"]).abs().max().item()
    assert wav_err < 1e-4, wav_err


# ----------------------------------------------------------------------------- training forward


def test_training_forward_shapes_and_backward_with_frozen_quantizer():
    config = _tiny_config(freeze_quantizer=True)
    model = SynthesizerTrn(config)
    model.ssl_proj.requires_grad_(False)
    model.quantizer.requires_grad_(False)
    model.train()
    ssl, y, y_lengths, text, text_lengths = _tiny_batch(config)
    codebook_before = model.quantizer.state_dict()

    out = model(ssl, y, y_lengths, text, text_lengths)
    wav, commit_loss, starts, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), quantized = out

    batch, frames = y.size(0), y.size(2)
    assert wav.shape == (batch, 1, config.segment_size * config.hop_length)
    assert starts.shape == (batch,)
    assert bool(((starts >= 0) & (starts + config.segment_size <= y_lengths)).all())
    for mask in (x_mask, z_mask):
        assert mask.shape == (batch, 1, frames)
        assert torch.equal(mask.sum((1, 2)), y_lengths.to(mask.dtype))
    for tensor in (z, z_p, m_p, logs_p, m_q, logs_q):
        assert tensor.shape == (batch, config.inter_channels, frames)
    assert quantized.shape == (batch, config.ssl_dim, frames)
    assert commit_loss.item() == 0.0
    assert not model.quantizer.training and not model.ssl_proj.training

    loss = wav.abs().mean() + (z_p - m_p).pow(2).mean() + logs_q.mean() + commit_loss
    loss.backward()
    assert all(p.grad is None for p in model.ssl_proj.parameters())
    for name in ("dec.conv_pre.weight", "enc_p.encoder_text.attn_layers.0.emb_rel_k",
                 "enc_p.mrte.cross_attention.conv_q.weight", "enc_p.text_embedding.weight",
                 "enc_q.pre.weight", "flow.flows.0.pre.weight", "ref_enc.fc.fc.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
    # A frozen quantizer never moves its codebook.
    for name, tensor in model.quantizer.state_dict().items():
        assert torch.equal(tensor, codebook_before[name]), name


def test_training_forward_with_trainable_quantizer_initialises_codebook():
    # Fewer codes than token vectors in the batch, so k-means cannot fit them exactly.
    config = _tiny_config(freeze_quantizer=False, codebook_size=4)
    model = SynthesizerTrn(config).train()
    codebook = model.quantizer.vq.layers[0]._codebook
    assert codebook.inited.item() == 0.0
    ssl, y, y_lengths, text, text_lengths = _tiny_batch(config)

    out = model(ssl, y, y_lengths, text, text_lengths)
    assert codebook.inited.item() == 1.0
    assert out.commit_loss.item() > 0
    out.commit_loss.backward()
    assert model.ssl_proj.weight.grad is not None


def test_quantizer_eval_matches_nearest_neighbour_and_training_ema_moves_codes():
    torch.manual_seed(0)
    quantizer = ResidualVectorQuantizer(dimension=4, n_q=1, bins=8, kmeans_init=False).eval()
    x = torch.randn(2, 4, 5)
    quantized, codes, loss = quantizer(x)
    table = quantizer.vq.layers[0]._codebook.embed
    expected = torch.cdist(x.transpose(1, 2), table.unsqueeze(0)).argmin(-1)
    assert torch.equal(codes[0], expected)
    assert torch.equal(quantizer.decode(codes), quantized)
    assert torch.equal(quantizer.encode(x), codes)
    assert loss.item() == 0.0

    quantizer.train()
    before = table.clone()
    quantizer(x)
    assert not torch.equal(table, before)


def test_decode_shapes_speed_and_reference_list():
    config = _tiny_config()
    model = SynthesizerTrn(config).eval()
    codes = torch.randint(0, config.codebook_size, (1, 1, 6))
    text = torch.randint(0, config.n_symbols, (1, 9))
    refer = torch.rand(1, config.spec_channels, 20)
    wav = model.decode(codes, text, refer, noise_scale=0.5)
    assert wav.shape == (1, 1, 12 * config.hop_length)
    averaged = model.decode(codes, text, [refer, refer * 0.5], noise_scale=0.0)
    assert averaged.shape == wav.shape
    faster = model.decode(codes, text, refer, noise_scale=0.0, speed=2.0)
    assert faster.shape == (1, 1, (12 // 2 + 1) * config.hop_length)
