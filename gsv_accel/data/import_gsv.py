"""`gsv-accel import-gsv`: an official GPT-SoVITS experiment folder -> a prepared dataset.

Reads what the official preparation scripts wrote into `logs/<exp>`:

    2-name2text.txt        name \\t phones (space-separated) \\t word2ph \\t normalised text
                           (or the unmerged parts 2-name2text-<i>.txt)
    3-bert/<name>.pt       BERT phone features (1024, n_phones), zh utterances only (optional)
    4-cnhubert/<name>.pt   HuBERT features (1, 768, T)
    5-wav32k/<name>        the int16 loudness mix at 32 kHz
    6-name2semantic.tsv    name \\t space-separated 25 Hz codes, with an `item_name` header (optional;
                           or the parts 6-name2semantic-<i>.tsv)
    7-sv_cn/<name>.pt      speaker-verification embedding (1, D), D = 20480, v2Pro/v2ProPlus (optional:
                           read when the folder exists, into the `sv_emb` column as float32)

into the layout of `gsv-accel prepare` (same columns, metadata, split, `rejected.tsv`, atomic output,
fingerprint cache), with the same rejection rules where they apply. `.pt` files are read with
`torch.load(weights_only=True)`: tensors only, nothing pickled is executed; a file holding anything
else is rejected.

The official folder stores neither speaker nor language. Give the original `.list` (`list_path`) to
fill them; without it the speaker is the folder's name and the language is "zh" where a BERT file
exists and "" (unknown) otherwise. The HuBERT features are taken as they are (their hidden size is
read from the files; the model name is not recorded in the folder: pass `hubert_name`).
"""

from __future__ import annotations

import argparse
import ast
import os
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

from .. import __version__
from ..audio import SpectrogramConfig
from .dataset import spectrogram_frames
from .features import (
    PIPELINE_VERSION,
    SAMPLING_RATE,
    SAVED_COLUMNS,
    check_waveform,
    empty_file,
    empty_file_reason,
    stage_features,
)
from .fingerprint import stable_hash, symbol_table_info, tree_stamp
from .listfile import PrepareError, Reject, kept_indices, rejects_of, too_few_usable
from .writer import DatasetWriter, PrepareResult, build_meta

# Official semantic files start with this header line.
SEMANTIC_HEADER = "item_name"
# The official S2 loader refuses SSL/audio length differences of 3 frames or more.
MAX_SSL_FRAME_MISMATCH = 3
# 25 Hz codes of T HuBERT frames number T // 2; more than this far off, they belong to other features.
MAX_SEMANTIC_MISMATCH = 2


EXP_WHAT = "give an official GPT-SoVITS experiment folder (logs/<exp>, after its data preparation)"


def _part_files(exp_dir: Path, merged: str, pattern: str) -> list[Path]:
    if (exp_dir / merged).is_file():
        return [exp_dir / merged]
    return sorted(p for p in exp_dir.glob(pattern) if p.is_file())


def _read_text(file: Path, what: str) -> str:
    """A UTF-8 text file of the input; unreadable or not UTF-8 is a user error naming the file."""
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PrepareError(f"{what} {file}: not UTF-8 text ({err.reason} at byte {err.start}); give the "
                           "file as GPT-SoVITS wrote it") from err
    except OSError as err:
        raise PrepareError(f"{what} {file}: cannot be read ({err.strerror or err})") from err


def parse_name2text(files: list[Path], version: str) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Entries (line, name, phones, ids, word2ph, text) of the official text files, and rejects."""
    from ..text import UnknownPhoneError, phones_to_ids

    entries: list[dict[str, Any]] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    line_base = 0
    for file in files:
        lines = _read_text(file, "--exp-dir").split("\n")
        for offset, line in enumerate(lines, start=1):
            number = line_base + offset
            if not line.strip():
                continue
            fields = line.split("\t")
            where = f"{file.name} line {offset}"
            if len(fields) != 4:
                rejects.append(Reject(number, fields[0], "format",
                                      f"{where}: expected 4 tab-separated fields name, phones, word2ph, "
                                      f"text; got {len(fields)}"))
                continue
            name, phone_text, word2ph_text, norm_text = fields
            if name in seen:
                rejects.append(Reject(number, name, "duplicate", f"{where}: {name!r} listed twice"))
                continue
            seen.add(name)
            phones = phone_text.split()
            try:
                word2ph = ast.literal_eval(word2ph_text.strip())
                if word2ph is not None and not (isinstance(word2ph, list)
                                                and all(isinstance(n, int) for n in word2ph)):
                    raise ValueError("not a list of integers")
            except (ValueError, SyntaxError) as err:
                rejects.append(Reject(number, name, "format", f"{where}: word2ph {word2ph_text!r}: {err}"))
                continue
            try:
                ids = phones_to_ids(phones, version)
            except UnknownPhoneError as err:
                rejects.append(Reject(number, name, "unknown_phones", f"{where}: {err}"))
                continue
            if not ids:
                rejects.append(Reject(number, name, "text", f"{where}: no phones"))
                continue
            entries.append({"line": number, "name": name, "phones": phones, "phone_ids": ids,
                            "word2ph": word2ph or [], "text": norm_text})
        line_base += len(lines)
    return entries, rejects


def parse_semantic(files: list[Path]) -> dict[str, list[int]] | None:
    """name -> codes of the official semantic files; None when there are none."""
    if not files:
        return None
    codes: dict[str, list[int]] = {}
    for file in files:
        for offset, line in enumerate(_read_text(file, "--exp-dir").split("\n"), start=1):
            fields = line.rstrip("\r").split("\t")
            if not line.strip() or fields[0] == SEMANTIC_HEADER:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError(f"expected name<TAB>codes, got {len(fields)} field(s)")
                codes[fields[0]] = [int(c) for c in fields[1].split()]
            except ValueError as err:
                print(f"import-gsv: {file.name} line {offset} ignored: {err}")
    return codes


def read_speakers(list_path: Path) -> dict[str, tuple[str, str]]:
    """File name -> (speaker, language) from the original `.list`."""
    from ..text import TextFrontendError, normalize_language

    out = {}
    for line in _read_text(list_path, "--list").splitlines():
        fields = line.split("|")
        if len(fields) == 4:
            try:
                lang = normalize_language(fields[2])
            except TextFrontendError:
                lang = fields[2].strip()
            out[os.path.basename(fields[0].strip().replace("\\", "/"))] = (fields[1].strip(), lang)
    return out


def load_tensor(path: Path) -> torch.Tensor:
    """A tensor from a `.pt` file, read without executing pickled code."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"holds a {type(obj).__name__}, not a tensor")
    return obj


def official_row_features(row: dict[str, Any], exp_dir: str, spec: dict[str, Any],
                          semantic: dict[str, list[int]] | None, sv: bool = False) -> dict[str, Any]:
    """Waveform, HuBERT, BERT (and with `sv`, speaker-verification) features of one official utterance
    (a `datasets.map` function)."""
    folder = Path(exp_dir)
    line, name = row["line"], row["name"]
    out: dict[str, Any] = {"wav": np.zeros(0, np.int16), "num_samples": 0, "duration": 0.0, "spec_frames": 0,
                           "ssl": np.zeros(0, np.float16), "ssl_frames": 0, "ssl_dim": 0,
                           "bert": np.zeros(0, np.float16), "bert_dim": 0, "reject_code": "",
                           "reject_reason": ""}
    if semantic is not None:
        out["semantic"] = np.zeros(0, np.int16)
    if sv:
        out.update(sv_emb=np.zeros(0, np.float32), sv_dim=0)

    def reject(code: str, reason: str) -> dict[str, Any]:
        out.update(reject_code=code, reject_reason=f"line {line} ({name}): {reason}")
        return out

    wav_path = folder / "5-wav32k" / name
    if not wav_path.is_file():
        return reject("missing", f"{wav_path} not found")
    if empty_file(wav_path):
        out.update(reject_code="empty", reject_reason=empty_file_reason(line, wav_path))
        return out
    try:
        wav, rate = soundfile.read(str(wav_path), dtype="int16", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        return reject("unreadable", f"cannot read {wav_path}: {err}")
    if rate != SAMPLING_RATE:
        return reject("unreadable", f"{wav_path} is at {rate} Hz; official 5-wav32k files are "
                      f"{SAMPLING_RATE} Hz")
    wav = wav[:, 0] if wav.shape[1] == 1 else np.round(wav.mean(axis=1)).astype(np.int16)
    code, reason, _ = check_waveform(wav.astype(np.float32) / 32768, line, str(wav_path))
    if code:
        out.update(reject_code=code, reject_reason=reason)
        return out
    frames = spectrogram_frames(len(wav), SpectrogramConfig(**spec))

    ssl_path = folder / "4-cnhubert" / f"{name}.pt"
    if not ssl_path.is_file():
        return reject("ssl", f"{ssl_path} not found")
    try:
        ssl = load_tensor(ssl_path)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        return reject("unreadable", f"{ssl_path} cannot be read safely: {err}")
    if ssl.dim() == 3 and ssl.size(0) == 1:
        ssl = ssl[0]
    if ssl.dim() != 2:
        return reject("ssl", f"{ssl_path} has shape {tuple(ssl.shape)}, expected (1, D, T)")
    if abs(ssl.size(1) - frames) >= MAX_SSL_FRAME_MISMATCH:
        return reject("ssl", f"{ssl_path} has {ssl.size(1)} frames for {frames} audio frames")
    half = ssl.to(torch.float16)
    if not torch.isfinite(half).all():
        return reject("features", f"{ssl_path} holds NaN/inf (or values beyond float16)")

    bert_path = folder / "3-bert" / f"{name}.pt"
    if bert_path.is_file():
        try:
            bert = load_tensor(bert_path)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
            return reject("unreadable", f"{bert_path} cannot be read safely: {err}")
        if bert.dim() != 2 or bert.size(1) != len(row["phone_ids"]):
            return reject("bert", f"{bert_path} has shape {tuple(bert.shape)} for "
                          f"{len(row['phone_ids'])} phones")
        out.update(bert=bert.to(torch.float16).reshape(-1).numpy(), bert_dim=bert.size(0))

    if semantic is not None:
        codes = semantic.get(name)
        if not codes:
            return reject("semantic", "no semantic codes in 6-name2semantic.tsv")
        if abs(len(codes) - ssl.size(1) / 2) > MAX_SEMANTIC_MISMATCH:
            return reject("semantic", f"{len(codes)} semantic codes for {ssl.size(1)} HuBERT frames "
                          "(25 Hz codes should be half as many)")
        if min(codes) < 0 or max(codes) > np.iinfo(np.int16).max:
            return reject("semantic", f"semantic codes outside [0, {np.iinfo(np.int16).max}]")
        out["semantic"] = np.asarray(codes, np.int16)

    if sv:
        sv_path = folder / "7-sv_cn" / f"{name}.pt"
        if not sv_path.is_file():
            return reject("sv", f"{sv_path} not found")
        try:
            emb = load_tensor(sv_path)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
            return reject("unreadable", f"{sv_path} cannot be read safely: {err}")
        if emb.dim() == 2 and emb.size(0) == 1:
            emb = emb[0]
        if emb.dim() != 1 or emb.numel() == 0:
            return reject("sv", f"{sv_path} has shape {tuple(emb.shape)}, expected (1, D)")
        emb = emb.to(torch.float32)
        if not torch.isfinite(emb).all():
            return reject("sv", f"{sv_path} holds NaN/inf")
        out.update(sv_emb=emb.numpy(), sv_dim=emb.numel())
    out.update(wav=wav, num_samples=len(wav), duration=len(wav) / SAMPLING_RATE, spec_frames=frames,
               ssl=half.reshape(-1).numpy(), ssl_frames=ssl.size(1), ssl_dim=ssl.size(0))
    return out


def _reject_odd_dims(dataset: Any, column: str, what: str, cache_file: Path) -> tuple[Any, int]:
    """Mark rows whose feature width differs from the most common one; returns (dataset, width)."""
    pairs = zip(dataset[column], dataset["reject_code"], strict=True)
    dims = Counter(d for d, code in pairs if d and not code)
    if not dims:
        return dataset, 0
    width = dims.most_common(1)[0][0]
    if len(dims) == 1:
        return dataset, width

    def mark(row: dict[str, Any]) -> dict[str, Any]:
        if row["reject_code"] or row[column] in (0, width):
            return {"reject_code": row["reject_code"], "reject_reason": row["reject_reason"]}
        return {"reject_code": {"ssl_dim": "ssl", "bert_dim": "bert", "sv_dim": "sv"}[column],
                "reject_reason": f"line {row['line']} ({row['name']}): {what} width {row[column]}, "
                                 f"the others have {width}"}

    marked = dataset.map(mark, desc=f"{what} widths", cache_file_name=str(cache_file),
                         load_from_cache_file=False, new_fingerprint=f"import-{column}-widths")
    return marked, width


def import_gsv(exp_dir: str | Path, out_dir: str | Path, *, list_path: str | Path | None = None,
               version: str = "v2", hubert_name: str | None = None, val_fraction: float = 0.1,
               val_list: str | Path | None = None, seed: int = 1234, num_proc: int = 1,
               spectrogram_config: SpectrogramConfig | None = None, force: bool = False) -> PrepareResult:
    """Import an official experiment folder into `out_dir` (see the module docstring)."""
    import datasets as hfd

    exp_dir, out_dir = Path(exp_dir), Path(out_dir)
    list_file = Path(list_path) if list_path else None
    val_path = Path(val_list) if val_list else None
    spec_cfg = spectrogram_config or SpectrogramConfig()
    if not exp_dir.exists():
        raise PrepareError(f"--exp-dir {exp_dir}: not found; {EXP_WHAT}")
    if not exp_dir.is_dir():
        raise PrepareError(f"--exp-dir {exp_dir} is a file; {EXP_WHAT}")
    text_files = _part_files(exp_dir, "2-name2text.txt", "2-name2text-*.txt")
    if not text_files:
        raise PrepareError(f"--exp-dir {exp_dir}: no 2-name2text.txt, so not an official experiment folder "
                           f"(or its text step was not run); {EXP_WHAT}")
    for sub in ("4-cnhubert", "5-wav32k"):
        if not (exp_dir / sub).is_dir():
            raise PrepareError(f"--exp-dir {exp_dir}: the folder {sub} is missing; run the official dataset "
                               "formatting (WebUI step 1A) first")
    if val_path is None and not 0 < val_fraction < 1:
        raise PrepareError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    for flag, path, what in (("--list", list_file, "the original .list file (wav_path|speaker|lang|text)"),
                             ("--val-list", val_path, "a text file naming the validation utterances")):
        if path is not None and not path.exists():
            raise PrepareError(f"{flag} {path}: not found; give {what}")
        if path is not None and not path.is_file():
            raise PrepareError(f"{flag} {path} is a folder; give {what}")

    writer = DatasetWriter(out_dir, val_fraction=val_fraction, val_list=val_path, seed=seed,
                           command="import-gsv")
    entries, rejects = parse_name2text(text_files, version)
    total = len(entries) + len(rejects)
    if not entries:
        first = "; ".join(r.reason for r in rejects[:3]) or "the file has no lines"
        raise PrepareError(f"--exp-dir {exp_dir}: no usable line in {', '.join(f.name for f in text_files)} "
                           f"({first}{'; ...' if len(rejects) > 3 else ''}); each line must be "
                           "name<TAB>phones<TAB>word2ph<TAB>text as the official 1-get-text.py writes it")
    writer.check_val_list([e["name"] for e in entries])
    semantic_files = _part_files(exp_dir, "6-name2semantic.tsv", "6-name2semantic-*.tsv")
    features_fp = stable_hash({
        "pipeline": PIPELINE_VERSION, "gsv_accel": __version__, "import": True,
        "symbols": symbol_table_info(version),
        "spectrogram": spec_cfg.__dict__, "exp": tree_stamp(exp_dir), "list": tree_stamp(list_file),
        "exp_path": str(exp_dir.resolve()), "hubert_name": hubert_name,
    })
    split_fp = writer.split_fingerprint()
    if not force:
        reused = writer.reuse(total, features_fp)
        if reused is not None:
            return reused
    semantic = parse_semantic(semantic_files)
    sv = (exp_dir / "7-sv_cn").is_dir()
    speakers = read_speakers(list_file) if list_file else {}
    for entry in entries:
        default_lang = "zh" if (exp_dir / "3-bert" / f"{entry['name']}.pt").is_file() else ""
        entry["speaker"], entry["lang"] = speakers.get(entry["name"], (exp_dir.name, default_lang))
        entry["path"] = f"5-wav32k/{entry['name']}"

    def build(work: Path) -> tuple[Any, dict[str, Any], list[Reject]]:
        extra = {"ssl_dim": hfd.Value("int32"), "bert_dim": hfd.Value("int32"),
                 "reject_code": hfd.Value("string"), "reject_reason": hfd.Value("string")}
        if sv:
            extra["sv_dim"] = hfd.Value("int32")
        stages = ("ssl", "bert") + (("semantic",) if semantic is not None else ()) + (("sv",) if sv else ())
        schema = stage_features("entry", "text", "audio", *stages)
        schema = hfd.Features({k: v for k, v in schema.items() if k in SAVED_COLUMNS} | extra)
        names = ("line", "name", "speaker", "lang", "path", "text", "phones", "phone_ids", "word2ph")
        columns = {key: [e[key] for e in entries] for key in names}
        ds = hfd.Dataset.from_dict(columns, features=hfd.Features({k: schema[k] for k in columns}))
        ds = ds.map(official_row_features,
                    fn_kwargs={"exp_dir": str(exp_dir), "spec": spec_cfg.__dict__, "semantic": semantic,
                               "sv": sv},
                    num_proc=min(num_proc, len(entries)) if num_proc > 1 else None, features=schema,
                    writer_batch_size=64, cache_file_name=str(work / "import.arrow"),
                    load_from_cache_file=False,
                    new_fingerprint=f"{features_fp[:16]}-import", desc="import")
        ds, ssl_dim = _reject_odd_dims(ds, "ssl_dim", "HuBERT feature", work / "ssl-widths.arrow")
        ds, bert_dim = _reject_odd_dims(ds, "bert_dim", "BERT feature", work / "bert-widths.arrow")
        sv_dim = 0
        if sv:
            ds, sv_dim = _reject_odd_dims(ds, "sv_dim", "speaker-verification embedding",
                                          work / "sv-widths.arrow")
        rejects.extend(rejects_of(ds, path_column="name"))
        good = kept_indices(ds)
        if len(good) < 2:
            raise too_few_usable(f"--exp-dir {exp_dir}", len(good), total, rejects)
        ds = ds.select(good, keep_in_memory=True)
        ds = ds.select_columns([c for c in SAVED_COLUMNS if c in ds.column_names])
        meta = build_meta(
            source={"kind": "gsv_exp", "path": str(exp_dir)}, spec_cfg=spec_cfg, version=version,
            ssl={"model": hubert_name or "unknown (imported)", "hidden_size": ssl_dim},
            semantic=None if semantic is None else {"frame_rate": "25hz", "codebook_size": 1024,
                                                    "s2_model": "unknown (imported)"},
            bert=None if not bert_dim else {"model": "unknown (imported)", "hidden_size": bert_dim,
                                            "dtype": "float16", "languages": ["zh"]},
            sv=None if not sv_dim else {"model": "unknown (imported)", "embedding_dim": sv_dim,
                                        "dtype": "float32", "input": "7-sv_cn"},
            fingerprint={"features": features_fp, "split": split_fp})
        return ds, meta, rejects

    return writer.write(total, build)


def add_import_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--exp-dir", required=True, type=Path, help="official experiment folder (logs/<exp>)")
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder")
    parser.add_argument("--list", type=Path, help="the original .list, for speaker and language columns")
    parser.add_argument("--hubert-name", help="name of the HuBERT model the features came from (metadata)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val-fraction", type=float, default=0.1, help="validation share (default 0.1)")
    split.add_argument("--val-list", type=Path, help="file naming the validation utterances (one per line)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the validation split")
    parser.add_argument("--num-proc", type=int, default=1, help="processes reading the files (default 1)")
    parser.add_argument("--version", default="v2", choices=["v1", "v2"], help="symbol table (default v2)")
    parser.add_argument("--force", action="store_true", help="redo even if the output is up to date")
    return parser


def run_import(args: argparse.Namespace) -> int:
    """`gsv-accel import-gsv`; `PrepareError` (bad input) propagates to `gsv_accel.cli.main`, which
    prints it on one line and exits with `EXIT_CODE_USER_ERROR`."""
    import_gsv(args.exp_dir, args.out, list_path=args.list, version=args.version,
               hubert_name=args.hubert_name, val_fraction=args.val_fraction, val_list=args.val_list,
               seed=args.seed, num_proc=args.num_proc, force=args.force)
    return 0

