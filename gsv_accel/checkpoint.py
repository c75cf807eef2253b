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

A save that cannot be written (disk full, I/O error, permission) raises `CheckpointWriteError` on
EVERY process (each process catches its own error, then one all-reduced flag decides), after the main
process removed the staging folder: no complete-looking partial is left and the earlier checkpoints
are untouched. Failing to delete an old checkpoint afterwards is only a warning.

With `background=True` (config `checkpoint.async_save`, the default) the training loop only waits for
every process's tiny RNG file and a host-memory copy of the buffers and small state
(`gsv_accel.host_copy`); ONE writer thread of the main process copies the parameters and optimizer
states (the next optimizer step waits until it has), then writes Accelerate's files (same names and
bytes as `save_state`) into the staging folder, fsyncs them, hashes, writes the manifest, renames and
prunes, exactly as above, while training goes on. The rules stay: a background write that fails or is killed
leaves only a `.incomplete-*` folder (removed on failure, at start-up after a kill); the next save
waits for the previous one (`wait`, a collective) and raises its error as `CheckpointWriteError` on
every process; reading the checkpoint folder (resume, rollback, best) waits for it; the session waits
at the end (final and SIGTERM saves); the writer is not a daemon, so the process never exits halfway
through a write. DeepSpeed engines, FSDP, prepared data loaders, save hooks and `save_on_each_node`
keep the synchronous `save_state` (their files are written by their own code).

Accelerate's `automatic_checkpoint_naming` is deliberately not used: it deletes old folders before
writing the new one and does not restore its counter on resume (accelerate issues 3306, 1601).

Fault injection (tests and `benchmarks/soak_s2.py` only; inert unless the variable is set):
`GSV_ACCEL_FAULT=point:step[@rank][,point:step[@rank]...]` makes the save of checkpoint `step` (on
`rank`, default every process) fail at `point`:

* `kill_in_save`: SIGKILL after Accelerate wrote the staging folder, before the manifest;
* `kill_after_manifest`: SIGKILL after the manifest was written, before the folder is renamed;
* `kill_in_prune`: SIGKILL while old checkpoint `step` is being deleted (renamed to `.deleting-*`,
  files not yet removed);
* `enospc_in_save`: `OSError(ENOSPC)` after the staging files were written, as a full disk would;
* `stall_in_save`: the background writer (after it wrote the files, before the manifest) waits until
  the file named by `GSV_ACCEL_FAULT_RELEASE` exists (at most `STALL_LIMIT_S`), so a test can kill or
  signal the process while a background write is in flight.

In a background save the main process's faults fire in the writer thread, other ranks' in their
synchronous part.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import fsync_dir, write_json_atomic
from .distributed import any_process
from .host_copy import HostCopier, HostCopy, storage_key

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
INCOMPLETE_PREFIX = ".incomplete-"
DELETING_PREFIX = ".deleting-"
CORRUPT_PREFIX = "corrupt-"
_NAME_RE = re.compile(r"^step_(\d{8})$")
FAULT_ENV = "GSV_ACCEL_FAULT"
FAULT_POINTS = ("kill_in_save", "kill_after_manifest", "kill_in_prune", "enospc_in_save", "stall_in_save")
FAULT_RELEASE_ENV = "GSV_ACCEL_FAULT_RELEASE"
STALL_LIMIT_S = 300.0
# Below this many free bytes after a failed write, the failure is reported as a full disk (torch.save
# reports ENOSPC as a RuntimeError that does not say so).
DISK_FULL_FREE_BYTES = 1 << 20

logger = logging.getLogger(__name__)


class CheckpointError(Exception):
    """A checkpoint is missing, incomplete or corrupt; the message names the folder and the file."""


class CheckpointWriteError(Exception):
    """A checkpoint could not be written (disk full, I/O error); raised on every process. The staging
    folder was removed and the earlier checkpoints are intact."""

    def __init__(self, message: str, folder: Path, disk_full: bool, step: int | None = None) -> None:
        super().__init__(message)
        self.folder = folder
        self.disk_full = disk_full
        self.step = step  # the checkpoint that failed (a background one fails while training goes on)


def _write_errors() -> tuple[type[BaseException], ...]:
    """What a failed write raises: OSError from Python, RuntimeError from torch.save's zip writer,
    SafetensorError from safetensors."""
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


def fault_point(point: str, step: int, rank: int = 0) -> None:
    """Fault injection for the tests and the soak run (see the module docstring); does nothing
    unless GSV_ACCEL_FAULT names this point and step (and rank)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    for entry in spec.split(","):
        name, _, where = entry.strip().partition(":")
        at_step, _, at_rank = where.partition("@")
        if name not in FAULT_POINTS or not at_step.isdigit():
            raise ValueError(f"{FAULT_ENV}={spec}: expected point:step[@rank] with a point among "
                             f"{', '.join(FAULT_POINTS)}")
        if name != point or int(at_step) != step or (at_rank and int(at_rank) != rank):
            continue
        logger.warning("%s=%s: injecting %s at step %d", FAULT_ENV, spec, point, step)
        if point.startswith("kill_"):
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "enospc_in_save":
            raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAULT_ENV})")
        if point == "stall_in_save":
            _stall_until_released()


def _stall_until_released() -> None:
    release = os.environ.get(FAULT_RELEASE_ENV)
    deadline = time.monotonic() + STALL_LIMIT_S
    while time.monotonic() < deadline and not (release and Path(release).exists()):
        time.sleep(0.02)


def _looks_like_disk_full(err: BaseException, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(err).lower()
    if "no space left" in text or "quota exceeded" in text or "os error 28" in text:
        return True
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_FREE_BYTES
    except OSError:
        return False


def fsync_files(folder: Path) -> None:
    """fsync every file under `folder` (before its manifest is written)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def nonfinite_model_tensors(files: list[tuple[str, Any]]) -> list[str]:
    """`file:key` of the floating-point model tensors (the `.safetensors` entries of a host copy's
    `(file name, state dict)` list) that hold NaN/inf."""
    return [f"{name}:{key}" for name, state in files if name.endswith(".safetensors")
            for key, tensor in state.items()
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
            and not torch.isfinite(tensor).all()]


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
                   config: dict[str, Any] | None = None, best: bool = False) -> dict[str, Any]:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
    return {
        "format": MANIFEST_FORMAT,
        "step": step,
        "epoch": epoch,
        "metrics": metrics,
        # Saved because validation improved (by the plateau controller's rule, min_delta included).
        "best": bool(best),
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
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path}: malformed manifest (a JSON {type(manifest).__name__}, not an object)")
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

    `keep_last` most recent complete checkpoints are kept, plus the `keep_best` newest checkpoints
    saved as a new best, counted separately. Which checkpoint is "best" is not decided here: the
    plateau controller decides (its mode and min_delta), the session saves with `best=True` and
    names the controller's best step in `prune(protect=...)`; each best save improved on all earlier
    ones, so the newest flagged checkpoints are the best ones.
    """

    run_dir: Path
    keep_last: int = 3
    keep_best: int = 1
    root: Path = field(init=False)
    # The background save in flight: its writer thread (main process) and staging folder (every process).
    _writer: threading.Thread | None = field(init=False, default=None, repr=False)
    _writer_error: BaseException | None = field(init=False, default=None, repr=False)
    _pending_staging: Path | None = field(init=False, default=None, repr=False)
    _copier: HostCopier = field(init=False, default_factory=HostCopier, repr=False)
    _told_synchronous: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.root = self.run_dir / "checkpoints"
        if self.keep_last < 1:
            raise ValueError("checkpoint.keep_last must be >= 1: the newest checkpoint is what resumes")

    # ---- saving -------------------------------------------------------------------------------
    def save(self, accelerator, *, step: int, epoch: int, metrics: dict[str, float] | None = None,
             config_fingerprint: str = "", config: dict[str, Any] | None = None,
             extra: dict[str, Any] | None = None, extra_states: dict[str, Any] | None = None,
             best: bool = False, protect: tuple[int, ...] = (), background: bool = False,
             refuse_nonfinite: bool = False) -> Path:
        """Write a complete checkpoint of everything registered with `accelerator`. Call on ALL
        processes. Returns the final folder (with `background`, published later: see `wait`).

        `extra_states` maps a subfolder name to another Accelerator (e.g. the discriminator's own
        DeepSpeed engine) whose `save_state` goes into that subfolder, before the manifest. `best`
        marks a checkpoint of a new best validation; `protect` names steps pruning must keep.
        `background`: return once every process wrote its RNG file and the main process handed a
        host copy of the state to its writer thread, which writes and publishes it (module
        docstring). First waits for the previous background save and raises its error, if any.
        `refuse_nonfinite`: a background writer that finds NaN/inf in the host copy of the models
        logs it and publishes nothing (the caller checks the weights itself before a synchronous save;
        on the loop that check would cost as much as the copy)."""
        self.wait(accelerator)
        final = self.root / checkpoint_name(step)
        staging = self.root / f"{INCOMPLETE_PREFIX}{final.name}"
        rank = accelerator.process_index
        background = background and self.writes_in_background(accelerator, extra_states)
        error: BaseException | None = None
        replaced: Path | None = None
        if accelerator.is_main_process:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                if staging.exists():
                    shutil.rmtree(staging)
            except OSError as err:
                error = err
        accelerator.wait_for_everyone()
        manifest_args = dict(epoch=epoch, metrics=dict(metrics or {}), config_fingerprint=config_fingerprint,
                             world_size=accelerator.num_processes, extra=dict(extra or {}), config=config,
                             best=best)
        if error is None:
            try:
                if background:
                    # On the loop: this process's RNG file (the RNG must be read now) and, on the main
                    # process, the host copy of everything else.
                    from accelerate.checkpointing import save_accelerator_state

                    staging.mkdir(parents=True, exist_ok=True)
                    save_accelerator_state(str(staging), [], [], [], [], rank, accelerator.step, None)
                else:
                    accelerator.save_state(output_dir=str(staging))
                    for sub, other in (extra_states or {}).items():
                        other.save_state(output_dir=str(staging / sub))
                if not (background and accelerator.is_main_process):  # the main writer's fire in its thread
                    fault_point("enospc_in_save", step, rank)
                    fault_point("kill_in_save", step, rank)
            except _write_errors() as err:
                error = err
        # Every process learns whether any failed before anyone goes on (no process waits forever).
        # In a background save this is also the point after which every rank's RNG file is written.
        self._raise_if_failed(accelerator, error, staging)
        if background:
            if accelerator.is_main_process:
                host = self._host_copy(accelerator)
                self._start_writer(host, staging, final, step, rank, manifest_args, protect, refuse_nonfinite)
            self._pending_staging = staging
            return final
        if accelerator.is_main_process:
            try:
                replaced = self._publish(staging, final, step, rank, manifest_args)
            except OSError as err:
                error = err
        self._raise_if_failed(accelerator, error, staging)
        if accelerator.is_main_process:
            self._after_publish(replaced, protect)
        accelerator.wait_for_everyone()
        return final

    def _publish(self, staging: Path, final: Path, step: int, rank: int, manifest_args: dict[str, Any]
                 ) -> Path | None:
        """Hash the staging folder, write the manifest LAST, rename the folder to its final name.
        Returns the replaced complete copy of the same step, to delete (or None)."""
        manifest = build_manifest(staging, step=step, **manifest_args)
        write_json_atomic(staging / MANIFEST_NAME, manifest, sort_keys=True)
        fault_point("kill_after_manifest", step, rank)
        # Same step saved twice (e.g. a best save followed by the final save): the old copy is renamed
        # away only now, and removed once the new one is in place.
        replaced = self._set_aside(final) if final.exists() else None
        try:
            os.replace(staging, final)
        except OSError:
            if replaced is not None and not final.exists():
                os.replace(replaced, final)  # put the old complete copy back
            raise
        fsync_dir(self.root)
        return replaced

    def _after_publish(self, replaced: Path | None, protect: tuple[int, ...]) -> None:
        if replaced is not None:
            try:
                self._remove(replaced)
            except OSError as err:
                logger.warning("could not delete the replaced copy %s: %s", replaced, err)
        self.prune(protect=protect)

    # ---- background saves ----------------------------------------------------------------------
    def writes_in_background(self, accelerator, extra_states: dict[str, Any] | None) -> bool:
        """Whether Accelerate's files can be written from a host copy: not where other code writes
        them (DeepSpeed, FSDP, Megatron, XLA), nor with data loaders, save hooks or per-node saves."""
        from accelerate.utils import DistributedType

        kind = accelerator.distributed_type
        why = ("extra engines" if extra_states else
               f"{kind.value}" if kind in (DistributedType.DEEPSPEED, DistributedType.FSDP,
                                           DistributedType.MEGATRON_LM, DistributedType.XLA) else
               "prepared data loaders" if accelerator._dataloaders else
               "save_state hooks" if accelerator._save_model_state_pre_hook else
               "save_on_each_node" if accelerator.project_configuration.save_on_each_node else "")
        if why and not self._told_synchronous:
            logger.info("checkpoints are written synchronously (%s: Accelerate's own save_state)", why)
            self._told_synchronous = True
        return not why

    def _host_copy(self, accelerator) -> HostCopy:
        """(file name, state) of every file `save_state` writes on the main process besides the RNG
        file, in host memory: models, optimizers, schedulers, scaler, registered objects. Parameters
        and optimizer states (changed only by an optimizer step) are copied by the writer thread."""
        from accelerate.utils import OPTIMIZER_NAME, SAFE_WEIGHTS_NAME, SCALER_NAME, SCHEDULER_NAME

        files: list[tuple[str, Any]] = []
        for i, model in enumerate(accelerator._models):
            name = SAFE_WEIGHTS_NAME if i == 0 else SAFE_WEIGHTS_NAME.replace(".", f"_{i}.")
            files.append((name, accelerator.get_state_dict(model, unwrap=False)))
        for prefix, objects in ((OPTIMIZER_NAME, accelerator._optimizers),
                                (SCHEDULER_NAME, accelerator._schedulers)):
            files += [(f"{prefix}.bin" if i == 0 else f"{prefix}_{i}.bin", obj.state_dict())
                      for i, obj in enumerate(objects)]
        if accelerator.scaler is not None:
            files.append((SCALER_NAME, accelerator.scaler.state_dict()))
        files += [(f"custom_checkpoint_{i}.pkl", obj.state_dict())
                  for i, obj in enumerate(accelerator._custom_objects)]
        deferred = {storage_key(p) for model in accelerator._models for p in model.parameters()}
        deferred |= {storage_key(t) for opt in accelerator._optimizers
                     for per_param in getattr(opt, "optimizer", opt).state.values()
                     for t in per_param.values() if isinstance(t, torch.Tensor)}
        return self._copier.copy(files, deferred)

    def _start_writer(self, host: HostCopy, staging: Path, final: Path, step: int, rank: int,
                      manifest_args: dict[str, Any], protect: tuple[int, ...],
                      refuse_nonfinite: bool) -> None:
        from accelerate.utils import save as accelerate_save

        started = time.perf_counter()
        reason = manifest_args["extra"].get("reason", "")

        def write() -> None:
            try:
                host.complete()  # the parameters and optimizer states; optimizer steps wait until then
                broken = nonfinite_model_tensors(host.state) if refuse_nonfinite else []
                if broken:
                    # Such a checkpoint would become the resume and rollback point. DDP replicas hold
                    # the same weights, so the main process's copy speaks for every process.
                    logger.error("not saving a checkpoint at step %d (%s): non-finite values in %s; the "
                                 "newest complete checkpoint stays the one to resume or roll back to", step,
                                 reason, ", ".join(broken[:5]))
                    shutil.rmtree(staging, ignore_errors=True)
                    return
                for name, obj in host.state:
                    # Accelerate's own writer: safetensors for models (shared tensors removed as it
                    # does), torch.save for the rest.
                    accelerate_save(obj, staging / name, safe_serialization=name.endswith(".safetensors"))
                fault_point("enospc_in_save", step, rank)
                fault_point("stall_in_save", step, rank)
                fault_point("kill_in_save", step, rank)
                fsync_files(staging)  # the manifest may only vouch for data that is on disk
                replaced = self._publish(staging, final, step, rank, manifest_args)
            except Exception as err:  # noqa: BLE001 - any failure is reported on the loop at the next wait
                logger.error("background checkpoint %s failed: %s: %s (reported at the next save)",
                             final.name, type(err).__name__, err)
                shutil.rmtree(staging, ignore_errors=True)
                self._writer_error = err
                return
            logger.info("saved checkpoint %s (%s; written in the background in %.2f s)", final.name, reason,
                        time.perf_counter() - started)
            self._after_publish(replaced, protect)

        # Not a daemon: the interpreter waits for it, so a process that ends never cuts a write short.
        self._writer = threading.Thread(target=write, name=f"checkpoint-writer-{final.name}", daemon=False)
        try:
            self._writer.start()
        except BaseException:
            host.complete()  # never leave optimizer steps waiting for a copy nobody makes
            self._writer = None
            raise

    @property
    def in_background(self) -> bool:
        """A background save was handed over and not yet waited for (every process knows)."""
        return self._pending_staging is not None

    def wait(self, accelerator) -> None:
        """Wait until the background save (if any) is published; if it failed, raise
        CheckpointWriteError on every process. Call on ALL processes (a collective when one was
        pending)."""
        staging, self._pending_staging = self._pending_staging, None
        error: BaseException | None = None
        if self._writer is not None:
            self._writer.join()
            error, self._writer, self._writer_error = self._writer_error, None, None
            self._copier.release()
        if staging is not None:
            self._raise_if_failed(accelerator, error, staging)

    def _join_writer(self) -> None:
        """Readers of the folder (outside the writer) see the background save finished first; its
        error stays for the next `wait`."""
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()

    def _raise_if_failed(self, accelerator, error: BaseException | None, staging: Path) -> None:
        """Raise CheckpointWriteError on every process if the save failed on any; the main process
        first removes the staging folder."""
        local_disk_full = error is not None and _looks_like_disk_full(error, self.root)
        failed, disk_full = any_process(accelerator, error is not None, local_disk_full)
        if not failed:
            return
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        intact = [c.path.name for c in self.complete()] if self.root.is_dir() else []
        cause = f"{type(error).__name__}: {error}" if error is not None else "failed on another process"
        message = (f"cannot write checkpoint {staging.name[len(INCOMPLETE_PREFIX):]} in {self.root}: "
                   + ("no space left on device (disk full); " if disk_full else "")
                   + f"{cause}. The partial folder {staging.name} was removed; earlier checkpoints are "
                   + (f"intact (newest {intact[0]})" if intact else "untouched (there are none)")
                   + ". Free space or fix the folder, then continue with --resume auto.")
        step = int(staging.name[len(INCOMPLETE_PREFIX) + len("step_"):])
        raise CheckpointWriteError(message, staging.parent, disk_full, step) from error

    # ---- finding ------------------------------------------------------------------------------
    def candidates(self) -> list[Path]:
        """Folders with a final checkpoint name, newest step first (completeness not yet checked)."""
        self._join_writer()
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

    def find(self, step: int) -> CheckpointInfo | None:
        """The complete checkpoint of `step`, if there is one."""
        return next((c for c in self.complete() if c.step == step), None)

    def best(self) -> CheckpointInfo | None:
        """The newest checkpoint saved as a new best (each one improved on every earlier one by the
        controller's rule), or None. A running session asks `find(controller best step)` instead."""
        flagged = [c for c in self.complete() if c.manifest.get("best")]
        return flagged[0] if flagged else None

    # ---- pruning ------------------------------------------------------------------------------
    def prune(self, protect: tuple[int, ...] = ()) -> list[Path]:
        """Delete complete checkpoints that are neither among the last K, nor the newest N best
        saves, nor a `protect`ed step. Incomplete or corrupt folders are left alone (they are
        evidence, and never resumed from)."""
        complete = self.complete()
        keep = {c.path for c in complete[: self.keep_last]}
        flagged = [c for c in complete if c.manifest.get("best")]
        keep.update(c.path for c in flagged[: self.keep_best])
        keep.update(c.path for c in complete if c.step in protect)
        removed = []
        for info in complete:
            if info.path not in keep:
                try:
                    doomed = self._retire(info.path)
                    fault_point("kill_in_prune", info.step)
                    self._remove(doomed)
                except OSError as err:
                    # The new checkpoint is complete: a folder that cannot be deleted only costs space.
                    logger.warning("could not delete old checkpoint %s: %s", info.path, err)
                    continue
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

    def _set_aside(self, folder: Path) -> Path | None:
        """Before a checkpoint of the same step replaces `folder`: a complete copy is retired (and
        deleted once the new one is in place); a corrupt or incomplete one is kept, renamed
        `corrupt-<name>-<time>`, never deleted (it is evidence). Returns the retired copy, or None."""
        try:
            verify_checkpoint(folder, hashes=True)
        except CheckpointError as err:
            kept = folder.with_name(f"{CORRUPT_PREFIX}{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(folder, kept)
            logger.warning("%s is not a valid checkpoint (%s): kept aside as %s", folder.name, err, kept.name)
            return None
        return self._retire(folder)

    def _retire(self, folder: Path) -> Path:
        """Rename a checkpoint to `.deleting-*`: from then on it is never mistaken for a complete one."""
        doomed = folder.with_name(f"{DELETING_PREFIX}{folder.name}")
        if doomed.exists():
            shutil.rmtree(doomed)
        os.replace(folder, doomed)
        return doomed

    def _remove(self, doomed: Path) -> None:
        shutil.rmtree(doomed)
