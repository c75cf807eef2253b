"""SoVITS v3/v4 (SynthesizerTrnV3): key manifests, the small official model's forwards, LoRA.

Every size is read from the reference files (model configs, tensor shapes), so the same tests run
unchanged on another fixture set made the same way with other seeds and sizes. Tolerances are the
reference README's.
"""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from gsv_accel.cfm_export import export_cfm_full, export_cfm_lora, lora_export_name
from gsv_accel.formats import OfficialCompatibilityWarning, load_gsv_file, sovits_export_info
from gsv_accel.models.sovits import SoVITSV3Config, SynthesizerTrnV3
from gsv_accel.models.sovits.lora import add_lora, lora_state_dict, merge_lora_export

VERSIONS = ["v3", "v4"]
FEA_ATOL = 1e-5
OUT_ATOL = 1e-4
LOSS_RTOL = {"nobranch": 1e-4, "branch": 1e-3}


def _max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return (actual - expected).abs().max().item()


def small_config(reference_file, version: str) -> SoVITSV3Config:
    """The fixture's config: the official model section plus the `patched_sizes` widths."""
    with open(reference_file(f"s2_small_{version}_model_config.json")) as f:
        cfg = json.load(f)
    sizes, dit = cfg["patched_sizes"], cfg["patched_sizes"]["dit"]
    assert dit["text_dim"] == sizes["inter_channels2"]  # the official DiT's text_dim is inter_channels2
    model = {**cfg["model"], "version": version, "inter_channels2": sizes["inter_channels2"],
             "wns1_n_layers": sizes["wns1_n_layers"], "mel_channels": dit["mel_dim"],
             **{f"dit_{k}": dit[k] for k in ("dim", "depth", "heads", "dim_head", "ff_mult", "conv_layers",
                                             "dropout")}}
    return SoVITSV3Config.from_dict(model, cfg["data"])


def small_model(reference_file, version: str) -> SynthesizerTrnV3:
    with open(reference_file(f"s2_small_{version}_model_config.json")) as f:
        weights = json.load(f)["weights_file"]
    model = SynthesizerTrnV3(small_config(reference_file, version))
    model.load_state_dict(load_file(str(reference_file(weights))), strict=True)
    return model.eval()


@pytest.fixture(scope="module", params=VERSIONS)
def case(request, reference_file):
    torch.set_num_threads(1)
    version = request.param
    io = load_file(str(reference_file(f"s2_small_{version}_io.safetensors")))
    return version, small_model(reference_file, version), io


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("version", VERSIONS)
def test_default_config_has_the_official_keys_and_shapes(reference_file, version):
    with open(reference_file(f"s2_{version}_generator_keys.json")) as f:
        expected = json.load(f)
    with torch.device("meta"):
        model = SynthesizerTrnV3(SoVITSV3Config.for_version(version))
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected


def test_config_reads_official_sections_and_refuses_other_versions():
    config = SoVITSV3Config.from_dict({"version": "v4", "inter_channels": 192, "gin_channels": 512},
                                      {"filter_length": 2048})
    assert config.version == "v4" and config.spec_channels == 1025
    assert config.frame_rates.feature_upsample == 2
    assert SoVITSV3Config().frame_rates.feature_upsample == 1.875 and SoVITSV3Config().n_symbols == 732
    with pytest.raises(ValueError, match="v3 or v4"):
        SoVITSV3Config(version="v2")


def test_freeze_quantizer_freezes_the_text_side(reference_file):
    model = SynthesizerTrnV3(small_config(reference_file, "v3")).train()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.split(".")[0] in ("enc_p", "ssl_proj", "quantizer") for name in frozen)
    assert not model.enc_p.training and not model.ssl_proj.training and model.cfm.training


# ----------------------------------------------------------------------------- forwards vs official


def test_decode_encp(case):
    version, model, io = case
    assert torch.equal(model.extract_latent(io["dec_ssl"]), io["dec_codes"])
    fea, ge = model.decode_encp(io["dec_codes"], io["dec_text"], io["dec_refer"])
    assert _max_err(fea, io["dec_fea"]) < FEA_ATOL
    assert _max_err(ge, io["dec_ge"]) < FEA_ATOL
    speed = float(io["dec_speed"])
    fea_speed, _ = model.decode_encp(io["dec_codes"], io["dec_text"], None, ge=ge, speed=speed)
    assert _max_err(fea_speed, io["dec_fea_speed"]) < FEA_ATOL


def test_estimator(case):
    _, model, io = case
    args = (io["est_xt"], io["est_prompt"], io["est_x_lens"], io["est_t"], io["est_dt"], io["est_mu"])
    with torch.no_grad():
        assert _max_err(model.cfm.estimator(*args), io["est_v_pred"]) < OUT_ATOL
        dropped = model.cfm.estimator(*args, drop_audio_cond=True, drop_text=True)
    assert _max_err(dropped, io["est_v_pred_drop"]) < OUT_ATOL


@pytest.mark.parametrize("key, cfg_rate", [("inf_out", 0.0), ("inf_out_cfg2", 2.0)])
def test_cfm_inference(case, key, cfg_rate):
    _, model, io = case
    n_steps = 4  # README: n_timesteps=4, temperature 1
    torch.manual_seed(int(io["inf_seed"]))
    assert torch.equal(torch.randn(io["inf_x_init"].shape), io["inf_x_init"])  # the first and only draw
    torch.manual_seed(int(io["inf_seed"]))
    out = model.cfm.inference(io["inf_mu"], io["inf_x_lens"], io["inf_prompt"], n_timesteps=n_steps,
                              temperature=1.0, inference_cfg_rate=cfg_rate)
    assert _max_err(out, io[key]) < OUT_ATOL
    assert out[:, :, : io["inf_prompt"].shape[-1]].abs().max() == 0


def _train_forward(model, io, branch: str, **kwargs):
    torch.manual_seed(int(io["train_torch_seed"]))
    random.seed(int(io[f"train_{branch}_py_seed"]))
    return model(io["batch_ssl"], io["batch_spec"], io["batch_mel"], io["batch_ssl_lengths"],
                 io["batch_spec_lengths"], io["batch_text"], io["batch_text_lengths"],
                 io["batch_mel_lengths"], **kwargs)


@pytest.mark.parametrize("branch", ["nobranch", "branch"])
def test_training_forward(case, branch):
    _, model, io = case
    with torch.no_grad():
        out = _train_forward(model, io, branch)
    assert torch.equal(out.prompt_lens, io[f"train_{branch}_prompt_len"])
    assert torch.equal(out.t, io[f"train_{branch}_t"])
    assert torch.equal(out.x0, io[f"train_{branch}_x0"])
    assert torch.equal(out.dt, io[f"train_{branch}_dt"])
    assert out.n_estimator_calls == int(io[f"train_{branch}_n_estimator_calls"])
    assert _max_err(out.mu, io["train_mu"]) < FEA_ATOL
    expected = io[f"train_{branch}_loss"].item()
    assert abs(out.loss.item() - expected) <= LOSS_RTOL[branch] * abs(expected)


def test_gradients_and_checkpointing(case):
    """Gradients reach bridge, wns1 and the DiT (not ref_enc or the frozen text side), and gradient
    checkpointing gives the same loss and gradients."""
    _, model, io = case
    grads = []
    for use_ckpt in (False, True):
        model.zero_grad(set_to_none=True)
        out = _train_forward(model, io, "branch", use_grad_ckpt=use_ckpt)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    tops = {name.split(".")[0] for name in grads[0]}
    assert tops == {"bridge", "wns1", "cfm"}
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name
    model.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- LoRA

LORA_EXPORT = "s2_small_v3_lora_export.pth"
LORA_MERGED = "s2_small_v3_lora_merged.safetensors"


def test_lora_state_dict_of_the_default_model_is_the_official_export_layout(reference_file):
    with open(reference_file("s2_v3_lora_keys.json")) as f:
        expected = json.load(f)
    rank = next(v[0] for k, v in expected.items() if ".lora_A." in k)
    with torch.device("meta"):
        model = add_lora(SynthesizerTrnV3(SoVITSV3Config.for_version("v3")), rank)
    assert {k: list(v.shape) for k, v in lora_state_dict(model).items()} == expected


@pytest.fixture(scope="module")
def lora_export(reference_file):
    return load_gsv_file(reference_file(LORA_EXPORT))


def test_merging_the_official_lora_export(reference_file, lora_export):
    torch.set_num_threads(1)
    assert lora_export.header == b"03" and lora_export.version == "v3"
    model = small_model(reference_file, "v3")
    merge_lora_export(model, lora_export.state_dict, lora_export.lora_rank).eval()
    with safe_open(str(reference_file(LORA_MERGED)), "pt") as f:
        base = load_file(str(reference_file(f.metadata()["base"])))
    changed = load_file(str(reference_file(LORA_MERGED)))
    merged = model.state_dict()
    assert merged.keys() == base.keys()
    for key, value in merged.items():
        assert torch.allclose(value, changed.get(key, base[key]), rtol=0, atol=1e-6), key

    io = load_file(str(reference_file("s2_small_v3_io.safetensors")))
    with torch.no_grad():
        v_pred = model.cfm.estimator(io["est_xt"], io["est_prompt"], io["est_x_lens"], io["est_t"],
                                     io["est_dt"], io["est_mu"])
    assert _max_err(v_pred, io["lora_merged_est_v_pred"]) < OUT_ATOL
    fea, _ = model.decode_encp(io["dec_codes"], io["dec_text"], io["dec_refer"])
    assert _max_err(fea, io["lora_merged_dec_fea"]) < FEA_ATOL


def test_lora_forward_unmerged_and_export_round_trip(reference_file, lora_export, tmp_path):
    """A peft-wrapped model computes what the merged one does, trains only LoRA + the official
    trainable modules, and its export is the official one (same keys, fp16 values, header, rank)."""
    torch.set_num_threads(1)
    rank = lora_export.lora_rank
    model = add_lora(small_model(reference_file, "v3"), rank)
    model.load_state_dict(lora_export.state_dict, strict=False)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"ref_enc", "bridge", "wns1", "linear_mel", "cfm"}
    assert all(".lora_" in n for n, p in model.cfm.named_parameters() if p.requires_grad)

    io = load_file(str(reference_file("s2_small_v3_io.safetensors")))
    with torch.no_grad():
        v_pred = model.cfm.estimator(io["est_xt"], io["est_prompt"], io["est_x_lens"], io["est_t"],
                                     io["est_dt"], io["est_mu"])
        loss = _train_forward(model.eval(), io, "branch").loss
    assert _max_err(v_pred, io["lora_merged_est_v_pred"]) < OUT_ATOL
    merged = merge_lora_export(small_model(reference_file, "v3"), lora_export.state_dict, rank).eval()
    with torch.no_grad():
        assert torch.isclose(loss, _train_forward(merged, io, "branch").loss, rtol=1e-4)

    path = tmp_path / lora_export_name("exp", 2, 8, rank)
    export_cfm_lora(lora_state_dict(model), lora_export.config, path, sovits_export_info(2, 8), "v3", rank)
    assert path.name == f"exp_e2_s8_l{rank}.pth" and path.read_bytes()[:2] == b"03"
    ours = load_gsv_file(path)
    assert ours.lora_rank == rank and ours.info == lora_export.info and ours.version == "v3"
    assert ours.config["train"]["lora_rank"] == str(rank) and ours.config["model"]["version"] == "v3"
    assert ours.state_dict.keys() == lora_export.state_dict.keys()
    for key, value in ours.state_dict.items():
        assert value.dtype == torch.float16 and torch.equal(value, lora_export.state_dict[key]), key


@pytest.mark.parametrize("version", VERSIONS)
def test_full_export(reference_file, lora_export, tmp_path, version):
    model = small_model(reference_file, version)
    config = {**lora_export.config, "version": version,
              "model": {**lora_export.config["model"], "version": version}}
    path = tmp_path / "exp_e1_s4.pth"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_cfm_full(model.state_dict(), config, path, sovits_export_info(1, 4), version)
    assert [w.category for w in caught] == ([OfficialCompatibilityWarning] if version == "v4" else [])
    assert path.read_bytes()[:2] == b"PK"
    loaded = load_gsv_file(path)
    assert loaded.version == version and loaded.config["model"]["version"] == version
    assert loaded.state_dict.keys() == model.state_dict().keys()
    assert all(v.dtype == torch.float16 for v in loaded.state_dict.values() if v.is_floating_point())
    with pytest.raises(ValueError, match="merge"):
        export_cfm_full(lora_state_dict(add_lora(model, 4)), config, path, "x", version)


# ----------------------------------------------------------------------------- training smoke tests


def test_lora_training_step_under_bf16_autocast(reference_file):
    """One optimizer step of a LoRA model under bf16 autocast (fp32 text side) updates LoRA, bridge
    and wns1 only, as the official trainer's AdamW over requires_grad parameters does."""
    torch.set_num_threads(1)
    io = load_file(str(reference_file("s2_small_v3_io.safetensors")))
    model = add_lora(small_model(reference_file, "v3"), 4).train()
    for module in model.cfm.modules():  # non-zero B so that A gets a gradient too
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight, std=0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _train_forward(model, io, "nobranch", use_grad_ckpt=True)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    optimizer.step()
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"bridge", "wns1", "cfm"}
    changed_in_cfm = [n for n, p in model.cfm.named_parameters() if not torch.equal(p, before["cfm." + n])]
    assert changed_in_cfm and all(".lora_" in n for n in changed_in_cfm)


def test_synthesize_mel_continues_the_prompt(case):
    version, model, io = case
    prompt_mel = io["inf_prompt"]
    torch.manual_seed(0)
    mel = model.synthesize_mel(io["dec_codes"], io["dec_text"], io["dec_refer"], io["dec_codes"],
                               io["dec_text"], prompt_mel, sample_steps=2)
    expected_frames = int(io["dec_codes"].shape[-1] * 2 * model.frame_rates.feature_upsample)
    assert mel.shape == (1, prompt_mel.shape[1], expected_frames) and torch.isfinite(mel).all()
