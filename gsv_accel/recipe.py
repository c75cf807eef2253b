"""The contract between a recipe and `gsv_accel.session.TrainingSession`.

A recipe (S2 GAN, S1 GPT, the coming flow-matching stage) owns its models, optimizers, data, its
training step, its validation and its export format. The session owns everything around them that
every run must do the same way: resume, cadence of validation and saves, the plateau controller,
which checkpoint is best, best-weight restore, the final save and exports, trackers, stop signals.

A recipe builds its parts, prepares them with the session's Accelerator, then calls once::

    session.attach(recipe, models=[net_g, net_d], schedulers=[sched_g, sched_d], sampler=sampler,
                   schedule_per_step=False)

and in `train()` calls `session.run(loader, ...)`. Nothing else of the session is assigned or
called by the recipe; adding a recipe needs no change of the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

# Key the session adds to every micro-batch (a dict) it passes to `train_step`: the share of its
# batch's items the micro-batch holds, 1.0 unless an out-of-memory error made the sampler cut batches
# into pieces (`gsv_accel.memory`). A step then gets more micro-batches holding the same items; to keep
# the optimizer step the same, weight a micro-batch's loss by `share / train.grad_accum` when the loss
# is a mean over items, by `1 / train.grad_accum` when it is a sum.
BATCH_SHARE = "batch_share"


class RunOutcome(str, Enum):
    """What happened at a step or epoch boundary, and finally how the run ended."""

    CONTINUE = "continue"
    FINISHED = "finished"  # all epochs done
    MAX_STEPS = "max_steps"  # train.max_steps reached
    EARLY_STOP = "early_stop"  # the plateau controller stopped the run
    SIGNAL = "signal"  # SIGTERM/SIGINT: checkpoint written, exit 128 + signal
    NONFINITE = "nonfinite"  # non-finite losses and no rollback left (or train.on_nonfinite=stop)
    OUT_OF_MEMORY = "out_of_memory"  # out of memory with one item per micro-batch (checkpoint written)
    ROLLBACK = "rollback"  # go back to the last checkpoint with a lower LR, then continue

    @property
    def completes_run(self) -> bool:
        """A run that ended this way is finished: re-launching it does nothing."""
        return self in (RunOutcome.FINISHED, RunOutcome.MAX_STEPS, RunOutcome.EARLY_STOP)


@dataclass
class StepResult:
    """One optimizer step: values to log (`train/...`), and whether a non-finite value made every
    process skip it."""

    logs: dict[str, float]
    skipped: bool = False


@dataclass
class ValidationResult:
    """One validation, already averaged over all processes: `metrics` by name (`val/...`; every one
    is logged, the plateau controller watches `plateau.monitor`), and media for the trackers: each
    sample `{"name", "audio" (T,), "mel" (n_mels, T)}` at `sampling_rate`."""

    metrics: dict[str, float]
    media: list[dict[str, Any]] = field(default_factory=list)
    sampling_rate: int | None = None


@runtime_checkable
class Recipe(Protocol):
    def reported_metrics(self) -> tuple[str, ...]:
        """Names of the metrics `validate` reports (checked against `plateau.monitor` before training)."""
        ...

    def train_step(self, micro_batches: list[dict[str, Any]]) -> StepResult:
        """One optimizer step over `train.grad_accum` batches, each possibly cut into several
        micro-batches (see `BATCH_SHARE`). May raise an out-of-memory error: the session then runs the
        step again on smaller micro-batches, so it must not change anything before its optimizer step
        that a second call would not undo (zero the gradients first)."""
        ...

    def validate(self) -> ValidationResult:
        """Validation on every process (the result identical on each)."""
        ...

    def write_export(self, state_dict: dict[str, torch.Tensor], name: str, epoch: int, step: int) -> Path:
        """Write `state_dict` (the exported model's weights, finite) in the GPT-SoVITS format under
        `<run>/exports/`, file name from `name` (`<exp>[_best]`), epoch and step; return the path."""
        ...
