"""Target mels of the v3/v4 SoVITS against the official loaders' values (reference mel_v3v4_fixture)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from gsv_accel.audio import (
    CFM_MEL_CONFIGS,
    CFMMelExtractor,
    SpectrogramExtractor,
    denormalize_cfm_mel,
    normalize_cfm_mel,
    resample_audio,
)

# README: float32 vs float64 deviate by up to 7e-4 on raw log-mels (bins near the clamp).
RAW_ATOL = 2e-3
NORM_ATOL = 3e-4
# The version's mel is computed from this stored waveform (v3: the official loader's 24 kHz audio).
SOURCE = {"v3": "wav24", "v4": "wav32"}


@pytest.fixture(scope="module")
def fixture(reference_file):
    return load_file(str(reference_file("mel_v3v4_fixture.safetensors")))


@pytest.mark.parametrize("version", ["v3", "v4"])
def test_mel_matches_official(fixture, version):
    wav = fixture[SOURCE[version]]
    raw = SpectrogramExtractor(CFM_MEL_CONFIGS[version]).mel(wav)
    assert raw.shape == fixture[f"mel_{version}_raw"].shape
    assert (raw - fixture[f"mel_{version}_raw"]).abs().max() < RAW_ATOL
    mel, frames = CFMMelExtractor(version)(wav)
    assert mel.shape == fixture[f"mel_{version}"].shape
    assert frames.tolist() == [wav.shape[-1] // CFM_MEL_CONFIGS[version].hop_length]
    assert (mel - fixture[f"mel_{version}"]).abs().max() < NORM_ATOL
    assert torch.allclose(denormalize_cfm_mel(normalize_cfm_mel(raw)), raw, atol=1e-5)


@pytest.mark.parametrize("version", ["v3", "v4"])
def test_batched_equals_one_by_one(fixture, version):
    wav = fixture[SOURCE[version]][0]
    extractor = CFMMelExtractor(version)
    pieces = [wav[1000:21000], wav[5000:40000], wav[3:12345]]
    batch = torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True)
    lengths = torch.tensor([len(p) for p in pieces])
    mel, frames = extractor(batch, lengths)
    for i, piece in enumerate(pieces):
        alone, n = extractor(piece)
        assert frames[i] == n[0]
        assert torch.allclose(mel[i, :, : frames[i]], alone[0], atol=1e-5)
        assert (mel[i, :, frames[i]:] == 0).all()  # padding frames, as the official collate pads


def test_v3_from_32k_audio_with_soxr(fixture):
    """soxr instead of the official ffmpeg resampling: the official length, close values."""
    wav32, wav24 = fixture["wav32"][0], fixture["wav24"][0]
    resampled = resample_audio(wav32.numpy(), 32000, 24000)
    assert resampled.shape[0] == wav24.shape[0] == wav32.shape[0] * 3 // 4
    assert abs(torch.from_numpy(resampled) - wav24).max() < 1e-3
    mel, frames = CFMMelExtractor("v3").from_32k([wav32.numpy()])
    assert mel.shape == fixture["mel_v3"].shape
    diff = (mel - fixture["mel_v3"]).abs()
    # Measured: mean 2.4e-4, max 0.028 (the resamplers differ, not the mel computation).
    assert diff.mean() < 1e-3 and diff.max() < 0.1
