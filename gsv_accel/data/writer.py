"""Writing a prepared dataset: `DatasetWriter`, the one output path of `prepare` and `import-gsv`.

A job opens its output folder with `DatasetWriter(out_dir, ...)`, which first undoes what an
interrupted run left (`recover_interrupted`) and refuses to replace a folder that is not a prepared
dataset (`check_replaceable`). `reuse(total, features_fp)` returns the existing output when its
fingerprints match (re-splitting the stored rows when only the split settings changed). `write(total,
build)` builds the dataset in a temporary folder beside the output (`build(work)` gets a scratch folder
for its `datasets` cache files and returns the kept rows ordered by line, the metadata and the
rejects), splits it (`split_names`), saves the `DatasetDict`, `gsv_meta.json` and `rejected.tsv`
(`save_dataset`) and only then swaps it into place (`replace_dir`): an interrupted run leaves the
previous dataset intact (a run killed exactly between the two renames leaves it as `.<name>.old-*`,
which the next run restores). Run one job per output folder at a time.

`build_meta` assembles the metadata both jobs record.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import fsync_dir, write_json_atomic
from ..audio import SpectrogramConfig
from .dataset import FORMAT_NAME, FORMAT_VERSION, META_FILE, read_meta
from .features import (
    HUBERT_INPUT_SCALE,
    MAX_DURATION,
    MAX_PEAK,
    MIN_DURATION,
    MIX_ALPHA,
    MIX_MAXX,
    PIPELINE_VERSION,
    SAMPLING_RATE,
    SSL_SAMPLING_RATE,
    WAV_INT16_SCALE,
)
from .fingerprint import split_fingerprint, symbol_table_info
from .listfile import REJECTED_FILE, PrepareError, Reject, read_rejected, report, write_rejected


@dataclass
class PrepareResult:
    out_dir: Path
    counts: dict[str, int]
    rejected: list[Reject] = field(default_factory=list)
    reused: bool = False


# What `DatasetWriter.write`'s `build` returns: (kept rows ordered by line, metadata, rejects).
Built = tuple[Any, dict[str, Any], list[Reject]]


class DatasetWriter:
    """The output folder of one preparation job (see the module docstring).

    `command` names the job in printed messages ("prepare", "import-gsv").
    """

    def __init__(self, out_dir: str | Path, *, val_fraction: float, val_list: Path | None, seed: int,
                 command: str = "prepare") -> None:
        self.out_dir = Path(out_dir)
        self.val_fraction = val_fraction
        self.val_list = val_list
        self.seed = seed
        self.command = command
        self._split_fp: str | None = None
        recover_interrupted(self.out_dir)
        check_replaceable(self.out_dir)

    def split_fingerprint(self) -> str:
        """Fingerprint of the split settings (reads the validation list once)."""
        if self._split_fp is None:
            self._split_fp = split_fingerprint(self.val_fraction, self.val_list, self.seed)
        return self._split_fp

    def check_val_list(self, names: Sequence[str]) -> None:
        """Before any work: `--val-list` must name some, but not all, of the input's utterances."""
        if self.val_list is None:
            return
        wanted = read_val_list(self.val_list)
        if not wanted:
            raise PrepareError(f"--val-list {self.val_list} names no utterance; write one file name per line")
        found = wanted & set(names)
        if not found:
            shown = ", ".join(sorted(wanted)[:3]) + (", ..." if len(wanted) > 3 else "")
            raise PrepareError(f"--val-list {self.val_list}: none of its {len(wanted)} name(s) ({shown}) "
                               "is an utterance of the input; give file names as they appear in the input")
        if found >= set(names):
            raise PrepareError(f"--val-list {self.val_list} names every utterance of the input; leave at "
                               "least one for training")

    def reuse(self, total: int, features_fp: str) -> PrepareResult | None:
        """The existing output when its fingerprints match; when only the split settings changed, the
        stored rows are re-split into a fresh output without recomputing features."""
        out_dir, command = self.out_dir, self.command
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
        split_fp = self.split_fingerprint()
        if fingerprint.get("split") == split_fp:
            print(f"{command}: {out_dir} is up to date with its inputs; nothing to do (--force to redo)")
            return PrepareResult(out_dir, meta["counts"], rejects, reused=True)
        print(f"{command}: features are up to date; only the train/validation split changes")
        meta["fingerprint"]["split"] = split_fp

        def stored_rows(work: Path) -> Built:
            import datasets

            old = datasets.load_from_disk(str(out_dir))
            rows = datasets.concatenate_datasets([old["train"], old["validation"]])
            lines = list(rows["line"])
            rows = rows.select(sorted(range(len(rows)), key=lambda i: lines[i]), keep_in_memory=True)
            return rows, meta, rejects

        result = self.write(total, stored_rows)
        result.reused = True
        return result

    def write(self, total: int, build: Callable[[Path], Built]) -> PrepareResult:
        """Build in a temporary folder, save, swap into place, print the report (`total`: input lines)."""
        new_parents = _missing_parents(self.out_dir)
        tmp = new_temp_dir(self.out_dir)
        work = tmp / "work"
        work.mkdir()
        try:
            dataset, meta, rejects = build(work)
            counts = save_dataset(tmp, dataset, meta, rejects, self.val_fraction, self.val_list, self.seed)
            del dataset  # release the memory-mapped work files before removing them
            shutil.rmtree(work)
            replace_dir(tmp, self.out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.out_dir.exists():  # failed: remove the (still empty) parent folders made for it
                for folder in new_parents:
                    try:
                        folder.rmdir()
                    except OSError:
                        break
        report(self.out_dir, total, counts, rejects, self.command)
        return PrepareResult(self.out_dir, counts, sorted(rejects, key=lambda r: r.line))


# --------------------------------------------------------------------------- split


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


# --------------------------------------------------------------------------- write and swap


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
    """Only a prepared dataset (or an empty folder) may be replaced by a new output, and the output
    must be able to become a folder (no file in its place or in place of a parent folder)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PrepareError(f"--out {out_dir} is a file, not a dataset folder; choose another --out")
    if out_dir.exists() and not (out_dir / META_FILE).is_file() and any(out_dir.iterdir()):
        raise PrepareError(f"--out {out_dir} exists and is not a prepared gsv_accel dataset (no "
                           f"{META_FILE}); refusing to replace it: choose another --out or remove it")
    parent = out_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise PrepareError(f"--out {out_dir}: {parent} is a file, so the output folder cannot be created; "
                           "choose another --out")


def _missing_parents(out_dir: Path) -> list[Path]:
    """The parent folders of `out_dir` that do not exist yet, deepest first."""
    missing = []
    parent = out_dir.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    return missing


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
    fsync_dir(out_dir.parent)
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
    write_json_atomic(tmp / META_FILE, meta, ensure_ascii=False)
    write_rejected(tmp / REJECTED_FILE, rejects)
    return counts


def build_meta(*, source: dict[str, Any], spec_cfg: SpectrogramConfig, version: str, ssl: dict[str, Any],
               semantic: dict[str, Any] | None, bert: dict[str, Any] | None,
               fingerprint: dict[str, str], sv: dict[str, Any] | None = None) -> dict[str, Any]:
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
        "sv": sv,
        "features_version": {"pipeline": PIPELINE_VERSION},
        "fingerprint": fingerprint,
    }
