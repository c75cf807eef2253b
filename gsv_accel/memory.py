"""Memory of a training run: peak-memory measurement and recovery from out-of-memory errors.

`PeakMemory` measures what a run needs: on CUDA the peak of `torch.cuda.max_memory_allocated` (reset
after every log row, so each row says what its own window needed; the run's peak is the maximum of
the windows), elsewhere the process's peak resident set size (`resource.getrusage`; the kernel keeps
one peak per process, which cannot be reset, so every row gives the peak so far).

`OutOfMemoryRetry` runs one training step and, when it runs out of memory, makes the step fit instead
of ending the run. The design keeps resume exact:

* the step's items do not change. The batch sampler cuts each batch of `data.batch_size` items into
  micro-batches of at most half as many (`LengthBucketBatchSampler.halve_micro_batch`) and the loop
  starts the step again from the same data position (the sampler's position only moves after a step
  succeeded), with that step's random state restored. Each micro-batch carries its share of its
  batch's items (`gsv_accel.recipe.BATCH_SHARE`), so a recipe keeps the optimizer step the same: the
  same items, gradients accumulated over the pieces and weighted as one batch;
* the micro-batch size is part of the sampler's state, which every checkpoint stores: a resumed run
  cuts its batches the same way, and its weights are bitwise those of the run that never stopped.
  Accelerate's `find_executable_batch_size` restarts a whole function with a smaller batch and would
  lose this position, hence this loop-level retry.

What counts as out of memory (`is_out_of_memory`): `torch.OutOfMemoryError` (CUDA, XPU, MPS raise it)
and a RuntimeError whose message is an allocator's failure (`... out of memory`, the CPU allocator's
`can't allocate memory`, cuBLAS/cuDNN allocation failures). Not retried: several processes (the
others would wait forever in the gradient all-reduce the failed one never reaches) and DeepSpeed
engines (their accumulation counters cannot be rewound): the error is logged with what to change and
raised, so the process ends and the launcher ends the others.

Test hook: `GSV_ACCEL_INJECT_OOM=3,3,7@1` raises an injected `torch.OutOfMemoryError` in steps 3 (twice:
the step fails, is retried with half the micro-batch, fails again) and 7 (on process 1 only), from the
first attached model's forward pass of the step's last micro-batch (gradients of the earlier
micro-batches are then held, as in a real failure). Each entry fires once per process.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

try:
    import resource
except ImportError:  # Windows (the GPT-SoVITS WebUI's package): no getrusage
    resource = None

logger = logging.getLogger(__name__)

INJECT_OOM_ENV = "GSV_ACCEL_INJECT_OOM"

# Messages of allocation failures that do not raise torch.OutOfMemoryError.
_OOM_MESSAGES = (
    " out of memory",  # CUDA/HIP/XPU caching allocators
    "MPS backend out of memory",
    "DefaultCPUAllocator: can't allocate memory",  # CPU
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is an allocation failure that a smaller micro-batch may avoid."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _OOM_MESSAGES)


class OutOfMemoryAtSmallestBatch(RuntimeError):
    """A step ran out of memory with one item per micro-batch: it cannot be made smaller."""


# ------------------------------------------------------------------------------------- peak memory

def process_peak_rss_bytes() -> int | None:
    """The process's peak resident set size (Linux reports KiB, macOS bytes); on Windows psutil's peak
    working set where psutil is installed, else None (not measured)."""
    if resource is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024
    try:
        import psutil
    except ImportError:
        return None
    return int(getattr(psutil.Process().memory_info(), "peak_wset", 0)) or None


class PeakMemory:
    """Peak memory per log window (CUDA) or of the process so far (other devices)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.run_peak = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    @property
    def source(self) -> str:
        return "CUDA max allocated" if self.cuda else "process peak RSS"

    def _current_peak(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else process_peak_rss_bytes()

    def window_gib(self) -> float:
        """The peak since the previous call (CUDA) or of the process so far, in GiB (NaN where it
        cannot be measured); starts the next window."""
        peak = self._current_peak()
        if peak is None:
            return float("nan")
        self.run_peak = max(self.run_peak, peak)
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        return peak / 2**30

    def run_gib(self) -> float:
        """The peak of the whole run so far, in GiB (the current window included; NaN where it cannot
        be measured)."""
        peak = self._current_peak()
        if peak is None:
            return float("nan")
        self.run_peak = max(self.run_peak, peak)
        return self.run_peak / 2**30


# ------------------------------------------------------------------------------ out-of-memory retry

def injected_oom_steps(environ: dict[str, str] | None = None, rank: int = 0) -> list[int]:
    """The steps of `GSV_ACCEL_INJECT_OOM` that fail on process `rank`: comma-separated step numbers,
    each optionally `@rank` (default: every process); a step listed k times fails k times. Anything
    else there is refused, naming the variable."""
    text = (os.environ if environ is None else environ).get(INJECT_OOM_ENV, "").strip()
    if not text:
        return []
    steps = []
    for part in text.split(","):
        step, _, on_rank = part.strip().partition("@")
        try:
            step_number, rank_number = int(step), int(on_rank) if on_rank else None
        except ValueError:
            raise ValueError(f"{INJECT_OOM_ENV}={text!r}: expected comma-separated step numbers, each "
                             "optionally @rank, e.g. 3,3,7@1") from None
        if step_number < 1:
            raise ValueError(f"{INJECT_OOM_ENV}={text!r}: steps count from 1")
        if rank_number is None or rank_number == rank:
            steps.append(step_number)
    return steps


class _InjectedOOM:
    """Forward hook raising an injected OutOfMemoryError at the `fire_at`-th forward call."""

    def __init__(self, step: int, fire_at: int) -> None:
        self.step, self.fire_at, self.calls = step, fire_at, 0

    def __call__(self, module, inputs, output) -> None:  # noqa: ARG002
        self.calls += 1
        if self.calls == self.fire_at:
            raise torch.OutOfMemoryError(f"injected out of memory in step {self.step} ({INJECT_OOM_ENV})")


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _reset_scaler(scaler) -> None:
    """Forget what an fp16 GradScaler recorded for the failed step (unscaled or stepped optimizers,
    found infs), which would make the retried step's `unscale_` raise. The scale itself stays."""
    if scaler is None:
        return
    from torch.amp.grad_scaler import _refresh_per_optimizer_state

    # No public API clears it; this is what `GradScaler.update()` does at the end of an iteration.
    scaler._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)


class OutOfMemoryRetry:
    """Runs training steps; on out of memory frees what the step held, halves the sampler's micro-batch
    and tells the loop to run the step again from the same data position."""

    def __init__(self, accelerator, models: Sequence[torch.nn.Module], sampler, *, deepspeed: bool,
                 injected_steps: Sequence[int] = ()) -> None:
        self.accelerator = accelerator
        self.models = list(models)
        self.sampler = sampler
        self.deepspeed = deepspeed
        self.pending_injections = list(injected_steps)
        self.retries = 0  # out-of-memory retries in this process
        self._first_try: tuple[int, int] = (0, sampler.micro_batch_size)  # (step, its first micro-batch size)

    def attempt(self, train_step: Callable[[list], Any], micro_batches: list, step: int) -> Any | None:
        """`train_step(micro_batches)`; None after an out-of-memory error, once the sampler cuts
        smaller micro-batches (the caller then fetches step `step`'s items again). Other errors pass.
        Raises OutOfMemoryAtSmallestBatch when the step cannot be made smaller."""
        device = self.accelerator.device
        if self._first_try[0] != step:
            self._first_try = (step, self.sampler.micro_batch_size)
        rng = _rng_state(device)
        hook = self._arm_injection(step, len(micro_batches))
        try:
            return train_step(micro_batches)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            if self.accelerator.num_processes > 1 or self.deepspeed:
                # The other processes wait in the gradient all-reduce this one never reaches (and a
                # DeepSpeed engine's accumulation counters cannot be rewound): end this process, so
                # the launcher ends the others.
                where = "with several processes" if self.accelerator.num_processes > 1 else "under DeepSpeed"
                logger.error("step %d ran out of memory and cannot be retried %s: lower data.batch_size "
                             "(now %d), enable train.grad_ckpt, use mixed precision (bf16/fp16) or lower "
                             "train.segment_size / data.max_sec", step, where, self.sampler.batch_size)
                raise
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
        finally:
            if hook is not None:
                hook.remove()
        # Outside the `except` block: the traceback (and the activations its frames hold) is gone.
        self._free(rng)
        self._halve(step, message)
        return None

    def _arm_injection(self, step: int, micro_batches: int):
        if step not in self.pending_injections:
            return None
        self.pending_injections.remove(step)
        model = self.accelerator.unwrap_model(self.models[0])
        return model.register_forward_hook(_InjectedOOM(step, fire_at=micro_batches))

    def _free(self, rng: dict[str, Any]) -> None:
        """Undo what the failed attempt left: gradients, the fp16 scaler's per-step records, cached
        device memory, and the random state (back to before the step, so the retry, or the checkpoint
        written when no retry is possible, is as after the last completed step)."""
        for model in self.models:
            model.zero_grad(set_to_none=True)
        _reset_scaler(self.accelerator.scaler)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _set_rng_state(rng, self.accelerator.device)

    def _halve(self, step: int, message: str) -> None:
        if self.sampler.micro_batch_size <= 1:
            # The run stops: its checkpoint holds the micro-batch size of its last completed step.
            self.sampler.micro_batch_size = self._first_try[1]
            raise OutOfMemoryAtSmallestBatch(
                f"step {step} ran out of memory ({message}) with one item per micro-batch: enable "
                "train.grad_ckpt, use mixed precision (bf16/fp16), lower train.segment_size (S2) or "
                "data.max_sec / the bucket boundaries (S1), or use a device with more memory")
        old = self.sampler.micro_batch_size
        new = self.sampler.halve_micro_batch()
        self.retries += 1
        logger.warning("step %d ran out of memory (%s): retrying it with micro-batches of %d item(s) "
                       "instead of %d (data.batch_size %d; the same items, gradients accumulated); the "
                       "micro-batch size is kept in checkpoints", step, message, new, old,
                       self.sampler.batch_size)

    def logs(self) -> dict[str, float]:
        return {"sys/micro_batch_size": float(self.sampler.micro_batch_size),
                "sys/oom_retries_total": float(self.retries)}
