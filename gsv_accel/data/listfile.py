"""The `.list` input of `gsv-accel prepare` and the bookkeeping of rejected lines.

`parse_list` reads a GPT-SoVITS `.list` file (`wav_path|speaker|lang|text`, UTF-8, paths relative to the
list's folder) into entries and rejects; `Reject`/`REJECT_CODES` describe a rejected line, `rejects_of`
collects them from a dataset's `reject_code`/`reject_reason` columns, `write_rejected`/`read_rejected`
keep them in the output's `rejected.tsv` and `report` prints the summary. `PrepareError` is what every
part of the preparation raises when the job cannot produce a dataset.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from .features import MAX_DURATION, MAX_PEAK, MIN_DURATION

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
    "empty": "audio file is empty (0 bytes, or no samples)",
    "silent": "audio is silent",
    "too_short": f"audio not longer than {MIN_DURATION} s",
    "too_long": f"audio not shorter than {MAX_DURATION} s",
    "peak": f"peak above {MAX_PEAK}",
    "features": "HuBERT features are not finite",
    "bert": "BERT features do not fit the phones",
    "semantic": "semantic codes missing or inconsistent",
    "ssl": "HuBERT features missing or inconsistent",
    "sv": "speaker-verification embedding missing or inconsistent",
}


class PrepareError(Exception):
    """The job cannot produce a dataset (bad arguments, unusable model, nothing usable left)."""


@dataclass
class Reject:
    line: int
    path: str
    code: str
    reason: str


def parse_list(list_path: Path) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Lines of a `.list` file -> entries (line, path, file, name, speaker, lang, raw_text) and rejects."""
    from ..text import TextFrontendError, normalize_language

    try:
        raw = list_path.read_bytes()
    except OSError as err:
        raise PrepareError(f"--list {list_path}: cannot be read ({err.strerror or err}); check the path and "
                           "its permissions") from err
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


def write_rejected(path: Path, rejects: Sequence[Reject]) -> None:
    """`rejected.tsv`: a header, then line, path, reason code and reason of each reject, by line."""
    def write(f: Any) -> None:
        f.write("line\tpath\treason_code\treason\n")
        for r in sorted(rejects, key=lambda r: r.line):
            clean = r.reason.replace("\t", " ").replace("\n", " ")
            f.write(f"{r.line}\t{r.path}\t{r.code}\t{clean}\n")

    atomic_write(path, write)


def read_rejected(path: Path) -> list[Reject]:
    rejects = []
    with open(path, encoding="utf-8") as f:
        next(f, None)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                rejects.append(Reject(int(parts[0]), parts[1], parts[2], parts[3]))
    return rejects


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


def too_few_usable(where: str, kept: int, total: int, rejects: Sequence[Reject]) -> PrepareError:
    """The error when fewer than 2 utterances are left (one is needed for training, one for validation).
    Nothing is written then, so the message itself gives the reject counts and the first reasons."""
    counts = dict(Counter(r.code for r in rejects))
    first = "; ".join(r.reason for r in sorted(rejects, key=lambda r: r.line)[:3])
    more = "; ..." if len(rejects) > 3 else ""
    return PrepareError(f"{where}: only {kept} usable utterance(s) of {total} left, at least 2 are needed "
                        f"(rejected: {counts}: {first}{more}); fix or replace those files")


def kept_indices(dataset: Any) -> list[int]:
    return [i for i, code in enumerate(dataset["reject_code"]) if not code]

