"""Atomic file writes: readers see either the old file or the complete new one, never a half-written one.

`atomic_write(path, writer)` calls `writer(f)` on a new temporary file in the same folder (created with
O_EXCL, so nothing is ever clobbered), flushes and fsyncs it, `os.replace`s it onto `path` and fsyncs
the folder so that the rename survives a crash. If `writer` raises, the temporary file is removed and
`path` is left as it was. `write_text_atomic` and `write_json_atomic` are the common cases.

This is the library's one implementation: checkpoint manifests, dataset metadata, weight exports
(`gsv_accel.formats.save_atomic`) and the run folder's small files all go through it. Folders are
swapped with `os.replace` where they are written (checkpoints, datasets), then `fsync_dir`.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "fsync_dir", "write_json_atomic", "write_text_atomic"]


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make renames inside `folder` durable (POSIX; directories cannot be opened this way on Windows)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[IO[Any]], Any], *, binary: bool = False,
                 encoding: str = "utf-8", newline: str | None = None) -> Path:
    """Write `path` through `writer(file)` atomically (see the module docstring); returns the path.

    The file is opened in text mode with `encoding` and `newline` (as `open` takes them), or in binary
    mode with `binary=True`. The parent folder must exist.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # O_EXCL: never clobber anything; mode 0o666 lets the umask decide, as for any new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    done = False
    try:
        try:
            f = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding=encoding, newline=newline)
        except BaseException:
            os.close(fd)
            raise
        with f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """`Path.write_text`, atomically (no newline translation: the text is written as given)."""
    return atomic_write(path, lambda f: f.write(text), encoding=encoding, newline="")


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2,
                      **dump_kwargs: Any) -> Path:
    """`json.dump(data, f, indent=indent, **dump_kwargs)` into `path`, atomically (UTF-8)."""
    return atomic_write(path, lambda f: json.dump(data, f, indent=indent, **dump_kwargs))
