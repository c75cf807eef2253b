"""The life cycle of a run around its training loop: progress counters, where to resume from and
what changed since, seeding and thread count, stop signals, exit codes and the process exit.

`gsv_accel.session.TrainingSession` calls these; they are separate so each can be tested alone.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError, CheckpointInfo, CheckpointManager, verify_checkpoint
from .config import ConfigError, changed_keys
from .distributed import agree

logger = logging.getLogger(__name__)

# Exit codes after a stop requested by a signal, once the checkpoint is written (shell convention
# 128 + signal number, so schedulers see the usual values).
EXIT_CODE_SIGTERM = 128 + signal.SIGTERM
EXIT_CODE_SIGINT = 128 + signal.SIGINT
# Bad input found before training starts (config, checkpoint, dataset, weights file): one message.
EXIT_CODE_USER_ERROR = 2
# The run stopped because of non-finite losses (train.on_nonfinite=stop, or no rollback left).
EXIT_CODE_NONFINITE = 3
# A checkpoint could not be written (disk full, I/O error): sysexits' EX_IOERR. The partial save was
# removed and the earlier checkpoints are intact; free space and `--resume auto`.
EXIT_CODE_CHECKPOINT_WRITE = 74
# A step ran out of memory with one item per micro-batch (or could not be retried: several processes,
# DeepSpeed): sysexits' EX_TEMPFAIL. A checkpoint of the last completed step was written; lower the
# memory use (the message says how) and `--resume auto`.
EXIT_CODE_OUT_OF_MEMORY = 75


VALIDATION_HISTORY = 10_000


def one_line(err: BaseException | str) -> str:
    """An error message on one line, as user errors are printed (library messages span several)."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


@dataclass
class TrainingProgress:
    """Loop counters saved in every checkpoint (registered with `accelerator.register_for_checkpointing`).

    `sampler` holds the batch sampler's position (epoch + global batches consumed), so a resume
    continues mid-epoch with exactly the remaining batches.
    """

    step: int = 0
    epoch: int = 0
    sampler: dict[str, int] = field(default_factory=dict)
    best_metric: float | None = None
    best_step: int | None = None
    run_id: str = ""
    nonfinite_steps: int = 0
    # Why the run ended ("max_steps", "epochs", "early_stop"), set before the final save: a
    # re-launched finished run does nothing. Empty while it can go on.
    finished: str = ""
    # Every validation so far, [step, {metric: value}] (the newest VALIDATION_HISTORY kept): a resumed
    # run re-logs the rows a killed process may not have flushed to the trackers.
    validations: list = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, value)


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop polls at step boundaries, so the run can save a
    checkpoint and exit cleanly instead of dying mid-step. A second signal while stopping falls
    back to the default behaviour (immediate exit)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> StopRequest:
        """Install the handlers (once: a second call changes nothing)."""
        if self._previous:
            return self
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        if self.signum is not None:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: finishing the current step, saving a checkpoint, then exiting",
                       signal.Signals(signum).name)

    def requested(self, accelerator) -> bool:
        """True on every process as soon as any process got a signal (one tiny all-reduce), so all
        of them stop at the same step and none waits forever in a collective."""
        return agree(accelerator, self.signum is not None)

    @property
    def exit_code(self) -> int:
        return EXIT_CODE_SIGINT if self.signum == signal.SIGINT else EXIT_CODE_SIGTERM

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def resolve_resume(resume: str | None, manager: CheckpointManager) -> CheckpointInfo | None:
    """`--resume auto`: the newest complete, verified checkpoint of the run (None: fresh start);
    `--resume PATH`: that checkpoint, which must verify (the error names the bad file); no
    `--resume`: a fresh start, refused if the run folder already has checkpoints."""
    if resume is None or resume == "none":
        existing = manager.candidates()
        if existing:
            # A fresh start would interleave two runs' checkpoints in one folder.
            raise CheckpointError(
                f"{manager.run_dir} already holds checkpoints (newest {existing[0].name}): continue it "
                "with --resume auto, or set run.output_dir to a new folder")
        return None
    if resume == "auto":
        found = manager.latest_valid()
        if found is None:
            logger.info("no complete checkpoint in %s: starting fresh", manager.root)
        return found
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such checkpoint folder")
    return verify_checkpoint(path, hashes=True)


def set_cpu_threads(requested: int | None, local_processes: int) -> int:
    """Intra-op CPU threads of this process: `requested`, or all cores of the machine shared by the
    processes running on it (`accelerate launch` without a config sets OMP_NUM_THREADS=1, which
    would train on one core). Returns the number set. Exact resume on a CPU needs the same number:
    reductions are split by thread, so another count changes results in the last bits."""
    threads = requested or max(1, (os.cpu_count() or 1) // max(1, local_processes))
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def ensure_rng_restored(checkpoint: CheckpointInfo, rank: int, seed: int, device_type: str) -> None:
    """After `load_state`: a process whose RNG state is missing from the checkpoint (the run was
    saved with fewer processes), or whose accelerator RNG was not saved (the run was saved on another
    device type, recorded as `extra.device_type` in the manifest), gets a documented deterministic
    seed, seed + 1000 * rank + step, instead of a silent default."""
    derived = seed + 1000 * rank + checkpoint.step
    if not (checkpoint.path / f"random_states_{rank}.pkl").is_file():
        seed_everything(derived)
        logger.warning("checkpoint has no RNG state for rank %d (saved with fewer processes): "
                       "seeded with %d (= seed + 1000 * rank + step)", rank, derived)
        return
    saved_device = checkpoint.manifest.get("extra", {}).get("device_type", device_type)
    if device_type == "cuda" and saved_device != "cuda":
        torch.cuda.manual_seed_all(derived)
        logger.warning("checkpoint was saved on %s, without CUDA RNG state: CUDA generators seeded "
                       "with %d (= seed + 1000 * rank + step)", saved_device, derived)


def interval_due(every: int | None, count: int) -> bool:
    """True when a positive `count` is a multiple of `every` (None: never)."""
    return every is not None and count > 0 and count % every == 0


# Model settings that do not change any parameter's shape or presence may differ on resume.
RESUMABLE_MODEL_KEYS = {"model.p_dropout"}


def check_resume_config(checkpoint: CheckpointInfo, current: dict[str, Any],
                        shape_sections: tuple[str, ...] = ("model",)) -> list[str]:
    """Compare the run config with the one saved in the checkpoint.

    Changes in `shape_sections` (the model's architecture) are refused, naming the keys, because the
    saved weights and optimizer states would not fit; every other change (lr, epochs, intervals,
    paths) is allowed and logged. Returns the changed keys.
    """
    saved = checkpoint.manifest.get("config") or {}
    if not saved:
        logger.warning("checkpoint %s records no config: cannot check what changed", checkpoint.path)
        return []
    changed = changed_keys(saved, current)
    refused = [key for key in changed if key.split(".")[0] in shape_sections
               and key not in RESUMABLE_MODEL_KEYS]
    if refused:
        raise ConfigError(
            f"cannot resume from {checkpoint.path}: model settings differ from the checkpoint's: "
            + ", ".join(f"{key} (saved {lookup(saved, key)!r}, now {lookup(current, key)!r})"
                        for key in refused)
            + ". Restore them, or start a new run folder.")
    return changed


def describe_environment_changes(checkpoint: CheckpointInfo, now: dict[str, Any]) -> list[str]:
    """One sentence per way this process differs from the one that saved `checkpoint`: number of
    processes, device type, precision, CPU threads, run folder, library versions. `now` has the
    manifest's keys (`world_size`, and `extra`/`versions` entries)."""
    saved = checkpoint.manifest
    extra = saved.get("extra", {})
    lines = []
    if saved.get("world_size") is not None and saved["world_size"] != now["world_size"]:
        lines.append(f"number of processes {saved['world_size']} -> {now['world_size']}: the data order is "
                     "kept (positions are in global batches) but a step averages other batches, so the "
                     "run is not bitwise equal to an uninterrupted one")
    for key, what, effect in (
            ("device_type", "device type", "results differ in the last bits"),
            ("mixed_precision", "mixed precision", "numerics change from here on"),
            ("cpu_threads", "CPU threads", "results differ in the last bits (exact resume on a CPU needs "
                                           "the same run.cpu_threads)"),
            ("run_dir", "run folder", "the run was moved (checkpoints do not depend on their place)")):
        if key in extra and extra[key] != now["extra"].get(key):
            lines.append(f"{what} {extra[key]} -> {now['extra'].get(key)}: {effect}")
    for name, version in (saved.get("versions") or {}).items():
        current = now["versions"].get(name)
        if current != version:
            lines.append(f"{name} {version} -> {current}")
    return lines


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def exit_process(code: int) -> None:
    """End a recipe's process with `code`.

    A multi-process run (torchrun/accelerate launch sets WORLD_SIZE) skips the interpreter's teardown
    once all work is done: with torch 2.13 and gloo, about one exit in ten aborted there ("terminate
    called without an active exception"), turning a finished run into a launcher failure. The
    trackers and the process group were already closed by the recipe; logs are flushed here.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
