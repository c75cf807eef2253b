"""The v3 (BigVGAN v2) and v4 (HiFi-GAN) vocoders: files saved the official way load through
`load_vocoder`, give frames x hop samples, and wrong files are refused with the file and key named.
(Their outputs were compared with the official implementations outside the test suite.)"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

from gsv_accel.models.bigvgan import BigVGAN, BigVGANConfig, kaiser_sinc_lowpass
from gsv_accel.models.vocoder import VocoderFileError, load_vocoder, v4_vocoder

TINY_BIGVGAN = dict(num_mels=100, upsample_rates=[4, 2, 2], upsample_kernel_sizes=[8, 4, 4],
                    upsample_initial_channel=16,
                    resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3]] * 2)


def _save_v4(path, width=32, seed=0):
    torch.manual_seed(seed)
    model = v4_vocoder(100, width)
    model.remove_weight_norm()
    torch.save(model.state_dict(), path)  # as the official vocoder.pth: a plain, folded state dict
    return model.eval()


def test_v4_vocoder_round_trips_and_gives_frames_times_hop_samples_at_48k(tmp_path):
    reference = _save_v4(tmp_path / "vocoder.pth")
    model, rate = load_vocoder("v4", tmp_path / "vocoder.pth")
    assert rate == 48000 and model.hop_length == 480 and not model.training
    assert model.conv_post.bias is not None
    assert all(not k.endswith(("_g", "_v")) for k in model.state_dict())
    mel = torch.randn(1, 100, 7)
    with torch.no_grad():
        out = model(mel)
        assert out.shape == (1, 1, 7 * 480)
        assert torch.equal(out, reference(mel))


def test_v4_weight_norm_removal_keeps_the_function():
    torch.manual_seed(1)
    model = v4_vocoder(100, 32).eval()
    mel = torch.randn(1, 100, 3)
    with torch.no_grad():
        before = model(mel)
        model.remove_weight_norm()
        assert torch.allclose(model(mel), before, atol=1e-6)
    assert "ups.0.weight" in model.state_dict() and "conv_post.bias" in model.state_dict()


@pytest.mark.parametrize("content", ["not a state dict", {"weight": {"x": torch.zeros(1)}}])
def test_v4_refuses_other_files_naming_the_file_and_key(tmp_path, content):
    path = tmp_path / "s2Gv4.pth"
    torch.save(content, path)
    with pytest.raises(VocoderFileError, match="s2Gv4.pth") as err:
        load_vocoder("v4", path)
    assert isinstance(err.value, ValueError)


def test_v4_refuses_a_state_dict_with_a_missing_key(tmp_path):
    _save_v4(tmp_path / "vocoder.pth")
    state = torch.load(tmp_path / "vocoder.pth")
    del state["conv_post.bias"]
    torch.save(state, tmp_path / "vocoder.pth")
    with pytest.raises(VocoderFileError, match=r"vocoder.pth.*missing key 'conv_post.bias'"):
        load_vocoder("v4", tmp_path / "vocoder.pth")


def _save_bigvgan(folder, folded: bool, **overrides):
    folder.mkdir()
    cfg = BigVGANConfig.from_dict({**TINY_BIGVGAN, **overrides})
    torch.manual_seed(0)
    model = BigVGAN(cfg).eval()
    if folded:
        model.remove_weight_norm()
    # The official folder: config.json (with keys the generator ignores) + {"generator": state dict}.
    (folder / "config.json").write_text(json.dumps({**asdict(cfg), "hop_size": cfg.hop_length, "n_fft": 64}))
    torch.save({"generator": model.state_dict()}, folder / "bigvgan_generator.pt")
    return model


@pytest.mark.parametrize("folded", [False, True])
def test_v3_bigvgan_folder_round_trips_and_gives_frames_times_hop_samples(tmp_path, folded):
    reference = _save_bigvgan(tmp_path / "bigvgan", folded)
    assert any(k.endswith("weight_g") for k in reference.state_dict()) != folded
    assert "activation_post.upsample.filter" in reference.state_dict()
    assert "ups.0.0.weight_v" in BigVGAN(reference.cfg).state_dict()
    model, rate = load_vocoder("v3", tmp_path / "bigvgan")
    assert rate == 24000 and model.weight_norm_removed
    mel = torch.randn(2, 100, 5) - 5
    with torch.no_grad():
        out = model(mel)
        assert out.shape == (2, 1, 5 * 16) and out.abs().max() <= 1
        assert torch.allclose(out, reference(mel), atol=1e-6)
    same, _ = load_vocoder("v3", tmp_path / "bigvgan" / "bigvgan_generator.pt")
    assert same.cfg == model.cfg


def test_v3_variants_build_and_refuse_wrong_files(tmp_path):
    _save_bigvgan(tmp_path / "b", False, resblock="2", activation="snake", snake_logscale=False,
                  use_tanh_at_final=True, use_bias_at_final=True)
    model, _ = load_vocoder("v3", tmp_path / "b")
    assert model(torch.randn(1, 100, 3)).shape == (1, 1, 48)
    with pytest.raises(VocoderFileError, match="bigvgan_generator.pt: no such file"):
        load_vocoder("v3", tmp_path)
    torch.save({"generator": {"conv_pre.weight": torch.zeros(1)}}, tmp_path / "b" / "bigvgan_generator.pt")
    with pytest.raises(VocoderFileError, match="bigvgan_generator.pt.*key"):
        load_vocoder("v3", tmp_path / "b")
    with pytest.raises(ValueError, match="v3 and v4"):
        load_vocoder("v2", tmp_path / "b")


def test_kaiser_sinc_lowpass_has_unit_dc_gain_and_is_symmetric():
    taps = kaiser_sinc_lowpass(0.25, 0.3, 12).flatten()
    assert taps.shape == (12,) and torch.isclose(taps.sum(), torch.tensor(1.0))
    assert torch.allclose(taps, taps.flip(0))
