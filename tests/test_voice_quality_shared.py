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


def test_loading_the_validation_models_leaves_the_training_rng_alone():
    """Turning a validation metric on must not change a run's initial weights or random draws."""
    from pathlib import Path

    import torch

    from gsv_accel.models.vocoder import load_vocoder
    from gsv_accel.quality import QualityValidationConfig, VoiceQuality

    demo = Path(__file__).resolve().parents[1] / "demo"
    torch.manual_seed(7)
    state = torch.get_rng_state()
    VoiceQuality.from_config(QualityValidationConfig(speaker_model=str(demo / "tiny_sv" /
                                                                       "eres2netv2_tiny.safetensors")), "cpu")
    load_vocoder("v4", demo / "tiny_vocoder_v4" / "vocoder.pth")
    assert torch.equal(torch.get_rng_state(), state)
