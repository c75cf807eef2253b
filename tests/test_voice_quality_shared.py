"""`VoiceQuality`, the validation metrics the S2 and v3/v4 recipes share: off by default, scores one
utterance with the configured models and turns sums over utterances into the metrics."""

from __future__ import annotations

from pathlib import Path

import torch

from gsv_accel.quality import QualityValidationConfig, VoiceQuality

TINY_SV = Path(__file__).resolve().parents[1] / "demo" / "tiny_sv" / "eres2netv2_tiny.safetensors"


def test_without_models_nothing_is_measured():
    quality = VoiceQuality.from_config(QualityValidationConfig(), "cpu")
    assert quality.metric_names == ()
    score = quality.score(torch.zeros(3200), torch.zeros(3200), 32000, key="a", text="hi", lang="en")
    assert score.metrics == {} and score.sums == (0.0, 0.0, 0.0) and score.transcript is None
    assert quality.summarise(torch.zeros(3), torch.tensor(2.0)) == {}


def test_speaker_similarity_of_an_utterance_with_itself_is_one():
    quality = VoiceQuality.from_config(QualityValidationConfig(speaker_model=str(TINY_SV)), "cpu")
    assert quality.metric_names == ("val/speaker_sim",)
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1
    score = quality.score(wave, wave, 32000, key="a", text="", lang=None)
    similarity = score.metrics["val/speaker_sim"]
    assert abs(similarity - 1) < 1e-6 and score.sums[0] == similarity
    result = quality.summarise(torch.tensor([1.5, 0.0, 0.0]), torch.tensor(2.0))
    assert result == {"val/speaker_sim": 0.75}
