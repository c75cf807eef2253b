"""Audio I/O and spectrograms against the official trainer's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from gsv_accel.audio import AudioReadError, SpectrogramConfig, SpectrogramExtractor, load_audio


def _max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def spectrogram_fixture(reference_file):
    return load_file(str(reference_file("spectrogram_fixture.safetensors")))


def test_linear_spectrogram_matches_official(spectrogram_fixture):
    extractor = SpectrogramExtractor()
    spec = extractor.linear(spectrogram_fixture["wav"])
    assert spec.shape == spectrogram_fixture["spec"].shape
    assert _max_rel_err(spec, spectrogram_fixture["spec"]) < 1e-4


def test_mel_matches_official_both_paths(spectrogram_fixture):
    extractor = SpectrogramExtractor()
    mel_from_spec = extractor.linear_to_mel(spectrogram_fixture["spec"])
    assert _max_rel_err(mel_from_spec, spectrogram_fixture["mel_from_spec"]) < 1e-4
    mel = extractor.mel(spectrogram_fixture["wav"])
    assert mel.shape == spectrogram_fixture["mel"].shape
    assert _max_rel_err(mel, spectrogram_fixture["mel"]) < 1e-4


def test_batched_equals_one_by_one_and_float64(spectrogram_fixture):
    extractor = SpectrogramExtractor()
    wav = spectrogram_fixture["wav"][0]
    batch = torch.stack([wav[:64000], wav[64000:128000]])
    together = extractor.mel(batch)
    assert together.shape == (2, 128, 64000 // 640)
    for i in range(2):
        torch.testing.assert_close(together[i], extractor.mel(batch[i]), rtol=1e-5, atol=1e-5)
    extractor64 = SpectrogramExtractor().to(torch.float64)
    mel64 = extractor64.mel(spectrogram_fixture["wav"].double())
    assert mel64.dtype == torch.float64
    assert _max_rel_err(mel64, spectrogram_fixture["mel"].double()) < 1e-4


def test_frames_follow_hop_length():
    cfg = SpectrogramConfig(sampling_rate=16000, filter_length=512, hop_length=128, win_length=512,
                            n_mel_channels=40)
    spec = SpectrogramExtractor(cfg).linear(torch.zeros(3, 128 * 50))
    assert spec.shape == (3, 257, 50)


def _sine(freq: float, rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_frequency(wav: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav))
    return float(np.argmax(spectrum) * rate / len(wav))


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_load_audio_resamples_and_mixes_to_mono(tmp_path, fmt):
    left, right = _sine(440.0, 44100, 1.0), _sine(440.0, 44100, 1.0) * 0.5
    path = tmp_path / f"stereo.{fmt}"
    soundfile.write(str(path), np.stack([left, right], axis=1), 44100)
    audio = load_audio(path, 32000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 32000) <= 1
    assert _dominant_frequency(audio, 32000) == pytest.approx(440.0, abs=2.0)
    # Mono mix of 0.5 and 0.25 amplitude channels peaks near 0.375.
    assert np.abs(audio[2000:-2000]).max() == pytest.approx(0.375, abs=0.03 if fmt == "ogg" else 0.005)


def test_load_audio_keeps_samples_at_native_rate(tmp_path):
    wav = _sine(300.0, 32000, 0.5)
    path = tmp_path / "mono.wav"
    soundfile.write(str(path), wav, 32000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, 32000), wav)


def test_load_audio_names_the_broken_file(tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    with pytest.raises(AudioReadError, match="broken.wav"):
        load_audio(broken, 32000)
    with pytest.raises(AudioReadError, match="missing.flac"):
        load_audio(tmp_path / "missing.flac", 32000)
