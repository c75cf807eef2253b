"""`gsv-accel prepare`: a GPT-SoVITS `.list` file -> a prepared dataset (Arrow, `datasets.DatasetDict`).

Each line `wav_path|speaker|lang|text` (UTF-8; relative paths are resolved against the list's folder)
becomes one row with the features the official preparation scripts compute
(`prepare_datasets/1-get-text.py`, `2-get-hubert-wav32k.py`, `3-get-semantic.py`):

* text: the gsv_accel frontend's phones, phone ids (`version` symbol table), word2ph and normalised text
  (`%` -> `-` and `￥` -> `,` first, as the official script does). English words in zh lines follow
  `english_in_zh`: "phonemize" (default: as official v2 inference reads such lines), "drop" (what
  the official `1-get-text.py` does, reproducing its training data) or "error" (reject the line);
* audio at 32 kHz (mono; other rates resampled by `load_audio`), kept as the official int16 loudness
  mix `x / peak * (0.95 * 0.5 * 32768) + 0.5 * 32768 * x` (truncated toward zero like numpy's
  `astype`, but clipped to the int16 range first where the official code would wrap around);
* HuBERT features: the same mix at scale 1145.14 instead of 32768, resampled to 16 kHz (soxr HQ,
  length ceil(n / 2) as librosa gives), fed to the model *without* the feature extractor's
  normalisation (as the official script calls the model directly); `last_hidden_state`, (D, T) at
  50 Hz;
* with `s2_pretrained`: the 25 Hz semantic codes `extract_latent(ssl)` of the S2 model, computed from
  the stored (fp16) features so that they can be reproduced from the dataset alone;
* with `bert_dir`: BERT features (hidden size x n_phones) for lines with Chinese: for each Chinese
  run the third-to-last hidden layer, [CLS]/[SEP] dropped, each character's vector repeated word2ph
  times; zeros for English runs (as official v2 inference does for mixed lines). Rows without
  Chinese store an empty list, read back as zeros.

HuBERT runs batched. Padding must not change the features: HuBERT base's first convolution is
followed by a GroupNorm over the whole time axis, so zero padding would shift its statistics. Here
the first layer's GroupNorm is computed over each item's valid frames only (the later convolutions
have no padding, so their valid outputs see only valid inputs), and the transformer runs with an
attention mask (its positional convolution sees zeros beyond the end either way, because the
encoder zeroes padded frames). Batched features therefore equal one-by-one features up to float
rounding (tested). Batches are formed from length-sorted items to keep padding small.

Bad input never stops the job: every rejected line is written with its reason to `rejected.tsv` in
the output folder and counted on stdout (see `REJECT_CODES`). Only when nothing usable is left does
the job fail. The dataset is built in a temporary folder next to the output and renamed into place
when complete; an existing output is replaced only then, so an interrupted run leaves the previous
dataset intact (a run killed exactly between the two renames leaves it as `.<name>.old-*`, which
the next run restores). Run one job per output folder at a time: a new run removes temporary
folders that an earlier, interrupted one left beside the output.

Caching: the metadata stores a fingerprint of everything the features depend on (the list's bytes,
size and modification time of every audio file, size/mtime of the model files, the settings and the
pipeline version) and, separately, of the split settings. A re-run with the same fingerprints does
nothing; if only the split settings changed, the stored rows are re-split without recomputing
features. This was chosen over `datasets`' fingerprint cache, which keys on the map function and the
input table: the table holds file *paths*, so an audio file edited in place would silently reuse
stale features, and an in-memory input table is not cached at all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch

from .. import __version__
from ..audio import AudioReadError, SpectrogramConfig, load_audio
from .dataset import FORMAT_NAME, FORMAT_VERSION, META_FILE, read_meta, spectrogram_frames

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
BERT_LAYER = -3
# Bump when the features computed from the same inputs change.
PIPELINE_VERSION = 1
REJECTED_FILE = "rejected.tsv"

REJECT_CODES = {
    "format": "malformed line (wrong number of fields, or a field that cannot be parsed)",
    "encoding": "line is not valid UTF-8",
    "language": "unsupported language",
    "duplicate": "another line has the same file name",
    "empty_text": "no text",
    "text": "the text frontend could not convert the text",
    "unknown_phones": "phones outside the symbol table",
    "missing": "audio file not found",
    "unreadable": "file cannot be read (safely), or is corrupt",
    "empty": "audio has no samples",
    "silent": "audio is silent",
    "too_short": f"audio not longer than {MIN_DURATION} s",
    "too_long": f"audio not shorter than {MAX_DURATION} s",
    "peak": f"peak above {MAX_PEAK}",
    "features": "HuBERT features are not finite",
    "bert": "BERT features do not fit the phones",
    "semantic": "semantic codes missing or inconsistent",
    "ssl": "HuBERT features missing or inconsistent",
}


class PrepareError(Exception):
    """The job cannot produce a dataset (bad arguments, unusable model, nothing usable left)."""


@dataclass
class Reject:
    line: int
    path: str
    code: str
    reason: str


@dataclass
class PrepareResult:
    out_dir: Path
    counts: dict[str, int]
    rejected: list[Reject] = field(default_factory=list)
    reused: bool = False


# --------------------------------------------------------------------------- list parsing


def parse_list(list_path: Path) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Lines of a `.list` file -> entries (line, path, file, name, speaker, lang, raw_text) and rejects."""
    from ..text import TextFrontendError, normalize_language

    try:
        raw = list_path.read_bytes()
    except OSError as err:
        raise PrepareError(f"cannot read the list file {list_path}: {err.strerror or err}") from err
    base = list_path.parent
    entries: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    seen: dict[str, int] = {}
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        raw_line = raw_line.rstrip(b"\r")
        if number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
            raw_line = raw_line[3:]
        if not raw_line.strip():
            continue
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as err:
            rejects.append(Reject(number, "", "encoding", f"line {number}: not valid UTF-8 ({err.reason} at "
                                  f"byte {err.start})"))
            continue
        fields = line.split("|")
        if len(fields) != 4:
            rejects.append(Reject(number, fields[0], "format",
                                  f"line {number}: expected 4 fields wav_path|speaker|lang|text, got "
                                  f"{len(fields)}"))
            continue
        path, speaker, lang, text = (f.strip() for f in fields)
        if not path:
            rejects.append(Reject(number, path, "format", f"line {number}: empty wav path"))
            continue
        try:
            lang = normalize_language(lang)
        except TextFrontendError as err:
            rejects.append(Reject(number, path, "language", f"line {number}: {err}"))
            continue
        if not text:
            rejects.append(Reject(number, path, "empty_text", f"line {number}: the text field is empty"))
            continue
        name = os.path.basename(path.replace("\\", "/"))
        if name in seen:
            rejects.append(Reject(number, path, "duplicate",
                                  f"line {number}: file name {name!r} already used on line {seen[name]} "
                                  "(features are keyed by file name, as in the official layout)"))
            continue
        seen[name] = number
        file = Path(path) if os.path.isabs(path) else base / path
        entries.append({"line": number, "path": path, "file": str(file), "name": name, "speaker": speaker,
                        "lang": lang, "raw_text": text})
    return entries, rejects


# --------------------------------------------------------------------------- per-row stages


def text_features(row: dict[str, Any], version: str, english_in_zh: str) -> dict[str, Any]:
    """Phones, ids, word2ph and normalised text of one row (a `datasets.map` function).

    The frontend's language runs are kept in `segments` (JSON: [lang, norm_text, word2ph, n_phones]
    per run) for the BERT stage, which gives zh runs BERT features and other runs zeros.
    """
    from ..text import UnknownPhoneError, clean_text_segments, phones_to_ids

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
    # As `clean_text` joins them: word2ph only describes all-Chinese lines.
    word2ph = [n for seg in segments for n in seg.word2ph] if all(s.lang == "zh" for s in segments) else []
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


def check_waveform(audio: np.ndarray, line: int, where: str) -> tuple[str, str, float]:
    """(reject code, reason, peak) for a 32 kHz waveform; code "" when usable."""
    if audio.size == 0:
        return "empty", f"line {line}: {where} has no samples", 0.0
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


# --------------------------------------------------------------------------- HuBERT


def load_hubert(hubert_dir: Path, device: torch.device) -> Any:
    from transformers import HubertModel

    if not (hubert_dir / "config.json").is_file():
        raise PrepareError(f"--hubert {hubert_dir}: no config.json there; give the folder of a HuBERT "
                           "model saved with save_pretrained (e.g. chinese-hubert-base)")
    try:
        model = HubertModel.from_pretrained(str(hubert_dir), local_files_only=True)
    except (OSError, ValueError) as err:
        raise PrepareError(f"cannot load the HuBERT model from {hubert_dir}: {err}") from err
    stride = int(np.prod(model.config.conv_stride))
    if SSL_SAMPLING_RATE % stride or SSL_SAMPLING_RATE // stride != 50:
        raise PrepareError(f"HuBERT model {hubert_dir} has a total stride of {stride} samples: "
                           f"{SSL_SAMPLING_RATE / stride:g} frames per second, the S2 model needs 50")
    return model.eval().to(device)


def _conv_out_lengths(lengths: torch.Tensor, kernels: Iterable[int], strides: Iterable[int]) -> torch.Tensor:
    for kernel, stride in zip(kernels, strides, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


def _masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
    """GroupNorm of (B, C, T) with statistics over each item's first `lengths` frames only."""
    batch, channels, frames = x.shape
    groups = norm.num_groups
    valid = (torch.arange(frames, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
    valid = valid[:, None, None, :]
    grouped = x.view(batch, groups, channels // groups, frames)
    count = (lengths.to(x.dtype) * (channels // groups))[:, None, None, None]
    mean = (grouped * valid).sum(dim=(2, 3), keepdim=True) / count
    var = ((grouped - mean).pow(2) * valid).sum(dim=(2, 3), keepdim=True) / count
    out = ((grouped - mean) / torch.sqrt(var + norm.eps)).view(batch, channels, frames)
    if norm.affine:
        out = out * norm.weight[None, :, None] + norm.bias[None, :, None]
    return out


@torch.inference_mode()
def hubert_features(model: Any, waves: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """`last_hidden_state` (D, T_i) of each 16 kHz input, computed as one padded batch."""
    device = next(model.parameters()).device
    lengths = torch.tensor([len(w) for w in waves], device=device)
    batch = torch.zeros(len(waves), int(lengths.max()), device=device)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.tensor(w, device=device)
    config = model.config
    frames = _conv_out_lengths(lengths, config.conv_kernel, config.conv_stride)
    hidden = batch[:, None]
    layers = model.feature_extractor.conv_layers
    for index, layer in enumerate(layers):
        norm = getattr(layer, "layer_norm", None)
        if isinstance(norm, torch.nn.GroupNorm) and len(waves) > 1:
            hidden = layer.conv(hidden)
            layer_lengths = _conv_out_lengths(lengths, config.conv_kernel[: index + 1],
                                              config.conv_stride[: index + 1])
            hidden = layer.activation(_masked_group_norm(hidden, layer_lengths, norm))
        else:
            hidden = layer(hidden)
    projected = model.feature_projection(hidden.transpose(1, 2))
    if isinstance(projected, tuple):  # some wav2vec2-family projections also return the normed input
        projected = projected[0]
    mask = None
    if len(waves) > 1:
        mask = torch.arange(projected.size(1), device=device)[None, :] < frames[:, None]
    out = model.encoder(projected, attention_mask=mask).last_hidden_state
    return [out[i, : int(n)].transpose(0, 1).float().cpu() for i, n in enumerate(frames.tolist())]


# --------------------------------------------------------------------------- S2 semantic codes


def load_s2_model(path: Path, ssl_dim: int, device: torch.device) -> Any:
    """The S2 generator of an official or gsv_accel weight file, for `extract_latent`."""
    from ..formats import GSVFormatError, load_gsv_file, load_weights_into
    from ..models.sovits import SoVITSConfig, SynthesizerTrn

    try:
        gsv = load_gsv_file(path)
        cfg = gsv.config
        if cfg is None:
            # Pretrained files and G_ checkpoints store no config: the version's official architecture
            # (v2Pro/v2ProPlus differ from v2 in widths, e.g. s2Gv2Pro.pth has gin_channels 1024).
            config = SoVITSConfig.for_version(gsv.version or "v2")
        elif isinstance(cfg.get("model"), dict):
            model_section = dict(cfg["model"])
            model_section.setdefault("version", gsv.version or "v2")
            config = SoVITSConfig.from_dict(model_section, cfg.get("data"), cfg.get("train"))
        else:
            config = SoVITSConfig.from_dict(cfg)
        if config.ssl_dim != ssl_dim:
            raise PrepareError(f"--s2-pretrained {path}: the model takes {config.ssl_dim}-dim SSL features "
                               f"but the HuBERT model gives {ssl_dim}")
        model = SynthesizerTrn(config)
        load_weights_into(model, gsv)
    except (GSVFormatError, ValueError, OSError) as err:
        raise PrepareError(f"cannot load the S2 model {path}: {err}") from err
    inited = [v for k, v in model.state_dict().items() if k.endswith("_codebook.inited")]
    if not inited or not all(bool((v > 0).all()) for v in inited):
        raise PrepareError(f"--s2-pretrained {path}: its quantizer codebook is not initialised, so its "
                           "semantic codes would be meaningless; use a pretrained or trained S2 model")
    return model.eval().to(device)


@torch.inference_mode()
def semantic_codes(model: Any, ssl: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """25 Hz (or 50 Hz) codes of each (D, T) feature map, as one padded batch (the projection is a
    stride-2 convolution and the quantizer works per frame, so padding never reaches valid codes)."""
    device = next(model.parameters()).device
    frames = max(s.size(1) for s in ssl)
    batch = torch.zeros(len(ssl), ssl[0].size(0), frames, device=device)
    for i, s in enumerate(ssl):
        batch[i, :, : s.size(1)] = s.to(device)
    codes = model.extract_latent(batch)[:, 0]
    ratio = model.semantic_upsample
    return [codes[i, : s.size(1) // ratio].cpu().numpy().astype(np.int16) for i, s in enumerate(ssl)]


class ModelStage:
    """HuBERT features (and semantic codes) for a batch of rows (a batched `datasets.map` callable)."""

    def __init__(self, hubert: Any, s2: Any = None) -> None:
        self.hubert = hubert
        self.s2 = s2

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        feats = hubert_features(self.hubert, [np.asarray(w, np.float32) for w in batch["hubert_in"]])
        out: dict[str, list[Any]] = {"ssl": [], "ssl_frames": [], "reject_code": [], "reject_reason": []}
        stored = []
        for line, feat in zip(batch["line"], feats, strict=True):
            half = feat.to(torch.float16)
            ok = bool(torch.isfinite(half).all())
            out["ssl"].append(half.reshape(-1).numpy() if ok else np.zeros(0, np.float16))
            out["ssl_frames"].append(feat.size(1) if ok else 0)
            out["reject_code"].append("" if ok else "features")
            out["reject_reason"].append("" if ok else f"line {line}: HuBERT features contain NaN/inf "
                                        "(or exceed the float16 range)")
            stored.append(half.float())
        if self.s2 is not None:
            out["semantic"] = semantic_codes(self.s2, stored)
        return out


# --------------------------------------------------------------------------- BERT


class BertStage:
    """BERT phone features of zh rows (a `datasets.map` callable)."""

    def __init__(self, bert_dir: Path, device: torch.device) -> None:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
            self.model = AutoModelForMaskedLM.from_pretrained(str(bert_dir), local_files_only=True)
        except (OSError, ValueError) as err:
            raise PrepareError(f"cannot load the BERT model from {bert_dir}: {err}") from err
        self.model.eval().to(device)
        self.device = device
        self.hidden_size = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {"bert": np.zeros(0, np.float16), "reject_code": row["reject_code"],
               "reject_reason": row["reject_reason"]}
        segments = json.loads(row["segments"])
        if out["reject_code"] or not any(lang == "zh" for lang, *_ in segments):
            return out  # stored empty: zeros
        parts = []
        for lang, text, word2ph, n_phones in segments:
            if lang != "zh":
                parts.append(torch.zeros(self.hidden_size, n_phones))
                continue
            inputs = self.tokenizer(text, return_tensors="pt").to(self.device)
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[BERT_LAYER][0, 1:-1]
            if hidden.size(0) != len(word2ph) or sum(word2ph) != n_phones:
                out.update(reject_code="bert",
                           reject_reason=f"line {row['line']}: BERT gives {hidden.size(0)} token vectors for "
                           f"the {len(word2ph)} characters of {text!r}")
                return out
            repeats = torch.tensor(word2ph, device=hidden.device)
            parts.append(hidden.repeat_interleave(repeats, dim=0).transpose(0, 1).float().cpu())
        out["bert"] = torch.cat(parts, dim=1).to(torch.float16).reshape(-1).numpy()  # (H, n_phones)
        return out


# --------------------------------------------------------------------------- fingerprints


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamp(path: Path) -> list[Any] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _tree_stamp(path: Path | None) -> Any:
    """Names, sizes and modification times of a model folder or file (cheap; content is not read)."""
    if path is None:
        return None
    if path.is_file():
        return [path.name, _file_stamp(path)]
    return sorted([str(p.relative_to(path)), _file_stamp(p)] for p in path.rglob("*") if p.is_file())


def symbol_table_info(version: str) -> dict[str, Any]:
    from ..text import symbols

    table = symbols(version)
    return {"symbols_version": version, "symbols_count": len(table),
            "symbols_sha256": hashlib.sha256("\n".join(table).encode()).hexdigest(),
            "frontend": f"gsv_accel {__version__}"}


def split_fingerprint(val_fraction: float, val_list: Path | None, seed: int) -> str:
    val_bytes = hashlib.sha256(val_list.read_bytes()).hexdigest() if val_list is not None else None
    return _hash({"val_fraction": val_fraction, "val_list": val_bytes, "seed": seed})


# --------------------------------------------------------------------------- split, write, swap


def read_val_list(path: Path) -> set[str]:
    """File names listed in a validation list: one per line, or `.list` lines (first field)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PrepareError(f"cannot read --val-list {path}: {err}") from err
    return {os.path.basename(line.split("|")[0].strip().replace("\\", "/")) for line in lines if line.strip()}


def split_names(names: Sequence[str], val_fraction: float, val_list: Path | None, seed: int
                ) -> tuple[list[int], list[int]]:
    """(train indices, validation indices): the `val_list` names, or the `val_fraction` of names with
    the smallest seeded hashes (independent of line order; at least one on each side)."""
    count = len(names)
    if count < 2:
        raise PrepareError(f"only {count} usable utterance(s) left; at least 2 are needed (one for training, "
                           "one for validation). See rejected.tsv for the others.")
    if val_list is not None:
        wanted = read_val_list(val_list)
        val = [i for i, n in enumerate(names) if n in wanted]
        absent = sorted(wanted - set(names))
        if absent:
            shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
            print(f"prepare: {len(absent)} name(s) of --val-list are not in the dataset: {shown}")
        if not val or len(val) == count:
            raise PrepareError(f"--val-list {val_list} leaves {len(val)} validation and {count - len(val)} "
                               "training utterances; both must be at least 1")
    else:
        n_val = min(count - 1, max(1, round(val_fraction * count)))
        rank = sorted(range(count), key=lambda i: hashlib.sha256(f"{seed}:{names[i]}".encode()).hexdigest())
        val = sorted(rank[:n_val])
    val_set = set(val)
    return [i for i in range(count) if i not in val_set], val


def write_rejected(path: Path, rejects: Sequence[Reject]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("line\tpath\treason_code\treason\n")
        for r in sorted(rejects, key=lambda r: r.line):
            clean = r.reason.replace("\t", " ").replace("\n", " ")
            f.write(f"{r.line}\t{r.path}\t{r.code}\t{clean}\n")


def read_rejected(path: Path) -> list[Reject]:
    rejects = []
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                rejects.append(Reject(int(parts[0]), parts[1], parts[2], parts[3]))
    return rejects


def _backups(out_dir: Path, kind: str) -> list[Path]:
    return sorted(out_dir.parent.glob(f".{out_dir.name}.{kind}-*"))


def recover_interrupted(out_dir: Path) -> None:
    """Undo what an interrupted run left: stale temporary folders, or a half-done swap."""
    for tmp in _backups(out_dir, "tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    olds = _backups(out_dir, "old")
    if olds and not out_dir.exists():
        olds[-1].rename(out_dir)
        print(f"prepare: restored {out_dir} from an interrupted replacement")
        olds = olds[:-1]
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def check_replaceable(out_dir: Path) -> None:
    """Only a prepared dataset (or an empty folder) may be replaced by a new output."""
    if out_dir.exists() and not (out_dir / META_FILE).is_file() and any(out_dir.iterdir()):
        raise PrepareError(f"{out_dir} exists and is not a prepared gsv_accel dataset; refusing to replace "
                           "it (choose another --out or remove it)")


def new_temp_dir(out_dir: Path) -> Path:
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


def replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished `tmp` to `out_dir`, replacing an older output only now."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_dataset(tmp: Path, dataset: Any, meta: dict[str, Any], rejects: Sequence[Reject],
                 val_fraction: float, val_list: Path | None, seed: int) -> dict[str, int]:
    """Split the kept rows (ordered by line), write the DatasetDict, metadata and rejected.tsv."""
    import datasets

    train, val = split_names(dataset.data.column("name").to_pylist(), val_fraction, val_list, seed)
    splits = datasets.DatasetDict({"train": dataset.select(train), "validation": dataset.select(val)})
    splits.save_to_disk(str(tmp))
    counts = {"train": len(train), "validation": len(val), "rejected": len(rejects)}
    meta = dict(meta, counts=counts,
                split={"seed": seed, "val_fraction": None if val_list else val_fraction,
                       "val_list": str(val_list) if val_list else None})
    with open(tmp / META_FILE, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
    write_rejected(tmp / REJECTED_FILE, rejects)
    return counts


def report(out_dir: Path, total: int, counts: dict[str, int], rejects: Sequence[Reject],
           command: str = "prepare") -> None:
    kept = counts["train"] + counts["validation"]
    print(f"{command}: {total} utterance line(s): kept {kept} (train {counts['train']}, validation "
          f"{counts['validation']}), rejected {len(rejects)}"
          + (f" -> {out_dir / REJECTED_FILE}" if rejects else ""))
    for code, n in sorted(Counter(r.code for r in rejects).items()):
        print(f"  {n:6d}  {code}: {REJECT_CODES.get(code, code)}")
    print(f"{command}: dataset written to {out_dir}")


def rejects_of(dataset: Any, path_column: str = "path") -> list[Reject]:
    table = dataset.select_columns(["line", path_column, "reject_code", "reject_reason"]).to_dict()
    return [Reject(line, path, code, reason) for line, path, code, reason in
            zip(table["line"], table[path_column], table["reject_code"], table["reject_reason"], strict=True)
            if code]


def kept_indices(dataset: Any) -> list[int]:
    return [i for i, code in enumerate(dataset["reject_code"]) if not code]


def resplit_existing(out_dir: Path, meta: dict[str, Any], rejects: Sequence[Reject], val_fraction: float,
                     val_list: Path | None, seed: int) -> dict[str, int]:
    """Same features, new split settings: re-split the stored rows into a fresh output."""
    import datasets

    old = datasets.load_from_disk(str(out_dir))
    rows = datasets.concatenate_datasets([old["train"], old["validation"]])
    lines = list(rows["line"])
    rows = rows.select(sorted(range(len(rows)), key=lambda i: lines[i]), keep_in_memory=True)
    tmp = new_temp_dir(out_dir)
    try:
        counts = save_dataset(tmp, rows, meta, rejects, val_fraction, val_list, seed)
        del old, rows
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


# --------------------------------------------------------------------------- prepare


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
    }
    merged: dict[str, Any] = {}
    for stage in stages:
        merged.update(columns[stage])
    if "ssl" in stages:
        merged.pop("hubert_in", None)
    return hfd.Features(merged)


# Columns of a saved dataset, in order (the optional ones only when computed).
SAVED_COLUMNS = ("name", "speaker", "lang", "text", "phones", "phone_ids", "word2ph", "path", "line",
                 "duration", "num_samples", "spec_frames", "wav", "ssl_frames", "ssl", "semantic", "bert")


def prepare(list_path: str | Path, out_dir: str | Path, hubert_dir: str | Path, *,
            s2_pretrained: str | Path | None = None, bert_dir: str | Path | None = None,
            val_fraction: float = 0.1, val_list: str | Path | None = None, num_proc: int = 1,
            device: str = "cpu", batch_size: int = 8, seed: int = 1234, version: str = "v2",
            english_in_zh: str = "phonemize", spectrogram_config: SpectrogramConfig | None = None,
            force: bool = False) -> PrepareResult:
    """Prepare a `.list` corpus into `out_dir` (see the module docstring). Returns counts and rejects."""
    import datasets as hfd

    list_path, out_dir, hubert_dir = Path(list_path), Path(out_dir), Path(hubert_dir)
    s2_path = Path(s2_pretrained) if s2_pretrained else None
    bert_path = Path(bert_dir) if bert_dir else None
    val_path = Path(val_list) if val_list else None
    spec_cfg = spectrogram_config or SpectrogramConfig()
    check_arguments(spec_cfg, val_fraction, val_path, batch_size, num_proc, device,
                    {"--list": list_path, "--hubert": hubert_dir, "--s2-pretrained": s2_path,
                     "--bert": bert_path})

    recover_interrupted(out_dir)
    check_replaceable(out_dir)
    entries, rejects = parse_list(list_path)
    total = len(entries) + len(rejects)
    features_fp = _hash({
        "pipeline": PIPELINE_VERSION, "gsv_accel": __version__, "symbols": symbol_table_info(version),
        "english_in_zh": english_in_zh, "spectrogram": spec_cfg.__dict__,
        "list": hashlib.sha256(list_path.read_bytes()).hexdigest(),
        "list_dir": str(list_path.parent.resolve()),
        "audio": [[e["file"], _file_stamp(Path(e["file"]))] for e in entries],
        "hubert": _tree_stamp(hubert_dir), "s2": _tree_stamp(s2_path), "bert": _tree_stamp(bert_path),
    })
    split_fp = split_fingerprint(val_fraction, val_path, seed)
    if not force:
        reused = reuse_existing(out_dir, total, features_fp, split_fp, val_fraction, val_path, seed)
        if reused is not None:
            return reused
    if not entries:
        raise PrepareError(f"{list_path}: no usable line ({len(rejects)} rejected: "
                           + "; ".join(r.reason for r in rejects[:3]) + ")")

    hubert = load_hubert(hubert_dir, torch.device(device))
    ssl_dim = int(hubert.config.hidden_size)
    s2 = load_s2_model(s2_path, ssl_dim, torch.device(device)) if s2_path else None
    bert = BertStage(bert_path, torch.device(device)) if bert_path else None

    tmp = new_temp_dir(out_dir)
    work = tmp / "work"
    work.mkdir()
    try:
        def options(stage: str, *stages: str) -> dict[str, Any]:
            # Explicit cache files inside the temporary folder; our own fingerprint decides reuse.
            return {"cache_file_name": str(work / f"{stage}.arrow"), "load_from_cache_file": False,
                    "new_fingerprint": f"{features_fp[:16]}-{stage}", "features": stage_features(*stages),
                    "desc": stage}

        parallel = min(num_proc, len(entries)) if num_proc > 1 else None
        ds = hfd.Dataset.from_dict({key: [e[key] for e in entries] for key in entries[0]},
                                   features=stage_features("entry"))
        ds = ds.map(text_features, fn_kwargs={"version": version, "english_in_zh": english_in_zh},
                    num_proc=parallel, **options("text", "entry", "text"))
        ds = ds.map(audio_features, fn_kwargs={"spec": spec_cfg.__dict__}, num_proc=parallel,
                    writer_batch_size=64, **options("audio", "entry", "text", "audio"))
        rejects += rejects_of(ds)
        good = kept_indices(ds)
        if not good:
            raise PrepareError(f"{list_path}: nothing usable is left: all {total} line(s) were rejected "
                               f"({dict(Counter(r.code for r in rejects))}; see the reasons above)")
        # HuBERT (+ S2) in length-sorted batches: little padding, and padding never changes results.
        lengths = list(ds["num_samples"])
        ds = ds.select(sorted(good, key=lambda i: lengths[i]), keep_in_memory=True)
        model_stages = ("entry", "text", "audio", "ssl") + (("semantic",) if s2 is not None else ())
        ds = ds.with_format("numpy", columns=["hubert_in", "line"]).map(
            ModelStage(hubert, s2), batched=True, batch_size=batch_size, remove_columns=["hubert_in"],
            writer_batch_size=64, **options("HuBERT" + (" + semantic codes" if s2 else ""), *model_stages)
        ).with_format(None)
        if bert is not None:
            ds = ds.map(bert, writer_batch_size=64, **options("BERT", *model_stages, "bert"))
        rejects += rejects_of(ds)
        lines = list(ds["line"])
        ds = ds.select(sorted(kept_indices(ds), key=lambda i: lines[i]), keep_in_memory=True)
        ds = ds.select_columns([c for c in SAVED_COLUMNS if c in ds.column_names])
        meta = build_meta(
            source={"kind": "list", "path": str(list_path)}, spec_cfg=spec_cfg, version=version,
            ssl={"model": hubert_dir.name, "hidden_size": ssl_dim,
                 "config_sha256": hashlib.sha256((hubert_dir / "config.json").read_bytes()).hexdigest()},
            semantic=None if s2 is None else {"frame_rate": s2.config.semantic_frame_rate,
                                              "codebook_size": s2.config.codebook_size,
                                              "s2_model": s2_path.name},
            bert=None if bert is None else {"model": bert_path.name, "hidden_size": bert.hidden_size,
                                            "layer": BERT_LAYER, "dtype": "float16", "languages": ["zh"]},
            fingerprint={"features": features_fp, "split": split_fp})
        counts = save_dataset(tmp, ds, meta, rejects, val_fraction, val_path, seed)
        del ds
        shutil.rmtree(work)
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(out_dir, total, counts, rejects)
    return PrepareResult(out_dir, counts, sorted(rejects, key=lambda r: r.line))


def check_arguments(spec_cfg: SpectrogramConfig, val_fraction: float, val_path: Path | None, batch_size: int,
                    num_proc: int, device: str, paths: dict[str, Path | None]) -> None:
    if spec_cfg.sampling_rate != SAMPLING_RATE:
        raise PrepareError(f"data.sampling_rate must be {SAMPLING_RATE} (the official 32 kHz pipeline), got "
                           f"{spec_cfg.sampling_rate}")
    if val_path is None and not 0 < val_fraction < 1:
        raise PrepareError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if batch_size < 1 or num_proc < 1:
        raise PrepareError("--batch-size and --num-proc must be at least 1")
    for flag, path in dict(paths, **{"--val-list": val_path}).items():
        if path is not None and not path.exists():
            raise PrepareError(f"{flag} {path}: not found")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise PrepareError(f"--device {device}: CUDA is not available here; use --device cpu")


def reuse_existing(out_dir: Path, total: int, features_fp: str, split_fp: str, val_fraction: float,
                   val_path: Path | None, seed: int, command: str = "prepare") -> PrepareResult | None:
    """The existing output when its fingerprints match (re-split when only the split changed)."""
    if not (out_dir / META_FILE).is_file():
        return None
    try:
        meta = read_meta(out_dir)
    except (ValueError, OSError):  # another format version, or unreadable: prepare from scratch
        return None
    fingerprint = meta.get("fingerprint", {})
    if fingerprint.get("features") != features_fp:
        return None
    rejects = read_rejected(out_dir / REJECTED_FILE) if (out_dir / REJECTED_FILE).is_file() else []
    if fingerprint.get("split") == split_fp:
        print(f"{command}: {out_dir} is up to date with its inputs; nothing to do (--force to redo)")
        return PrepareResult(out_dir, meta["counts"], rejects, reused=True)
    print(f"{command}: features are up to date; only the train/validation split changes")
    meta["fingerprint"]["split"] = split_fp
    counts = resplit_existing(out_dir, meta, rejects, val_fraction, val_path, seed)
    report(out_dir, total, counts, rejects, command)
    return PrepareResult(out_dir, counts, rejects, reused=True)


def build_meta(*, source: dict[str, Any], spec_cfg: SpectrogramConfig, version: str, ssl: dict[str, Any],
               semantic: dict[str, Any] | None, bert: dict[str, Any] | None,
               fingerprint: dict[str, str]) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "created_by": f"gsv_accel {__version__}",
        "source": source,
        "audio": {"sampling_rate": SAMPLING_RATE, "wav_dtype": "int16", "wav_scale": WAV_INT16_SCALE,
                  "mix": {"maxx": MIX_MAXX, "alpha": MIX_ALPHA}, "min_duration": MIN_DURATION,
                  "max_duration": MAX_DURATION, "max_peak": MAX_PEAK},
        "spectrogram": {"filter_length": spec_cfg.filter_length, "hop_length": spec_cfg.hop_length,
                        "win_length": spec_cfg.win_length, "cached": False},
        "ssl": {"frame_rate": 50, "input_sampling_rate": SSL_SAMPLING_RATE, "input_scale": HUBERT_INPUT_SCALE,
                "dtype": "float16", **ssl},
        "text": symbol_table_info(version),
        "semantic": semantic,
        "bert": bert,
        "features_version": {"pipeline": PIPELINE_VERSION},
        "fingerprint": fingerprint,
    }


# --------------------------------------------------------------------------- command line


def add_prepare_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--list", required=True, type=Path,
                        help="GPT-SoVITS .list file (wav_path|speaker|lang|text)")
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder")
    parser.add_argument("--hubert", required=True, type=Path,
                        help="local HuBERT model folder (chinese-hubert-base)")
    parser.add_argument("--s2-pretrained", type=Path,
                        help="S2 weights: also compute the 25 Hz semantic codes")
    parser.add_argument("--bert", type=Path,
                        help="local BERT folder (chinese-roberta-wwm-ext-large): zh BERT features")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default 0.1)")
    split.add_argument("--val-list", type=Path, help="file naming the validation utterances (one per line)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the validation split")
    parser.add_argument("--num-proc", type=int, default=1, help="processes for text and audio (default 1)")
    parser.add_argument("--device", default="cpu",
                        help="device for HuBERT/S2/BERT: cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="HuBERT batch size (default 8)")
    parser.add_argument("--version", default="v2", choices=["v1", "v2"], help="symbol table (default v2)")
    parser.add_argument("--english-in-zh", default="phonemize", choices=["phonemize", "drop", "error"],
                        help="Latin words in zh lines: phonemize them as English (default, as official v2 "
                             "inference does), drop them (as official training preparation does), or reject")
    parser.add_argument("--force", action="store_true", help="recompute even if the output is up to date")
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    try:
        prepare(args.list, args.out, args.hubert, s2_pretrained=args.s2_pretrained, bert_dir=args.bert,
                val_fraction=args.val_fraction, val_list=args.val_list, num_proc=args.num_proc,
                device=args.device, batch_size=args.batch_size, seed=args.seed, version=args.version,
                english_in_zh=args.english_in_zh, force=args.force)
    except PrepareError as err:
        print(f"gsv-accel prepare: error: {err}", file=sys.stderr)
        return 1
    return 0
