"""S2 v3/v4 (flow matching) training benchmark on the demo config (`make bench`).

The counterpart of `bench_s2.py` for `recipes/s2_cfm.py`, measured the same way (its docstring explains
the method in full). Prints one table from two kinds of run of `recipes/configs/s2_cfm_demo.yaml` (a
tiny v3 model, LoRA rank 4, the bundled corpus prepared as for `make demo`), each repeated `--repeats`
times:

* demo cadence: the recipe as `python recipes/s2_cfm.py` runs it (its own loader and collate, which
  computes the target mels from the audio; validation every epoch, checkpoints every 2 epochs and on
  every improvement), W&B and TensorBoard off. Reports steps/s with that cadence and for the training
  steps alone (validation and checkpoint time taken out), the share of a training step spent waiting
  for data, and what one validation (CFM loss on every validation utterance, mel sampling for
  `sampling.max_items`), one checkpoint and the final save + LoRA export cost. The data wait is mostly
  the collate's target mels (soxr resampling to 24 kHz and an STFT, ~27 ms of its ~38 ms per batch of
  4), computed in the training process with the demo's `data.num_workers: 0`.
* training only: the recipe without validation or interval checkpoints, its loader replaced (after
  `setup()`) by the epoch-0 batches collated beforehand (`CFMCollate`), and in lockstep with it a bare
  loop: the same `SynthesizerTrnV3` with the same LoRA adapters (`add_lora`), AdamW over the trainable
  parameters, ExponentialLR per epoch, the model's training loss (`train.grad_accum` micro-batches,
  clipping only if `train.grad_clip` is set) and batches, in plain PyTorch, with no Accelerate, stepper
  (gradient-norm measurement, finiteness checks), logged values, checkpointing, sampler bookkeeping or
  progress bar. Framework overhead = (recipe step time - bare step time) / bare step time, the median
  over consecutive step pairs (target < 3%). Both start from the same seed and see the same batches,
  so their weights must agree at the end: the table says by how much (0 = the bare loop is exactly the
  recipe's computation). What the recipe's step does beyond the bare one, timed in isolation on the
  demo model (~90 ms a step on one thread): ~0.6 ms for `OptimizerStepper.step` (walking
  `model.parameters()` for those with a gradient, ~0.45 ms through peft's module tree, and the
  gradient-norm measurement, ~0.17 ms), ~0.2 ms for Accelerate's optimizer wrapper, ~0.2 ms of loop
  bookkeeping; `float(loss)` and `isfinite` are ~0.01 ms on a CPU. About 1%: on a machine shared with
  other jobs the measured figure moves by more than that between invocations (the pair ratios'
  quartiles are ~0.98 / 1.01 / 1.04 on a quiet machine, ~0.91 / 1.03 / 1.14 under load).

The model's training forward draws from torch (prompt lengths, time steps, noise, dropout, the
shortcut step sizes) and from Python's global `random` (the shortcut coin, `random.random() < 0.3`,
which takes three DiT passes instead of one). The bare loop's own RNG stream therefore swaps Python's
`random` state in and out too (`BareLoop._rng_state`), so that it draws the same coins as the recipe
without changing the recipe's. Pairing is per step, so a shortcut step is compared with a shortcut
step.

Timing: a subclass overrides `train_step` (called once per optimizer step), the loader and the
session's `validate`, `save` and `finish` are wrapped in timers after `setup()`; a step's time runs
from the end of one `train_step` to the end of the next (loop bookkeeping and data wait included). The
bare step runs next to the recipe's on the same batch, before it on odd steps and after it on even
ones. Every figure other than the overhead is, per step (or per call), the median over the repeats,
then averaged over the steps. The first `--warmup` steps of a run are not timed.

One torch thread by default (`--threads`, also given to the recipe as `run.cpu_threads`; why one:
see `bench_s2.py`). Single process, full precision (run it with `python`, not `accelerate launch`).
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `recipes` is not an installed package
sys.path.insert(0, str(REPO / "benchmarks"))  # the S2 benchmark's timing helpers

from bench_s2 import (  # noqa: E402
    OwnRNG,
    StepTimer,
    _sync,
    collect_runs,
    ensure_dataset,
    max_diff,
    parse_bench_args,
    report,
    step_rows,
)

from recipes.s2_cfm import DEFAULT_CONFIG, CFMConfig, CFMRecipe  # noqa: E402

RESULTS: list[tuple[str, float, str]] = []


# ------------------------------------------------------------------------------------------- data


def load_cfg(dataset: Path, output_dir: Path, steps: int, steps_per_epoch: int, cadence: bool,
             threads: int) -> CFMConfig:
    from gsv_accel.config import load_config

    overrides = [f"data.dataset={dataset}", f"run.output_dir={output_dir}", f"train.max_steps={steps}",
                 "tracking.wandb=false", "tracking.tensorboard=false"]
    if threads > 0:  # the session sets the thread count at start: keep it at the benchmark's
        overrides.append(f"run.cpu_threads={threads}")
    cfg = load_config(CFMConfig, DEFAULT_CONFIG, overrides)
    per_epoch = max(1, steps_per_epoch // cfg.train.grad_accum)
    cfg.train.epochs = max(cfg.train.epochs, math.ceil(steps / per_epoch))  # enough for the steps asked for
    if not cadence:
        cfg.validation.every_n_steps = cfg.validation.every_n_epochs = None
        cfg.checkpoint.every_n_steps = cfg.checkpoint.every_n_epochs = None
    return cfg


def collate_epoch(cfg: CFMConfig) -> list[dict]:
    """The batches of epoch 0, bucketed and collated (target mels included) as the recipe's loader does."""
    from gsv_accel.data.cfm import CFMCollate
    from gsv_accel.data.dataset import load_prepared
    from gsv_accel.data.sampler import LengthBucketBatchSampler

    train_set = load_prepared(cfg.data.dataset).view("train")
    sampler = LengthBucketBatchSampler(train_set.lengths, cfg.data.batch_size, cfg.data.bucket_boundaries,
                                       seed=cfg.run.seed)
    collate = CFMCollate(cfg.model.version)
    return [collate([train_set[i] for i in batch]) for batch in sampler]


# ----------------------------------------------------------------------------------------- bare


class BareLoop(OwnRNG):
    """The recipe's math as plain PyTorch: per optimizer step `grad_accum` micro-batches (the leftover
    ones at an epoch's end dropped, as the session does), the CFM loss, optional clipping, AdamW over
    the trainable parameters, ExponentialLR per epoch. Its own RNG stream covers torch and Python's
    `random` (the shortcut coin), so it can run interleaved with the recipe and still match it exactly."""

    def __init__(self, cfg: CFMConfig, batches: list[dict]) -> None:
        from gsv_accel.lifecycle import seed_everything
        from gsv_accel.models.sovits.generator_v3 import SynthesizerTrnV3
        from gsv_accel.models.sovits.lora import add_lora

        tc = cfg.train
        self.cfg, self.done = cfg, 0
        n = tc.grad_accum
        self.groups = [batches[i:i + n] for i in range(0, len(batches) - n + 1, n)]  # one epoch's steps
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        with self.own_rng():
            seed_everything(cfg.run.seed)
            self.model = SynthesizerTrnV3(cfg.model)
            if tc.lora_rank is not None:
                add_lora(self.model, tc.lora_rank)  # LoRA A draws from torch's generator
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW(params, tc.learning_rate, betas=tuple(tc.betas), eps=tc.eps,
                                               weight_decay=tc.weight_decay)
            self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=tc.lr_decay)
            self.model.to(self.device)

    def _rng_state(self) -> tuple:
        return (*super()._rng_state(), random.getstate())

    def _set_rng_state(self, state: tuple) -> None:
        super()._set_rng_state(state[:2])
        random.setstate(state[2])

    def step(self) -> float:
        """One optimizer step on the next micro-batches; returns its seconds (the RNG swaps excluded)."""
        with self.own_rng():
            start = time.perf_counter()
            self._step(self.groups[self.done % len(self.groups)])
            self.done += 1
            if self.done % len(self.groups) == 0:  # end of an epoch
                self.scheduler.step()
            _sync(self.device)
            seconds = time.perf_counter() - start
        return seconds

    def _step(self, micro_batches: list[dict]) -> None:
        tc, n = self.cfg.train, len(micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        for batch in micro_batches:
            batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            loss = self.model(batch["ssl"], batch["spec"], batch["mel"], batch["ssl_lengths"],
                              batch["spec_lengths"], batch["text"], batch["text_lengths"],
                              batch["mel_lengths"], use_grad_ckpt=tc.grad_ckpt).loss.float()
            (loss / n).backward()
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None],
                                           tc.grad_clip)
        self.optimizer.step()


# --------------------------------------------------------------------------------- timed recipe


class TimedCFMRecipe(StepTimer, CFMRecipe):
    """CFMRecipe under bench_s2's StepTimer."""


def run_recipe(cfg: CFMConfig, batches: list[dict] | None, paired: bool = False) -> dict:
    """One recipe run: with its own loader (`batches` None) or over pre-collated batches; `paired`:
    with the bare loop stepping in lockstep (pre-collated batches only)."""
    companion = BareLoop(cfg, batches) if paired else None  # seeds itself, before the recipe does
    recipe = TimedCFMRecipe(cfg, resume=None, companion=companion)
    # The recipe's console log handler binds to the stderr it finds at setup: keep it off the table
    # (everything still goes to the run folder's train.log).
    with contextlib.redirect_stderr(io.StringIO()):
        recipe.setup()
    if recipe.accelerator.mixed_precision != "no" or recipe.accelerator.num_processes != 1:
        raise SystemExit("bench_cfm: run with plain `python` (one process, no mixed precision)")
    recipe.instrument(batches)
    recipe.train()
    result = {"device": str(recipe.accelerator.device), **recipe.per_step, **recipe.calls}
    if companion is not None:
        result["weight_diff"] = max_diff(recipe.accelerator.unwrap_model(recipe.model).state_dict(),
                                         companion.model.state_dict())
    return result


# ----------------------------------------------------------------------------------------- main


def main() -> None:
    args = parse_bench_args(
        __doc__.splitlines()[0], default_steps=66,
        steps_help="optimizer steps per run (default 66: the demo's 6 epochs of 11 steps)",
        default_dataset=REPO / "runs" / "demo_dataset",
        dataset_help="prepared demo dataset (prepared into a temp folder if missing)")
    runs, batches = collect_runs(
        args, "cfm", ensure_dataset,
        lambda dataset, out, per_epoch, cadence: load_cfg(dataset, out, args.steps, per_epoch or 1, cadence,
                                                          args.threads),
        collate_epoch, run_recipe)

    pairs = step_rows(runs, len(batches), args.warmup, RESULTS)
    report("S2 v3 (CFM, LoRA) demo config", RESULTS, args, runs, pairs)


if __name__ == "__main__":
    main()
