"""Fingerprints that decide whether an existing prepared dataset can be reused.

The features fingerprint (built by `prepare` and `import-gsv` with `stable_hash`) covers everything the
features depend on: input bytes, `file_stamp`/`tree_stamp` (size and modification time) of audio and
model files, the settings and the pipeline version. The split fingerprint covers the split settings
only, so that a changed split re-splits the stored rows without recomputing features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .. import __version__


def stable_hash(obj: Any) -> str:
    """SHA-256 of `obj` as sorted-key JSON (other objects by `str`)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_stamp(path: Path) -> list[Any] | None:
    """[size, mtime_ns] of a file, or None when it cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def tree_stamp(path: Path | None) -> Any:
    """Names, sizes and modification times of a model folder or file (cheap; content is not read)."""
    if path is None:
        return None
    if path.is_file():
        return [path.name, file_stamp(path)]
    return sorted([str(p.relative_to(path)), file_stamp(p)] for p in path.rglob("*") if p.is_file())


def symbol_table_info(version: str) -> dict[str, Any]:
    from ..text import symbols

    table = symbols(version)
    return {"symbols_version": version, "symbols_count": len(table),
            "symbols_sha256": hashlib.sha256("\n".join(table).encode()).hexdigest(),
            "frontend": f"gsv_accel {__version__}"}


def split_fingerprint(val_fraction: float, val_list: Path | None, seed: int) -> str:
    val_bytes = hashlib.sha256(val_list.read_bytes()).hexdigest() if val_list is not None else None
    return stable_hash({"val_fraction": val_fraction, "val_list": val_bytes, "seed": seed})

