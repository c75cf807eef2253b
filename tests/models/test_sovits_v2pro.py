"""SoVITS v2Pro / v2ProPlus: checkpoint layout, the official small exports, the training forward.

Every size is read from the reference files (model configs, tensor shapes, metadata), so the same
tests run unchanged on another fixture set made the same way with other seeds and sizes.
"""

from __future__ import annotations

import dataclasses
import json
from copy import deepcopy
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from gsv_accel.formats import load_gsv_file, load_weights_into
from gsv_accel.models.sovits import MultiPeriodDiscriminator, SoVITSConfig, SynthesizerTrn
from tests.models.test_sovits_generator import _tiny_batch, _tiny_config

REPO_ROOT = Path(__file__).resolve().parents[2]
# Fixture name stem -> official version name (the header byte is the official exporter's).
VERSIONS = {"v2pro": ("v2Pro", b"05"), "v2proplus": ("v2ProPlus", b"06")}
ATOL = 1e-4


def _max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


def _small_config(reference_file, stem: str, gsv) -> SoVITSConfig:
    """The fixture's model config (sizes from *_model_config.json) with the version, the data/train
    sections of the config stored in the export (spec_channels, segment_size) and the width of the
    speaker-verification embedding its weights take (the official code hard-codes it)."""
    with open(reference_file(f"s2_small_{stem}_model_config.json")) as f:
        model = json.load(f)
    model["version"] = VERSIONS[stem][0]
    model.setdefault("sv_dim", int(gsv.state_dict["sv_emb.weight"].shape[1]))
    return SoVITSConfig.from_dict(model, gsv.config.get("data"), gsv.config.get("train"))


def _loaded_small_model(reference_file, stem: str) -> tuple[SynthesizerTrn, object]:
    gsv = load_gsv_file(reference_file(f"s2_small_{stem}_export.pth"))
    config = _small_config(reference_file, stem, gsv)
    model = SynthesizerTrn(config)
    report = load_weights_into(model, gsv)
    # Exports leave out the posterior encoder only.
    assert report.missing == [] and report.unexpected == []
    assert report.expected_missing and all(k.startswith("enc_q.") for k in report.expected_missing)
    return model, gsv


# ----------------------------------------------------------------------------- checkpoint layout


@pytest.mark.parametrize("stem", list(VERSIONS))
def test_default_generator_matches_official_manifest(reference_file, stem):
    with open(reference_file(f"s2_{stem}_generator_keys.json")) as f:
        expected = json.load(f)
    model = SynthesizerTrn(SoVITSConfig.for_version(VERSIONS[stem][0]))
    actual = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert actual == expected
    assert list(actual) == list(expected)  # same key order as the official state dict


@pytest.mark.parametrize("stem", list(VERSIONS))
def test_default_discriminator_matches_official_manifest(reference_file, stem):
    # v2ProPlus uses the v2Pro discriminator (the official class checks membership in the Pro set).
    with open(reference_file("s2_v2pro_discriminator_keys.json")) as f:
        expected = json.load(f)
    disc = MultiPeriodDiscriminator(version=VERSIONS[stem][0])
    actual = {name: list(tensor.shape) for name, tensor in disc.state_dict().items()}
    assert actual == expected


@pytest.mark.parametrize("stem", list(VERSIONS))
def test_recipe_config_is_the_official_architecture(stem):
    version = VERSIONS[stem][0]
    with open(REPO_ROOT / "recipes" / "configs" / f"s2_{stem}.yaml") as f:
        recipe = yaml.safe_load(f)
    assert recipe["model"]["version"] == version
    assert SoVITSConfig(**recipe["model"]) == SoVITSConfig.for_version(version)


def test_pro_symbol_table_is_v2s():
    assert SoVITSConfig(version="v2Pro").n_symbols == SoVITSConfig(version="v2").n_symbols == 732
    assert SoVITSConfig(version="v2ProPlus").n_symbols == 732
    assert [SoVITSConfig(version=v).symbols_version for v in ("v1", "v2", "v2Pro", "v2ProPlus")] == [
        "v1", "v2", "v2", "v2"]


# ----------------------------------------------------------------------------- official exports


@pytest.mark.parametrize("stem", list(VERSIONS))
def test_small_export_reproduces_official_outputs(reference_file, stem):
    version, header = VERSIONS[stem]
    model, gsv = _loaded_small_model(reference_file, stem)
    assert gsv.header == header and gsv.version == version
    assert gsv.config["model"]["version"] == version
    model.eval()

    io = load_file(str(reference_file(f"s2_small_{stem}_io.safetensors")))
    codes = model.extract_latent(io["ssl"])
    assert torch.equal(codes, io["codes"])

    errors = {}
    with torch.no_grad():
        ge_ref = model.reference_embedding(io["refer"])
        errors["ge_ref"] = _max_err(ge_ref, io["ge_ref"])
        errors["sv_proj"] = _max_err(model.sv_emb(io["sv_emb"]), io["sv_proj"])
        ge = model.speaker_embedding(io["refer"], sv_emb=io["sv_emb"])
        errors["ge"] = _max_err(ge, io["ge"])
        errors["ge512"] = _max_err(model.text_condition(ge), io["ge512"])

    # m_p (enc_p's mean) and z (the reverse flow's output) are intermediate values of decode.
    seen = {}
    hooks = [model.enc_p.register_forward_hook(lambda m, i, out: seen.__setitem__("m_p", out[1])),
             model.flow.register_forward_hook(lambda m, i, out: seen.__setitem__("z", out))]
    try:
        wav = model.decode(io["codes"], io["text"], io["refer"], noise_scale=0.0, sv_emb=io["sv_emb"])
    finally:
        for hook in hooks:
            hook.remove()
    errors["m_p"] = _max_err(seen["m_p"], io["m_p"])
    errors["z"] = _max_err(seen["z"], io["z"])
    errors["wav_out"] = _max_err(wav, io["wav_out"])
    assert max(errors.values()) < ATOL, errors


@pytest.mark.parametrize("stem", list(VERSIONS))
def test_training_forward_reproduces_official(reference_file, stem):
    io_path = reference_file(f"s2_small_{stem}_train_io.safetensors")
    enc_q = load_file(str(reference_file(f"s2_small_{stem}_enc_q.safetensors")))
    model, gsv = _loaded_small_model(reference_file, stem)
    with safe_open(str(io_path), "pt") as f:
        meta = f.metadata()
    io = load_file(str(io_path))
    if "segment_frames" in meta:
        assert model.segment_size == int(meta["segment_frames"])
    # The export leaves out the posterior encoder; the fixture stores its weights separately.
    report = load_weights_into(model, dataclasses.replace(gsv, state_dict={**gsv.state_dict, **enc_q}),
                               strict=True)
    assert report.complete

    # The fixture is one official training forward with every Dropout set to p=0 (ref_enc hard-codes
    # 0.1, which would draw masks); with p=0 nothing is drawn.
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    captured = {}
    hook = model.prelu.register_forward_hook(lambda m, i, out: captured.__setitem__("ge", out))
    seed = int(meta["torch_manual_seed"])
    torch.manual_seed(seed)
    try:
        out = model(io["ssl"], io["spec"], io["spec_lengths"], io["text"], io["text_lengths"],
                    sv_emb=io["sv_emb"])
    finally:
        hook.remove()
    after = torch.get_rng_state()

    # The same random draws, in the same order: the posterior noise, then the segment starts.
    torch.manual_seed(seed)
    noise = torch.randn(io["enc_q_noise"].shape)
    starts = torch.rand(io["slice_rand"].shape)
    assert torch.equal(noise, io["enc_q_noise"]) and torch.equal(starts, io["slice_rand"])
    assert torch.equal(torch.get_rng_state(), after), "the forward drew other random numbers"

    assert torch.equal(out.slice_starts, io["ids_slice"])
    assert out.commit_loss.item() == io["kl_ssl"].item() == 0.0
    z, z_p, m_p, logs_p, m_q, logs_q = out.latents
    errors = {
        "y_hat": _max_err(out.wav, io["y_hat"]), "z": _max_err(z, io["z"]), "z_p": _max_err(z_p, io["z_p"]),
        "m_p": _max_err(m_p, io["m_p"]), "logs_p": _max_err(logs_p, io["logs_p"]),
        "m_q": _max_err(m_q, io["m_q"]), "logs_q": _max_err(logs_q, io["logs_q"]),
        "y_mask": _max_err(out.z_mask, io["y_mask"]), "ge": _max_err(captured["ge"], io["ge"]),
    }
    assert torch.equal(out.x_mask, out.z_mask)
    assert max(errors.values()) < ATOL, errors


# ----------------------------------------------------------------------------- API and errors


def _tiny_pro(version: str = "v2Pro", **overrides) -> SynthesizerTrn:
    # gin (16) differs from MRTE's width (24): the Pro projection bridges them.
    values = dict(version=version, sv_dim=12, mrte_hidden_channels=24, p_dropout=0.0)
    values.update(overrides)
    torch.manual_seed(0)
    return SynthesizerTrn(_tiny_config(**values))


def test_pro_training_forward_requires_sv_emb_and_trains_its_layers():
    model = _tiny_pro()
    assert model.takes_sv_emb
    ssl, y, y_lengths, text, text_lengths = _tiny_batch(model.config)
    with pytest.raises(ValueError, match="need sv_emb"):
        model(ssl, y, y_lengths, text, text_lengths)
    with pytest.raises(ValueError, match=r"sv_emb must have shape \(batch=2, sv_dim=12\)"):
        model(ssl, y, y_lengths, text, text_lengths, sv_emb=torch.randn(2, 13))

    sv_emb = torch.randn(y.size(0), model.config.sv_dim)
    out = model(ssl, y, y_lengths, text, text_lengths, sv_emb=sv_emb)
    assert out.wav.shape == (2, 1, model.config.segment_size * model.config.hop_length)
    loss = out.wav.abs().mean() + (out.latents.z_p - out.latents.m_p).pow(2).mean()
    loss.backward()
    for name in ("sv_emb.weight", "ge_to512.weight", "prelu.weight", "ref_enc.fc.fc.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_conditioning_uses_the_generators_current_layers():
    model = _tiny_pro().eval()
    config = model.config
    refer = torch.rand(2, config.spec_channels, 10)
    sv_emb = torch.randn(2, config.sv_dim)
    with torch.no_grad():
        before = model.speaker_embedding(refer, sv_emb=sv_emb)
        # A copy is independent of the original; a replaced (e.g. wrapped) layer is the one used.
        copy = deepcopy(model)
        copy.prelu.weight.fill_(1.0)
        assert torch.equal(model.speaker_embedding(refer, sv_emb=sv_emb), before)
        model.prelu = torch.nn.Identity()
        expected = model.reference_embedding(refer) + model.sv_emb(sv_emb).unsqueeze(-1)
        assert torch.allclose(model.speaker_embedding(refer, sv_emb=sv_emb), expected)
        assert torch.allclose(copy.speaker_embedding(refer, sv_emb=sv_emb), expected)


def test_v2_discriminator_into_pro_discriminator_names_model_version(tmp_path):
    widths = dict(scale_channels=(4, 8, 16, 16, 16, 16), period_channels=(4, 8, 16, 16, 16))
    path = tmp_path / "s2D.pth"
    torch.save({"weight": MultiPeriodDiscriminator(version="v2", **widths).state_dict()}, path)
    pro = MultiPeriodDiscriminator(version="v2Pro", **widths)
    report = load_weights_into(pro, path)
    assert {k.split(".")[1] for k in report.missing} == {"6", "7"}
    assert any("model.version" in note for note in report.notes)


def test_v2_models_refuse_sv_emb():
    model = SynthesizerTrn(_tiny_config())
    assert not model.takes_sv_emb
    assert not any(k.startswith(("sv_emb.", "prelu.", "ge_to512.")) for k in model.state_dict())
    ssl, y, y_lengths, text, text_lengths = _tiny_batch(model.config)
    with pytest.raises(ValueError, match="v2 models take no speaker-verification embedding"):
        model(ssl, y, y_lengths, text, text_lengths, sv_emb=torch.randn(2, 20480))


@pytest.mark.parametrize("version", ["v2Pro", "v2ProPlus"])
def test_pro_decode_with_reference_lists(version):
    model = _tiny_pro(version).eval()
    config = model.config
    codes = torch.randint(0, config.codebook_size, (1, 1, 6))
    text = torch.randint(0, config.n_symbols, (1, 9))
    refs = [torch.rand(1, config.spec_channels, 20), torch.rand(1, config.spec_channels, 14)]
    svs = [torch.randn(1, config.sv_dim), torch.randn(1, config.sv_dim)]

    with pytest.raises(ValueError, match="need sv_emb"):
        model.decode(codes, text, refs[0], noise_scale=0.0)
    with pytest.raises(ValueError, match="reference spectrogram"):
        model.decode(codes, text, None, noise_scale=0.0, sv_emb=svs[0])
    with pytest.raises(ValueError, match="list of as many"):
        model.decode(codes, text, refs, noise_scale=0.0, sv_emb=svs[:1])

    wav = model.decode(codes, text, refs, noise_scale=0.0, sv_emb=svs)
    assert wav.shape == (1, 1, 12 * config.hop_length)
    # Each reference is conditioned with its own embedding, then the post-PReLU embeddings averaged.
    with torch.no_grad():
        ges = [model.speaker_embedding(r, sv_emb=s) for r, s in zip(refs, svs, strict=True)]
        ge = torch.stack(ges).mean(0)
    seen = {}
    hook = model.dec.register_forward_pre_hook(lambda m, args, kwargs: seen.__setitem__("g", kwargs["g"]),
                                               with_kwargs=True)
    try:
        model.decode(codes, text, refs, noise_scale=0.0, sv_emb=svs)
    finally:
        hook.remove()
    assert torch.allclose(seen["g"], ge, atol=1e-6)
    single = model.decode(codes, text, refs[0], noise_scale=0.0, sv_emb=svs[0])
    assert not torch.allclose(single, wav)


def test_for_version_defaults_are_independent_copies():
    first = SoVITSConfig.for_version("v2ProPlus")
    first.upsample_kernel_sizes.append(99)
    assert SoVITSConfig.for_version("v2ProPlus").upsample_kernel_sizes == [20, 16, 8, 2, 2]
    assert SoVITSConfig.for_version("v2Pro", gin_channels=64).gin_channels == 64
    with pytest.raises(ValueError, match="v3"):
        SoVITSConfig.for_version("v3")


# ----------------------------------------------------------------------------- prepare --s2-pretrained


@pytest.mark.parametrize("stem", list(VERSIONS))
def test_prepare_s2_model_reads_pro_exports(reference_file, stem):
    """`prepare --s2-pretrained` on an official 05/06 export: the semantic codes are the official ones."""
    from gsv_accel.data import prepare as prep

    io = load_file(str(reference_file(f"s2_small_{stem}_io.safetensors")))
    model = prep.load_s2_model(reference_file(f"s2_small_{stem}_export.pth"), io["ssl"].size(1),
                               torch.device("cpu"))
    assert model.config.version == VERSIONS[stem][0]
    codes = prep.semantic_codes(model, [io["ssl"][0]])
    assert codes[0].tolist() == io["codes"][0, 0].tolist()


def test_prepare_s2_model_reads_a_plain_pro_pretrained_file(tmp_path):
    """`s2Gv2Pro.pth`-style files hold no config: the official v2Pro architecture (gin 1024) is built."""
    from gsv_accel.data import prepare as prep

    torch.manual_seed(0)
    source = SynthesizerTrn(SoVITSConfig.for_version("v2Pro"))
    for name, buffer in source.named_buffers():
        if name.endswith("_codebook.inited"):
            buffer.fill_(1.0)
    path = tmp_path / "s2Gv2Pro.pth"
    torch.save({"weight": {k: v.half() for k, v in source.state_dict().items()}}, path)
    del source
    model = prep.load_s2_model(path, 768, torch.device("cpu"))
    assert model.config == SoVITSConfig.for_version("v2Pro")
    ssl = torch.randn(768, 10)
    expected = model.extract_latent(ssl[None])[0, 0]
    assert prep.semantic_codes(model, [ssl])[0].tolist() == expected.tolist()
