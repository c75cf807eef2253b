"""`gsv-accel prepare`: a GPT-SoVITS `.list` file -> a prepared dataset (Arrow, `datasets.DatasetDict`).

Each line `wav_path|speaker|lang|text` (UTF-8; relative paths are resolved against the list's folder)
becomes one row with the features the official preparation scripts compute
(`prepare_datasets/1-get-text.py`, `2-get-hubert-wav32k.py`, `3-get-semantic.py`):

* text: the gsv_accel frontend's phones, phone ids (`version` symbol table), word2ph and normalised text
  (`%` -> `-` and `￥` -> `,` first, as the official script does) for the languages zh, en, ja (jp),
  ko, yue and auto (see `gsv_accel.text`). English words in zh and yue lines follow
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
* with `sv_model` (`--sv`, an ERes2NetV2 checkpoint such as `pretrained_eres2netv2w24s4ep4.ckpt`): the
  speaker-verification embedding v2Pro/v2ProPlus models need (`sv_emb`, float32, 20480 values for the
  released model), as the official `2-get-sv.py` computes it from the `5-wav32k` file: the stored int16
  mix / 32768, resampled to 16 kHz, 80-bin Kaldi fbank, ERes2NetV2 `forward3`;
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

A broken line never stops the job: every rejected line is written with its reason to `rejected.tsv` in
the output folder and counted on stdout (see `REJECT_CODES`). Only when fewer than two usable lines
are left does the job fail (a user error: one message with the first reasons, nothing written).
The dataset is built in a temporary folder next to the output and renamed into place when
complete; an existing output is replaced only then, so an interrupted run leaves the previous
dataset intact (a run killed exactly between the two renames leaves it as `.<name>.old-*`, which
the next run restores). Run one job per output folder at a time: a new run removes temporary
folders that an earlier, interrupted one left beside the output.

Caching: the metadata stores a fingerprint of everything the features depend on (the list's bytes,
size and modification time of every audio file, size/mtime of the model files, the settings and the
pipeline version; the `--sv` model's only when it is given, so that datasets made without it keep
their fingerprint) and, separately, of the split settings. A re-run with the same fingerprints does
nothing; if only the split settings changed, the stored rows are re-split without recomputing
features. This was chosen over `datasets`' fingerprint cache, which keys on the map function and the
input table: the table holds file *paths*, so an audio file edited in place would silently reuse
stale features, and an in-memory input table is not cached at all. Any change of the features
fingerprint recomputes every feature: adding `--sv` to an existing dataset recomputes HuBERT (and the
other model stages) too, not only the new column.

Module layout: `listfile.py` (the `.list` parser, rejects and `rejected.tsv`), `features.py` (text and
audio stages, official constants, column schema), `model_stages.py` (HuBERT, S2 semantic codes, BERT,
speaker verification),
`fingerprint.py` (reuse fingerprints), `writer.py` (`DatasetWriter`: atomic output, reuse, split, save)
and this module (the `prepare` job and its command line). The names of those modules that callers
used to import from here are re-exported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..audio import SpectrogramConfig
from ..text._packages import frontend_package_versions
from .features import (
    HUBERT_INPUT_SCALE,
    MAX_DURATION,
    MAX_PEAK,
    MIN_DURATION,
    MIX_ALPHA,
    MIX_MAXX,
    PIPELINE_VERSION,
    SAMPLING_RATE,
    SAVED_COLUMNS,
    SILENCE_PEAK,
    SSL_SAMPLING_RATE,
    WAV_INT16_SCALE,
    audio_features,
    check_waveform,
    hubert_input,
    loudness_mix,
    official_int16,
    stage_features,
    sv_input,
    text_features,
)
from .fingerprint import file_stamp, split_fingerprint, stable_hash, symbol_table_info, tree_stamp
from .listfile import (
    REJECT_CODES,
    REJECTED_FILE,
    PrepareError,
    Reject,
    kept_indices,
    parse_list,
    read_rejected,
    rejects_of,
    report,
    too_few_usable,
    write_rejected,
)
from .model_stages import (
    BERT_LAYER,
    BertStage,
    ModelStage,
    SVStage,
    hubert_features,
    load_hubert,
    load_s2_model,
    load_sv_model,
    semantic_codes,
)
from .writer import (
    DatasetWriter,
    PrepareResult,
    build_meta,
    check_replaceable,
    new_temp_dir,
    read_val_list,
    recover_interrupted,
    replace_dir,
    save_dataset,
    split_names,
)

__all__ = [
    "BERT_LAYER", "HUBERT_INPUT_SCALE", "MAX_DURATION", "MAX_PEAK", "MIN_DURATION", "MIX_ALPHA", "MIX_MAXX",
    "PIPELINE_VERSION", "REJECTED_FILE", "REJECT_CODES", "SAMPLING_RATE", "SAVED_COLUMNS", "SILENCE_PEAK",
    "SSL_SAMPLING_RATE", "WAV_INT16_SCALE", "BertStage", "DatasetWriter", "ModelStage", "PrepareError",
    "PrepareResult", "Reject", "add_prepare_arguments", "audio_features", "build_meta", "check_arguments",
    "check_entries", "check_input_path", "check_replaceable", "check_waveform", "file_stamp",
    "hubert_features", "hubert_input", "kept_indices",
    "load_hubert", "load_s2_model", "loudness_mix", "new_temp_dir", "official_int16", "parse_list",
    "prepare", "read_rejected", "read_val_list", "recover_interrupted", "rejects_of", "replace_dir",
    "report", "run_prepare", "save_dataset", "semantic_codes", "split_fingerprint", "split_names",
    "stable_hash", "stage_features", "symbol_table_info", "text_features", "tree_stamp", "write_rejected",
    "SVStage", "load_sv_model", "sv_input",
]


# --------------------------------------------------------------------------- prepare


def prepare(list_path: str | Path, out_dir: str | Path, hubert_dir: str | Path, *,
            s2_pretrained: str | Path | None = None, bert_dir: str | Path | None = None,
            val_fraction: float = 0.1, val_list: str | Path | None = None, num_proc: int = 1,
            device: str = "cpu", batch_size: int = 8, seed: int = 1234, version: str = "v2",
            english_in_zh: str = "phonemize", spectrogram_config: SpectrogramConfig | None = None,
            force: bool = False, sv_model: str | Path | None = None) -> PrepareResult:
    """Prepare a `.list` corpus into `out_dir` (see the module docstring). Returns counts and rejects."""
    import datasets as hfd

    list_path, out_dir, hubert_dir = Path(list_path), Path(out_dir), Path(hubert_dir)
    s2_path = Path(s2_pretrained) if s2_pretrained else None
    bert_path = Path(bert_dir) if bert_dir else None
    sv_path = Path(sv_model) if sv_model else None
    val_path = Path(val_list) if val_list else None
    spec_cfg = spectrogram_config or SpectrogramConfig()
    check_arguments(spec_cfg, val_fraction, val_path, batch_size, num_proc, device,
                    {"--list": list_path, "--hubert": hubert_dir, "--s2-pretrained": s2_path,
                     "--bert": bert_path, "--sv": sv_path})

    writer = DatasetWriter(out_dir, val_fraction=val_fraction, val_list=val_path, seed=seed)
    entries, rejects = parse_list(list_path)
    check_entries(list_path, entries, rejects)
    if val_path is not None:
        writer.check_val_list([e["name"] for e in entries])
    total = len(entries) + len(rejects)
    inputs = {
        "pipeline": PIPELINE_VERSION, "gsv_accel": __version__, "symbols": symbol_table_info(version),
        "english_in_zh": english_in_zh, "spectrogram": spec_cfg.__dict__,
        "text_packages": frontend_package_versions(),
        "list": hashlib.sha256(list_path.read_bytes()).hexdigest(),
        "list_dir": str(list_path.parent.resolve()),
        "audio": [[e["file"], file_stamp(Path(e["file"]))] for e in entries],
        "hubert": tree_stamp(hubert_dir), "s2": tree_stamp(s2_path), "bert": tree_stamp(bert_path),
    }
    if sv_path is not None:  # only then: datasets made without --sv keep their fingerprint
        inputs["sv"] = tree_stamp(sv_path)
    features_fp = stable_hash(inputs)
    split_fp = writer.split_fingerprint()
    if not force:
        reused = writer.reuse(total, features_fp)
        if reused is not None:
            return reused

    hubert = load_hubert(hubert_dir, torch.device(device))
    ssl_dim = int(hubert.config.hidden_size)
    s2 = load_s2_model(s2_path, ssl_dim, torch.device(device)) if s2_path else None
    bert = BertStage(bert_path, torch.device(device)) if bert_path else None
    sv = SVStage(load_sv_model(sv_path, torch.device(device))) if sv_path else None

    def build(work: Path) -> tuple[Any, dict[str, Any], list[Reject]]:
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
        rejects.extend(rejects_of(ds))
        good = kept_indices(ds)
        if len(good) < 2:
            raise too_few_usable(f"--list {list_path}", len(good), total, rejects)
        # HuBERT (+ S2) in length-sorted batches: little padding, and padding never changes results.
        lengths = list(ds["num_samples"])
        ds = ds.select(sorted(good, key=lambda i: lengths[i]), keep_in_memory=True)
        model_stages = ("entry", "text", "audio", "ssl") + (("semantic",) if s2 is not None else ())
        ds = ds.with_format("numpy", columns=["hubert_in", "line"]).map(
            ModelStage(hubert, s2), batched=True, batch_size=batch_size, remove_columns=["hubert_in"],
            writer_batch_size=64, **options("HuBERT" + (" + semantic codes" if s2 else ""), *model_stages)
        ).with_format(None)
        if sv is not None:
            model_stages += ("sv",)
            ds = ds.with_format("numpy", columns=["wav", "line", "reject_code", "reject_reason"]).map(
                sv, batched=True, batch_size=batch_size, writer_batch_size=64,
                **options("speaker verification", *model_stages)
            ).with_format(None)
        if bert is not None:
            ds = ds.map(bert, writer_batch_size=64, **options("BERT", *model_stages, "bert"))
        rejects.extend(rejects_of(ds))
        lines = list(ds["line"])
        kept = kept_indices(ds)
        if len(kept) < 2:
            raise too_few_usable(f"--list {list_path}", len(kept), total, rejects)
        ds = ds.select(sorted(kept, key=lambda i: lines[i]), keep_in_memory=True)
        ds = ds.select_columns([c for c in SAVED_COLUMNS if c in ds.column_names])
        meta = build_meta(
            source={"kind": "list", "path": str(list_path)}, spec_cfg=spec_cfg, version=version,
            ssl={"model": hubert_dir.name, "hidden_size": ssl_dim,
                 "config_sha256": hashlib.sha256((hubert_dir / "config.json").read_bytes()).hexdigest()},
            semantic=None if s2 is None else {"frame_rate": s2.config.semantic_frame_rate,
                                              "codebook_size": s2.config.codebook_size,
                                              "s2_model": s2_path.name, "s2_version": s2.config.version},
            bert=None if bert is None else {"model": bert_path.name, "hidden_size": bert.hidden_size,
                                            "layer": BERT_LAYER, "dtype": "float16", "languages": ["zh"]},
            sv=None if sv is None else {"model": sv_path.name, "model_stamp": file_stamp(sv_path),
                                        "embedding_dim": sv.embedding_dim, "dtype": "float32",
                                        "input": "wav (int16 / 32768, 32 kHz)"},
            fingerprint={"features": features_fp, "split": split_fp})
        return ds, meta, rejects

    return writer.write(total, build)


def check_arguments(spec_cfg: SpectrogramConfig, val_fraction: float, val_path: Path | None, batch_size: int,
                    num_proc: int, device: str, paths: dict[str, Path | None]) -> None:
    """Settings and user-supplied paths, checked before anything is loaded or written: each path must
    exist and be of the kind its option needs (see `check_input_path`)."""
    if spec_cfg.sampling_rate != SAMPLING_RATE:
        raise PrepareError(f"data.sampling_rate must be {SAMPLING_RATE} (the official 32 kHz pipeline), got "
                           f"{spec_cfg.sampling_rate}")
    if val_path is None and not 0 < val_fraction < 1:
        raise PrepareError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if batch_size < 1 or num_proc < 1:
        raise PrepareError("--batch-size and --num-proc must be at least 1")
    for flag, path in dict(paths, **{"--val-list": val_path}).items():
        if path is not None:
            check_input_path(flag, path)
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise PrepareError(f"--device {device}: CUDA is not available here; use --device cpu")


# What each path option of `prepare` expects: (a file or a folder, what to give).
INPUT_KINDS = {
    "--list": ("file", "the GPT-SoVITS .list file itself (wav_path|speaker|lang|text lines)"),
    "--val-list": ("file", "a text file naming the validation utterances, one per line"),
    "--s2-pretrained": ("file", "an S2 weight file (.pth), e.g. s2G2333k.pth"),
    "--sv": ("file", "the ERes2NetV2 checkpoint file itself, e.g. pretrained_eres2netv2w24s4ep4.ckpt"),
    "--hubert": ("folder", "the folder of a HuBERT model saved with save_pretrained (e.g. "
                           "chinese-hubert-base: config.json and the weights)"),
    "--bert": ("folder", "the folder of a BERT model saved with save_pretrained (e.g. "
                         "chinese-roberta-wwm-ext-large: config.json, tokenizer and weights)"),
}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def _read_model_config(flag: str, path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise PrepareError(f"{flag} {path}: no config.json in this folder; give {INPUT_KINDS[flag][1]}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PrepareError(f"{flag} {config_path}: not a readable JSON model config ({err}); give "
                           f"{INPUT_KINDS[flag][1]}") from err
    if not isinstance(config, dict):
        raise PrepareError(f"{flag} {config_path}: holds a {type(config).__name__}, not a model config")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise PrepareError(f"{flag} {path}: no weights (*.safetensors or *.bin) beside config.json; give "
                           f"{INPUT_KINDS[flag][1]}")
    return config


def check_input_path(flag: str, path: Path) -> None:
    """`path` exists and is of the kind `flag` needs (cheap checks; the loaders check the content)."""
    kind, what = INPUT_KINDS[flag]
    if not path.exists():
        raise PrepareError(f"{flag} {path}: not found; give {what}")
    if kind == "file" and not path.is_file():
        raise PrepareError(f"{flag} {path} is a folder; give {what}")
    if kind == "folder" and not path.is_dir():
        raise PrepareError(f"{flag} {path} is a file; give {what}")
    if flag == "--hubert":
        config = _read_model_config(flag, path)
        missing = [key for key in ("conv_stride", "conv_kernel", "hidden_size") if key not in config]
        if missing:
            raise PrepareError(f"{flag} {path / 'config.json'}: a {config.get('model_type', 'unknown')!r} "
                               f"config without {', '.join(missing)}, not a HuBERT model; give {what}")
    elif flag == "--bert":
        config = _read_model_config(flag, path)
        if "conv_stride" in config:
            raise PrepareError(f"{flag} {path}: config.json describes an audio model "
                               f"({config.get('model_type', 'unknown')!r}), not BERT; give {what}")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise PrepareError(f"{flag} {path}: no tokenizer ({', '.join(TOKENIZER_FILES)}) in this folder; "
                               f"give {what}")


def check_entries(list_path: Path, entries: list[dict[str, Any]], rejects: list[Reject]) -> None:
    """A list with no usable line, or whose audio files are all missing, is a user error (raised
    before any model is loaded); otherwise broken lines are only rejected."""
    if not entries and not rejects:
        raise PrepareError(f"--list {list_path} has no lines; write one wav_path|speaker|lang|text line "
                           "per utterance")
    if not entries:
        first = "; ".join(r.reason for r in sorted(rejects, key=lambda r: r.line)[:3])
        raise PrepareError(f"--list {list_path}: no usable line, all {len(rejects)} rejected ({first}"
                           f"{'; ...' if len(rejects) > 3 else ''}); each line must be "
                           "wav_path|speaker|lang|text with a supported language")
    if not any(Path(e["file"]).exists() for e in entries):
        first = entries[0]
        raise PrepareError(f"--list {list_path}: none of the {len(entries)} audio files exists (line "
                           f"{first['line']}: {first['file']} not found); relative paths are read from "
                           f"the list's folder {list_path.parent.resolve()}: fix the paths in the list")


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
    parser.add_argument("--sv", type=Path,
                        help="ERes2NetV2 speaker-verification checkpoint (pretrained_eres2netv2w24s4ep4"
                             ".ckpt): also compute the sv_emb vectors v2Pro/v2ProPlus need")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default 0.1)")
    split.add_argument("--val-list", type=Path, help="file naming the validation utterances (one per line)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the validation split")
    parser.add_argument("--num-proc", type=int, default=1, help="processes for text and audio (default 1)")
    parser.add_argument("--device", default="cpu",
                        help="device for HuBERT/S2/BERT/SV: cpu or cuda (default cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="HuBERT and SV batch size (default 8)")
    parser.add_argument("--version", default="v2", choices=["v1", "v2"], help="symbol table (default v2)")
    parser.add_argument("--english-in-zh", default="phonemize", choices=["phonemize", "drop", "error"],
                        help="Latin words in zh and yue lines: phonemize them as English (default, as "
                             "official v2 inference does), drop them (as official training preparation "
                             "does), or reject")
    parser.add_argument("--force", action="store_true", help="recompute even if the output is up to date")
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    """`gsv-accel prepare`; `PrepareError` (bad input) propagates to `gsv_accel.cli.main`, which prints
    it on one line and exits with `EXIT_CODE_USER_ERROR`."""
    prepare(args.list, args.out, args.hubert, s2_pretrained=args.s2_pretrained, bert_dir=args.bert,
            val_fraction=args.val_fraction, val_list=args.val_list, num_proc=args.num_proc,
            device=args.device, batch_size=args.batch_size, seed=args.seed, version=args.version,
            english_in_zh=args.english_in_zh, force=args.force, sv_model=args.sv)
    return 0
