"""Complete, verifiable training checkpoints on top of Accelerate's `save_state`/`load_state`.

Layout inside a run folder::

    checkpoints/
      step_00000120/          one complete checkpoint: Accelerate's files + manifest.json
      step_00000240/
      .incomplete-step_00000360/   being written (or left by a crash): never resumed from

A checkpoint is written into an `.incomplete-*` folder by every process (`save_state` must run on all
of them), then the main process hashes every file, writes `manifest.json` LAST (atomically), and
renames the folder to its final name. A folder is complete only if its manifest exists, parses and
lists files whose sizes (and, when verified, sha256 hashes) match. Old checkpoints are deleted only
after the new one is complete: a folder is first renamed to `.deleting-*` (so a crash during
deletion never leaves a complete-looking partial folder) and then removed.

Accelerate's `automatic_checkpoint_naming` is deliberately not used: it deletes old folders before
writing the new one and does not restore its counter on resume (accelerate issues 3306, 1601).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
INCOMPLETE_PREFIX = ".incomplete-"
DELETING_PREFIX = ".deleting-"
_NAME_RE = re.compile(r"^step_(\d{8})$")

logger = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete or corrupt; the message names the folder and the file."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` so that readers see either the old file or the complete new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def library_versions() -> dict[str, str]:
    import accelerate
    import torch

    from gsv_accel import __version__

    return {"gsv_accel": __version__, "torch": torch.__version__, "accelerate": accelerate.__version__,
            "python": platform.python_version()}


@dataclass
class CheckpointInfo:
    path: Path
    manifest: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def epoch(self) -> int:
        return int(self.manifest["epoch"])

    @property
    def metrics(self) -> dict[str, float]:
        return self.manifest.get("metrics", {})


def build_manifest(folder: Path, *, step: int, epoch: int, metrics: dict[str, float],
                   config_fingerprint: str, world_size: int, extra: dict[str, Any],
                   config: dict[str, Any] | None = None) -> dict[str, Any]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    return {
        "format": MANIFEST_FORMAT,
        "step": step,
        "epoch": epoch,
        "metrics": metrics,
        "config_fingerprint": config_fingerprint,
        # The resolved run config: a resume compares against it (model shape must not change).
        "config": config or {},
        "world_size": world_size,
        "versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
        "extra": extra,
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {MANIFEST_NAME}; the checkpoint was never completed")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable manifest ({err})") from err
    for key in ("format", "step", "epoch", "files"):
        if key not in manifest:
            raise CheckpointError(f"{path}: manifest lacks '{key}'")
    return manifest


def verify_checkpoint(folder: str | Path, *, hashes: bool = True) -> CheckpointInfo:
    """Check that every file the manifest lists is present with the recorded size (and hash).

    Raises CheckpointError naming the first bad file; returns the checkpoint's info when valid.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for rel, expected in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"{folder}: file {rel} listed in the manifest is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{folder}: file {rel} has {size} bytes, the manifest says "
                                  f"{expected['bytes']} (truncated or overwritten)")
        if hashes and sha256_of(path) != expected["sha256"]:
            raise CheckpointError(f"{folder}: file {rel} does not match its sha256 in the manifest "
                                  "(corrupted)")
    return CheckpointInfo(folder, manifest)


@dataclass
class CheckpointManager:
    """Saves, finds, verifies and prunes the checkpoints of one run folder.

    `keep_last` most recent complete checkpoints are kept, plus the `keep_best` best by
    `best_metric` (mode `min` or `max`), counted separately.
    """

    run_dir: Path
    keep_last: int = 3
    keep_best: int = 1
    best_metric: str = "val/mel_loss"
    best_mode: str = "min"
    root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.root = self.run_dir / "checkpoints"
        if self.keep_last < 1:
            raise ValueError("checkpoint.keep_last must be >= 1: the newest checkpoint is what resumes")
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"best mode must be 'min' or 'max', got {self.best_mode!r}")

    # ---- saving -------------------------------------------------------------------------------
    def save(self, accelerator, *, step: int, epoch: int, metrics: dict[str, float] | None = None,
             config_fingerprint: str = "", config: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None) -> Path:
        """Write a complete checkpoint of everything registered with `accelerator`. Call on ALL
        processes. Returns the final folder."""
        final = self.root / checkpoint_name(step)
        staging = self.root / f"{INCOMPLETE_PREFIX}{final.name}"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(output_dir=str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            manifest = build_manifest(staging, step=step, epoch=epoch, metrics=dict(metrics or {}),
                                      config_fingerprint=config_fingerprint,
                                      world_size=accelerator.num_processes, extra=dict(extra or {}),
                                      config=config)
            write_json_atomic(staging / MANIFEST_NAME, manifest)
            if final.exists():
                # Same step saved twice (e.g. an end-of-epoch save followed by the final save):
                # the new complete copy replaces the old one only once it is itself complete.
                self._delete(final)
            os.replace(staging, final)
            _fsync_dir(self.root)
            self.prune()
        accelerator.wait_for_everyone()
        return final

    # ---- finding ------------------------------------------------------------------------------
    def candidates(self) -> list[Path]:
        """Folders with a final checkpoint name, newest step first (completeness not yet checked)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name)]
        return sorted(found, key=lambda p: int(_NAME_RE.match(p.name).group(1)), reverse=True)

    def complete(self) -> list[CheckpointInfo]:
        """Checkpoints whose manifest is valid and whose files have the recorded sizes (newest first)."""
        result = []
        for folder in self.candidates():
            try:
                result.append(verify_checkpoint(folder, hashes=False))
            except CheckpointError:
                continue
        return result

    def latest_valid(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies fully (hashes included); bad ones are skipped with a
        warning naming what is wrong."""
        for folder in self.candidates():
            try:
                return verify_checkpoint(folder, hashes=True)
            except CheckpointError as err:
                logger.warning("skipping checkpoint: %s", err)
        return None

    def best(self) -> CheckpointInfo | None:
        scored = [c for c in self.complete() if self.best_metric in c.metrics]
        if not scored:
            return None
        pick = min if self.best_mode == "min" else max
        return pick(scored, key=lambda c: c.metrics[self.best_metric])

    # ---- pruning ------------------------------------------------------------------------------
    def prune(self) -> list[Path]:
        """Delete complete checkpoints that are neither among the last K nor the best N. Incomplete
        or corrupt folders are left alone (they are evidence, and never resumed from)."""
        complete = self.complete()
        keep = {c.path for c in complete[: self.keep_last]}
        scored = [c for c in complete if self.best_metric in c.metrics]
        scored.sort(key=lambda c: c.metrics[self.best_metric], reverse=self.best_mode == "max")
        keep.update(c.path for c in scored[: self.keep_best])
        removed = []
        for info in complete:
            if info.path not in keep:
                self._delete(info.path)
                removed.append(info.path)
        return removed

    def clean_stale(self) -> None:
        """Remove staging/deleting folders left by a crash (main process, at start-up)."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            if folder.name.startswith((INCOMPLETE_PREFIX, DELETING_PREFIX)):
                logger.warning("removing leftover folder %s from an interrupted save or delete", folder)
                shutil.rmtree(folder, ignore_errors=True)

    def _delete(self, folder: Path) -> None:
        doomed = folder.with_name(f"{DELETING_PREFIX}{folder.name}")
        if doomed.exists():
            shutil.rmtree(doomed)
        os.replace(folder, doomed)
        shutil.rmtree(doomed)
