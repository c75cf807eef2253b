"""Per-row feature stages of the preparation and the column schema of a prepared dataset.

* `text_features`: phones, phone ids, word2ph and normalised text of one `.list` row (as the official
  `1-get-text.py`, with the gsv_accel frontend);
* `audio_features`: the official int16 loudness mix at 32 kHz (`official_int16`, what
  `2-get-hubert-wav32k.py` writes to `5-wav32k`) and the 16 kHz HuBERT input (`hubert_input`), after the
  official filters (`check_waveform`);
* `stage_features` / `SAVED_COLUMNS`: the `datasets.Features` after each stage and the saved columns.

The official preparation constants live here too. The model stages (HuBERT, S2, BERT, speaker
verification) are in `model_stages.py`; the speaker-verification stage reads the stored `wav` column
(`sv_input`), which is exactly the `5-wav32k` audio the official `2-get-sv.py` reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from ..audio import AudioReadError, SpectrogramConfig, load_audio
from .dataset import spectrogram_frames

# Official preparation constants (2-get-hubert-wav32k.py and the S2 loader's length filter).
SAMPLING_RATE = 32000
SSL_SAMPLING_RATE = 16000
MIX_MAXX = 0.95
MIX_ALPHA = 0.5
WAV_INT16_SCALE = 32768.0
HUBERT_INPUT_SCALE = 1145.14
MAX_PEAK = 2.2
MIN_DURATION = 0.6
MAX_DURATION = 54.0
# Peak below one int16 step: nothing to normalise (the official code would divide by zero).
SILENCE_PEAK = 1.0 / 32768.0
# Bump when the features computed from the same inputs change.
# 2: ja/ko/yue/auto lines are phonemized (they were rejected before).
PIPELINE_VERSION = 2


def text_features(row: dict[str, Any], version: str, english_in_zh: str) -> dict[str, Any]:
    """Phones, ids, word2ph and normalised text of one row (a `datasets.map` function).

    The frontend's language runs are kept in `segments` (JSON: [lang, norm_text, word2ph, n_phones]
    per run) for the BERT stage, which gives zh runs BERT features and other runs zeros.
    """
    from ..text import UnknownPhoneError, clean_text_segments, joined_word2ph, phones_to_ids

    out: dict[str, Any] = {"phones": [], "phone_ids": np.zeros(0, np.int16), "word2ph": np.zeros(0, np.int16),
                           "text": "", "segments": "[]", "reject_code": "", "reject_reason": ""}
    text = row["raw_text"].replace("%", "-").replace("￥", ",")
    try:
        segments = clean_text_segments(text, row["lang"], version, english_in_zh=english_in_zh)
        phones = [p for seg in segments for p in seg.phones]
        ids = phones_to_ids(phones, version)
    except UnknownPhoneError as err:
        out.update(reject_code="unknown_phones", reject_reason=f"line {row['line']}: {err}")
        return out
    except (ValueError, KeyError, IndexError) as err:  # TextFrontendError is a ValueError
        out.update(reject_code="text", reject_reason=f"line {row['line']}: {type(err).__name__}: {err}")
        return out
    # As `clean_text` joins them: word2ph only describes all-Chinese (or all-Cantonese) lines.
    word2ph = joined_word2ph(segments) or []
    out.update(phones=phones, phone_ids=np.asarray(ids, np.int16), word2ph=np.asarray(word2ph, np.int16),
               text="".join(seg.norm_text for seg in segments),
               segments=json.dumps([[s.lang, s.norm_text, s.word2ph, len(s.phones)] for s in segments],
                                   ensure_ascii=False))
    return out


def loudness_mix(audio: np.ndarray, peak: float, scale: float) -> np.ndarray:
    """The official mix of peak-normalised and original audio: half at 0.95 full scale, half as is."""
    return audio / np.float32(peak) * (MIX_MAXX * MIX_ALPHA * scale) + ((1 - MIX_ALPHA) * scale) * audio


def official_int16(audio: np.ndarray, peak: float) -> np.ndarray:
    """The int16 waveform the official script writes to 5-wav32k (clipped instead of wrapping)."""
    mix = loudness_mix(audio, peak, WAV_INT16_SCALE)
    return np.trunc(np.clip(mix, -32768, 32767)).astype(np.int16)


def hubert_input(audio: np.ndarray, peak: float) -> np.ndarray:
    """The 16 kHz HuBERT input of the official script (mix at scale 1145.14, soxr HQ resampling)."""
    mix = loudness_mix(audio, peak, HUBERT_INPUT_SCALE).astype(np.float32)
    out = soxr.resample(mix, SAMPLING_RATE, SSL_SAMPLING_RATE, quality="HQ").astype(np.float32)
    target = math.ceil(len(mix) * SSL_SAMPLING_RATE / SAMPLING_RATE)
    if len(out) < target:
        out = np.pad(out, (0, target - len(out)))
    return out[:target]


def sv_input(wav: np.ndarray) -> np.ndarray:
    """The speaker-verification input of the official `2-get-sv.py`: the int16 `5-wav32k` mix (`wav`)
    as `torchaudio.load` returns it, int16 / 32768 in float32 (exact)."""
    return np.asarray(wav, np.float32) / np.float32(WAV_INT16_SCALE)


def check_waveform(audio: np.ndarray, line: int, where: str) -> tuple[str, str, float]:
    """(reject code, reason, peak) for a 32 kHz waveform; code "" when usable."""
    if audio.size == 0:
        return "empty", f"line {line}: {where} is empty: it holds no audio samples", 0.0
    if not np.isfinite(audio).all():
        return "unreadable", f"line {line}: {where} has NaN or infinite samples", 0.0
    peak = float(np.abs(audio).max())
    duration = audio.size / SAMPLING_RATE
    if peak > MAX_PEAK:
        return "peak", f"line {line}: {where}: peak {peak:.3f} > {MAX_PEAK} (official filter)", peak
    if peak < SILENCE_PEAK:
        return "silent", f"line {line}: {where} is silent (peak {peak:.2e})", peak
    if duration <= MIN_DURATION:
        return "too_short", f"line {line}: {where} lasts {duration:.3f} s, not over {MIN_DURATION} s", peak
    if duration >= MAX_DURATION:
        return "too_long", f"line {line}: {where} lasts {duration:.1f} s, not under {MAX_DURATION} s", peak
    return "", "", peak


def empty_file(file: Path) -> bool:
    """A 0-byte file: empty rather than unreadable (no audio reader can open it; FLAC encoders even
    write 0 bytes for 0 samples). A header with 0 samples reads as no samples (`check_waveform`)."""
    try:
        return file.stat().st_size == 0
    except OSError:
        return False


def empty_file_reason(line: int, file: Path) -> str:
    return f"line {line}: {file} is empty: 0 bytes, no audio samples"


def audio_features(row: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Official int16 waveform, HuBERT input and length of one row (a `datasets.map` function);
    `spec`: the `SpectrogramConfig` fields (plain data, so that the function can be hashed)."""
    out: dict[str, Any] = {"wav": np.zeros(0, np.int16), "hubert_in": np.zeros(0, np.float32),
                           "num_samples": 0, "duration": 0.0, "spec_frames": 0,
                           "reject_code": row["reject_code"], "reject_reason": row["reject_reason"]}
    if out["reject_code"]:
        return out
    file = Path(row["file"])
    if not file.exists():
        out.update(reject_code="missing", reject_reason=f"line {row['line']}: audio file {file} not found")
        return out
    if empty_file(file):
        out.update(reject_code="empty", reject_reason=empty_file_reason(row["line"], file))
        return out
    try:
        audio = load_audio(file, SAMPLING_RATE)
    except AudioReadError as err:
        out.update(reject_code="unreadable", reject_reason=f"line {row['line']}: {err}")
        return out
    code, reason, peak = check_waveform(audio, row["line"], str(file))
    if code:
        out.update(reject_code=code, reject_reason=reason)
        return out
    out.update(wav=official_int16(audio, peak), hubert_in=hubert_input(audio, peak),
               num_samples=int(audio.size), duration=audio.size / SAMPLING_RATE,
               spec_frames=spectrogram_frames(int(audio.size), SpectrogramConfig(**spec)))
    return out


def stage_features(*stages: str) -> Any:
    """`datasets.Features` of the rows after the given stages (types fixed, never inferred)."""
    import datasets as hfd

    int16s, f16s = hfd.List(hfd.Value("int16")), hfd.List(hfd.Value("float16"))
    columns = {
        "entry": {"line": hfd.Value("int32"), "path": hfd.Value("string"), "file": hfd.Value("string"),
                  "name": hfd.Value("string"), "speaker": hfd.Value("string"), "lang": hfd.Value("string"),
                  "raw_text": hfd.Value("string")},
        "text": {"text": hfd.Value("string"), "phones": hfd.List(hfd.Value("string")), "phone_ids": int16s,
                 "word2ph": int16s, "segments": hfd.Value("string"), "reject_code": hfd.Value("string"),
                 "reject_reason": hfd.Value("string")},
        "audio": {"wav": int16s, "hubert_in": hfd.List(hfd.Value("float32")),
                  "num_samples": hfd.Value("int32"), "duration": hfd.Value("float32"),
                  "spec_frames": hfd.Value("int32")},
        "ssl": {"ssl": f16s, "ssl_frames": hfd.Value("int32")},
        "semantic": {"semantic": int16s},
        "bert": {"bert": f16s},
        "sv": {"sv_emb": hfd.List(hfd.Value("float32"))},
    }
    merged: dict[str, Any] = {}
    for stage in stages:
        merged.update(columns[stage])
    if "ssl" in stages:
        merged.pop("hubert_in", None)
    return hfd.Features(merged)


# Columns of a saved dataset, in order (the optional ones only when computed).
SAVED_COLUMNS = ("name", "speaker", "lang", "text", "phones", "phone_ids", "word2ph", "path", "line",
                 "duration", "num_samples", "spec_frames", "wav", "ssl_frames", "ssl", "semantic", "bert",
                 "sv_emb")
