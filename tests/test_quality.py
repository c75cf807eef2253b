"""Known answers of the voice-quality metrics (`gsv_accel.quality`): speaker similarity and the
character / word error rate, and the tiny ASR model's plumbing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gsv_accel.audio import load_audio
from gsv_accel.config import ConfigError
from gsv_accel.quality import (
    SpeakerSimilarity,
    SpeechRecognizer,
    edit_distance,
    error_count,
    normalise_text,
    text_tokens,
)

REPO = Path(__file__).resolve().parents[1]
DEMO_SV = REPO / "demo" / "tiny_sv" / "eres2netv2_tiny.safetensors"
WAVS = REPO / "demo" / "data" / "wavs"


def _wave(name: str) -> torch.Tensor:
    return torch.from_numpy(load_audio(WAVS / name, 32000))


@pytest.fixture(scope="module")
def speaker_sim() -> SpeakerSimilarity:
    return SpeakerSimilarity.from_file(DEMO_SV)


def test_an_utterance_is_its_own_speaker(speaker_sim):
    wave = _wave("en_003.flac")
    assert speaker_sim.similarity(wave, wave.clone()) == pytest.approx(1.0, abs=1e-5)


def test_two_different_demo_voices_are_less_similar_than_an_utterance_with_itself(speaker_sim):
    # The demo corpus speaks English with one espeak-ng voice and Mandarin with another. The tiny
    # speaker model has random weights: it separates them only slightly (about 0.999 across voices), so
    # this checks the direction, not a margin a real model would give.
    for english, mandarin in (("en_001.flac", "zh_001.flac"), ("en_002.flac", "zh_002.flac")):
        english, mandarin = _wave(english), _wave(mandarin)
        self_sim = speaker_sim.similarity(english, english.clone())
        assert speaker_sim.similarity(mandarin, english) < self_sim - 1e-4


def test_the_real_embedding_is_cached_by_key(speaker_sim):
    real, generated = _wave("en_004.flac"), _wave("en_005.flac")
    first = speaker_sim.similarity(generated, real, key="en_004")
    # The cache answers for the key, whatever real audio is passed again.
    assert speaker_sim.similarity(generated, torch.zeros(32000), key="en_004") == first


def test_a_missing_or_wrong_speaker_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="validation.speaker_model"):
        SpeakerSimilarity.from_file(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.pt"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="validation.speaker_model=.*bad.pt"):
        SpeakerSimilarity.from_file(bad)


def test_normalisation_folds_case_punctuation_and_full_width_forms():
    assert normalise_text("Ｈｅｌｌｏ，  World！") == "hello world"
    assert text_tokens("今天天气很好，我们去公园。") == list("今天天气很好我们去公园")
    assert text_tokens("The library closes at nine o'clock.") == \
        ["the", "library", "closes", "at", "nine", "o", "clock"]
    # Mixed: Chinese by characters, English words as words; full-width digits become ASCII.
    assert text_tokens("我用ＧＰＴ-SoVITS训练了３个模型") == \
        ["我", "用", "gpt", "sovits", "训", "练", "了", "3", "个", "模", "型"]


def test_error_rate_of_a_reference_with_itself_is_zero():
    for text in ("今天天气很好，我们去公园散步吧。", "Please put the blue books back on the second shelf."):
        count = error_count(text, text)
        assert count.errors == 0 and count.rate == 0.0
    # Normalised the same way: case, punctuation and full-width forms are not errors.
    assert error_count("Please put the BLUE books back.", "please put the blue books back").rate == 0.0
    assert error_count("妈妈做的饺子特别好吃。", "妈妈做的饺子特别好吃.").rate == 0.0


def test_error_rate_with_known_edits_is_the_right_fraction():
    # Chinese by characters: 1 substitution (天 -> 田) + 1 deletion (吧) in 14 characters.
    count = error_count("今天天气很好，我们去公园散步吧。", "今田天气很好我们去公园散步")
    assert (count.errors, count.reference_tokens) == (2, 14)
    assert count.rate == pytest.approx(2 / 14)
    # English by words: 1 substitution (blue -> red) + 1 insertion (all) in 10 words.
    count = error_count("Please put the blue books back on the second shelf.",
                        "please put all the red books back on the second shelf")
    assert (count.errors, count.reference_tokens) == (2, 10)
    assert count.rate == pytest.approx(0.2)
    # Insertions can make the rate exceed 1; an empty transcript deletes everything.
    assert error_count("你好", "你好你好你好").rate == pytest.approx(2.0)
    assert error_count("good morning", "").rate == 1.0


def test_edit_distance_counts_substitutions_deletions_and_insertions():
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance([], list("abc")) == 3 and edit_distance(list("abc"), []) == 3


def test_tiny_asr_transcribes_through_the_plumbing():
    asr = SpeechRecognizer(REPO / "demo" / "tiny_asr")
    assert asr.kind == "seq2seq" and asr.sampling_rate == 16000
    transcript = asr.transcribe(_wave("zh_001.flac"), 32000, language="zh", max_new_tokens=8)
    assert isinstance(transcript, str)
    again = asr.transcribe(_wave("zh_001.flac"), 32000, language="zh", max_new_tokens=8)
    assert again == transcript  # greedy decoding: deterministic


def test_a_folder_that_is_not_an_asr_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="validation.asr_model"):
        SpeechRecognizer(tmp_path / "missing")
    with pytest.raises(ConfigError, match="not a transformers speech-recognition folder"):
        SpeechRecognizer(REPO / "demo" / "tiny_sv")
