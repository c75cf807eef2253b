"""Voice-quality metrics of generated validation audio: speaker similarity and intelligibility.

* `SpeakerSimilarity`: cosine similarity between the ERes2NetV2 speaker embeddings (`SpeakerEncoder.
  embed_32k`, the model v2Pro already uses) of a generated utterance and of its real recording. 1 means
  the same embedding; the embeddings of the real recordings are cached (they never change).
* `SpeechRecognizer`: a local transformers speech-recognition folder (Whisper-like encoder-decoder:
  `AutoProcessor` + `AutoModelForSpeechSeq2Seq`, greedy decoding; or CTC: `AutoModelForCTC`, argmax),
  loaded with `local_files_only=True` (nothing is downloaded).
* `error_count` / `text_tokens`: the error rate of a transcript against the reference text. Both are
  normalised the same way (`normalise_text`: NFKC, so full-width forms become their ASCII forms; lower
  case; punctuation and symbols removed), then split into tokens: every CJK character is one token,
  every run of other letters and digits between spaces one word. Chinese is therefore scored by
  characters and English by words, and a Chinese line with English words by both. The rate is
  edits (substitutions + deletions + insertions) / reference tokens, summed over utterances before
  dividing (corpus CER/WER, as speech-recognition scoring reports it), so it can exceed 1.

The edit distance is written here (a dozen lines over token lists of tens of items): `jiwer`, the
maintained library for it, needs `rapidfuzz`, a compiled extension, which is more than this needs.
"""

from __future__ import annotations

import logging
import os
import re
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ConfigError, ValidationConfig, require_path

logger = logging.getLogger(__name__)

# CJK ideographs (unified, extensions, compatibility) and kana: one token per character.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


# ------------------------------------------------------------------------------------ text error rate


def normalise_text(text: str) -> str:
    """NFKC (full-width letters, digits and punctuation -> ASCII), lower case, punctuation and symbols
    (Unicode categories P*, S*) replaced by spaces, runs of spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(text.split())


def text_tokens(text: str) -> list[str]:
    """Scoring units of `text` after `normalise_text`: each CJK character, each other word."""
    tokens: list[str] = []
    for word in normalise_text(text).split():
        run = ""
        for ch in word:
            if _CJK.match(ch):
                if run:
                    tokens.append(run)
                    run = ""
                tokens.append(ch)
            else:
                run += ch
        if run:
            tokens.append(run)
    return tokens


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance between two token lists (substitutions, deletions, insertions cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class ErrorCount:
    """Edits and reference tokens of one utterance (sum these over utterances, then `rate`)."""

    errors: int
    reference_tokens: int

    @property
    def rate(self) -> float:
        if self.reference_tokens == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_tokens


def error_count(reference: str, hypothesis: str) -> ErrorCount:
    """Character (CJK) / word (other) edits of `hypothesis` against `reference` (see the module doc)."""
    ref, hyp = text_tokens(reference), text_tokens(hypothesis)
    return ErrorCount(edit_distance(ref, hyp), len(ref))


# ------------------------------------------------------------------------------------ speaker similarity


class SpeakerSimilarity:
    """Cosine similarity of ERes2NetV2 embeddings of 32 kHz waveforms (generated vs real).

    `similarity(generated, real, key=...)` caches the real utterance's embedding under `key`."""

    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self._real: dict[str, torch.Tensor] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: torch.device | str = "cpu",
                  key: str = "validation.speaker_model") -> SpeakerSimilarity:
        """Load the speaker model file (ConfigError naming `key` when it is missing or not one)."""
        from .models.sv import SpeakerCheckpointError, SpeakerEncoder

        path = require_path(key, path, "file")
        try:
            encoder = SpeakerEncoder.from_pretrained(path, device=device)
        except SpeakerCheckpointError as err:
            raise ConfigError(f"{key}={path}: {err}") from err
        return cls(encoder)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.encoder.parameters())

    def embed(self, wave_32k: torch.Tensor) -> torch.Tensor:
        """(N,) float waveform at 32 kHz -> (D,) embedding on the model's device."""
        return self.encoder.embed_32k([wave_32k.float()])[0]

    def similarity(self, generated: torch.Tensor, real: torch.Tensor, key: str | None = None) -> float:
        """Cosine similarity in [-1, 1] of the two waveforms' embeddings (`key`: cache the real one)."""
        real_emb = self._real.get(key) if key is not None else None
        if real_emb is None:
            real_emb = self.embed(real)
            if key is not None:
                self._real[key] = real_emb
        return cosine(self.embed(generated), real_emb)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two vectors, in float64 (so that a vector with itself gives 1 to 1e-12)."""
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0,
                                                       eps=1e-12))


# ------------------------------------------------------------------------------------ speech recognition


class SpeechRecognizer:
    """A local transformers ASR model folder: Whisper-like (seq2seq, greedy) or CTC (argmax).

    `transcribe(wave, sampling_rate, language=None, max_new_tokens=None)` resamples to the processor's
    rate and returns the text. For Whisper, `language` ("zh", "en") is passed when the model knows it."""

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu",
                 key: str = "validation.asr_model") -> None:
        from transformers import AutoConfig, AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoProcessor

        path = require_path(key, path, "folder")
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            if getattr(config, "is_encoder_decoder", False):
                self.kind = "seq2seq"
                model = AutoModelForSpeechSeq2Seq.from_pretrained(path, local_files_only=True)
            else:
                self.kind = "ctc"
                model = AutoModelForCTC.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"{key}={path}: not a transformers speech-recognition folder (a Whisper-like "
                              f"seq2seq or a CTC model with its processor): {err}") from err
        self.path = Path(path)
        self.model = model.to(device).eval().requires_grad_(False)
        extractor = getattr(self.processor, "feature_extractor", self.processor)
        self.sampling_rate = int(getattr(extractor, "sampling_rate", 16000))
        generation = getattr(self.model, "generation_config", None)
        self.languages = set(getattr(generation, "lang_to_id", None) or {})
        self.max_length = int(getattr(generation, "max_length", None) or 448)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def transcribe(self, wave: torch.Tensor, sampling_rate: int, language: str | None = None,
                   max_new_tokens: int | None = None) -> str:
        """The transcript of one (N,) float waveform (greedy decoding, at most `max_new_tokens`)."""
        from .models.sv.features import sinc_resample

        wave = sinc_resample(wave.detach().float().cpu(), sampling_rate, self.sampling_rate)
        inputs = self.processor(wave.numpy(), sampling_rate=self.sampling_rate, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        inputs = {k: v.to(self.device, dtype=dtype if v.is_floating_point() else v.dtype)
                  for k, v in inputs.items() if torch.is_tensor(v)}
        if self.kind == "ctc":
            logits = self.model(**inputs).logits
            return self.processor.batch_decode(logits.argmax(dim=-1))[0]
        kwargs = {"do_sample": False, "num_beams": 1}
        if max_new_tokens is not None:
            kwargs["max_new_tokens"] = max(1, min(max_new_tokens, self.max_length - 4))
        if language is not None and f"<|{language}|>" in self.languages:
            kwargs.update(language=language, task="transcribe")
        from transformers.utils import logging as hf_logging

        # Whisper's generate warns at every call that max_new_tokens overrides its max_length.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            ids = self.model.generate(**inputs, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0]


# ------------------------------------------------------------------------------------ recipe helper


@dataclass
class QualityValidationConfig(ValidationConfig):
    """The shared `validation` section plus the voice-quality metrics' models (null = metric off).

    `speaker_model`: an ERes2NetV2 state dict (.ckpt/.pth/.safetensors, e.g. GPT-SoVITS'
    `pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt`) -> `val/speaker_sim`.
    `asr_model`: a local transformers speech-recognition folder (Whisper-like or CTC) -> `val/cer`."""

    speaker_model: str | None = None
    asr_model: str | None = None


@dataclass
class QualityScore:
    """One utterance's voice-quality metrics, transcript, and what the recipe sums over utterances:
    `sums` = (speaker similarity, ASR edits, reference tokens), zeros for metrics that are off."""

    metrics: dict[str, float] = field(default_factory=dict)
    transcript: str | None = None
    sums: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: dict[str, float] = field(default_factory=dict)


class VoiceQuality:
    """The optional voice-quality metrics of a recipe's validation (`val/speaker_sim`, `val/cer`),
    shared by the recipes that generate audio: `from_config` loads the configured models once,
    `score` measures one generated utterance against its real recording and text, `summarise` turns the
    sums over all utterances (and processes) into the metrics."""

    def __init__(self, speaker_sim: SpeakerSimilarity | None = None,
                 asr: SpeechRecognizer | None = None) -> None:
        self.speaker_sim = speaker_sim
        self.asr = asr

    @classmethod
    def from_config(cls, vc: QualityValidationConfig, device: torch.device | str) -> VoiceQuality:
        """The models of `validation.speaker_model` / `asr_model`, loaded on `device`; bad paths or
        files raise ConfigError (before anything is written). Built on a forked RNG: constructing a
        module draws initial weights from the global generator, and turning a validation metric on
        must not change the training run's random stream (its models' initial weights)."""
        devices = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return cls._load(vc, device)

    @classmethod
    def _load(cls, vc: QualityValidationConfig, device: torch.device | str) -> VoiceQuality:
        speaker_sim = asr = None
        if vc.speaker_model:
            started = time.perf_counter()
            speaker_sim = SpeakerSimilarity.from_file(vc.speaker_model, device)
            logger.info("validation: speaker similarity with %s (%d parameters, loaded in %.2f s)",
                        vc.speaker_model, speaker_sim.num_parameters, time.perf_counter() - started)
        if vc.asr_model:
            started = time.perf_counter()
            asr = SpeechRecognizer(vc.asr_model, device)
            logger.info("validation: speech recognition with %s (%s, %d parameters, loaded in %.2f s)",
                        vc.asr_model, asr.kind, asr.num_parameters, time.perf_counter() - started)
        return cls(speaker_sim, asr)

    @property
    def metric_names(self) -> tuple[str, ...]:
        return (*(("val/speaker_sim",) if self.speaker_sim is not None else ()),
                *(("val/cer",) if self.asr is not None else ()))

    def score(self, generated: torch.Tensor, real: torch.Tensor, sampling_rate: int, *, key: str, text: str,
              lang: str | None) -> QualityScore:
        """Metrics of one generated (N,) waveform against the real one (both at `sampling_rate`, which
        must be 32 kHz for the speaker model) and the reference `text`; `key` caches the real one's
        speaker embedding."""
        result = QualityScore()
        similarity = errors = tokens = 0.0
        if self.speaker_sim is not None:
            started = time.perf_counter()
            similarity = self.speaker_sim.similarity(generated, real, key=key)
            result.metrics["val/speaker_sim"] = similarity
            result.seconds["speaker similarity"] = time.perf_counter() - started
        if self.asr is not None:
            started = time.perf_counter()
            # A transcript much longer than the text is all errors anyway: bound the decoding.
            bound = 2 * len(text) + 16
            result.transcript = self.asr.transcribe(generated, sampling_rate, language=lang,
                                                    max_new_tokens=bound)
            count = error_count(text, result.transcript)
            result.metrics["val/cer"] = count.rate
            errors, tokens = count.errors, count.reference_tokens
            result.seconds["speech recognition"] = time.perf_counter() - started
        result.sums = (similarity, errors, tokens)
        return result

    def summarise(self, sums: torch.Tensor, utterances: torch.Tensor) -> dict[str, float]:
        """The metrics from the sums of `score(...).sums` over all utterances (3 values) and their count."""
        result = {}
        if self.speaker_sim is not None:
            result["val/speaker_sim"] = float(sums[0] / utterances.clamp(min=1))
        if self.asr is not None:
            result["val/cer"] = float(sums[1] / sums[2].clamp(min=1))
        return result
