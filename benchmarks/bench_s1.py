"""S1 (GPT) training benchmark on the demo config (`make bench`).

The GPT-stage counterpart of `bench_s2.py`, measured the same way (its docstring explains the method
in full). Prints one table from two kinds of run of `recipes/configs/s1_demo.yaml` (tiny GPT, the
bundled corpus prepared with semantic codes and tiny-BERT features), each repeated `--repeats` times:

* demo cadence: the recipe as `make demo` runs it (its own loader, validation every epoch, checkpoints
  every 2 epochs and on every improvement), W&B and TensorBoard off. Reports steps/s and tokens/s with
  that cadence and for the training steps alone (validation and checkpoint time taken out), the share
  of a training step spent waiting for data, and what one validation, one checkpoint and the final
  save + exports cost. Tokens are semantic target tokens: per batch the sum of (semantic_len + 1)
  (the ids and the appended EOS, the positions the loss is taken over, padding not counted).
* training only: the recipe without validation or interval checkpoints, its loader replaced (after
  `setup()`) by the epoch-0 batches collated beforehand, and in lockstep with it a bare loop: the same
  GPT called as the recipe calls it (`model(*inputs, dpo=train.dpo)`), AdamW with the same two
  parameter groups (weight decay on matrices only), the same per-step warmup-cosine LambdaLR,
  gradient clipping and batches, in plain PyTorch, with no Accelerate, finiteness checks, logged
  values, checkpointing, sampler bookkeeping or progress bar. Framework overhead = (recipe step time
  - bare step time) / bare step time, the median over consecutive step pairs. Both start from the
  same seed and see the same batches, so their weights must agree at the end: the table says by how
  much (0 = the bare loop is exactly the recipe's computation).

Timing: a subclass overrides `train_step` (called once per optimizer step), the loader and the
session's `validate`, `save` and `finish` are wrapped in timers after `setup()`; a step's time runs
from the end of one `train_step` to the end of the next (loop bookkeeping and data wait included). The
bare step runs next to the recipe's on the same batch, before it on odd steps and after it on even
ones. Every figure other than the overhead is, per step (or per call), the median over the repeats,
then averaged over the steps; tokens/s is the timed steps' tokens over the sum of those medians. The
first `--warmup` steps of a run are not timed.

One torch thread by default (`--threads`; why: see `bench_s2.py`). Single process, full precision
(run it with `python`, not `accelerate launch`).
"""

from __future__ import annotations

import contextlib
import io
import math
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
    call_rows,
    collect_runs,
    lockstep_overhead,
    max_diff,
    mean,
    parse_bench_args,
    per_step_median,
    report,
)

from recipes.s1 import DEFAULT_CONFIG, S1Config, S1Recipe, warmup_cosine  # noqa: E402

RESULTS: list[tuple[str, float, str]] = []


def _row(name: str, value: float, unit: str) -> None:
    RESULTS.append((name, value, unit))


# ------------------------------------------------------------------------------------------- data


def ensure_dataset(dataset: Path, work: Path) -> Path:
    """The prepared GPT-stage demo dataset: `dataset` if it exists, else the demo corpus prepared
    into the temp folder as the tests do it (semantic codes from a tiny random S2 model with its
    codebook marked initialised, exported the GPT-SoVITS way, and the tiny BERT). The codes differ
    from `make demo`'s, their lengths (all that the timings depend on) do not."""
    if dataset.exists():
        return dataset
    from scripts.make_demo_s1_dataset import make_demo_s1_dataset

    print(f"{dataset} does not exist: preparing the demo corpus into {work}", file=sys.stderr)
    return make_demo_s1_dataset(work)


def load_cfg(dataset: Path, output_dir: Path, steps: int, steps_per_epoch: int, cadence: bool) -> S1Config:
    from gsv_accel.config import load_config

    overrides = [f"data.dataset={dataset}", f"run.output_dir={output_dir}", f"train.max_steps={steps}",
                 f"run.cpu_threads={torch.get_num_threads()}",  # the benchmark's --threads, set before
                 "tracking.wandb=false", "tracking.tensorboard=false"]
    cfg = load_config(S1Config, DEFAULT_CONFIG, overrides)
    # Enough epochs for the steps asked for (the demo's own count, and so its LR schedule, when
    # that suffices; the schedule's length follows the epochs, the same for the recipe and bare loop).
    per_epoch = max(1, steps_per_epoch // cfg.train.grad_accum)
    cfg.train.epochs = max(cfg.train.epochs, math.ceil(steps / per_epoch))
    if not cadence:
        cfg.validation.every_n_steps = cfg.validation.every_n_epochs = None
        cfg.checkpoint.every_n_steps = cfg.checkpoint.every_n_epochs = None
    return cfg


def collate_epoch(cfg: S1Config) -> list[dict]:
    """The batches of epoch 0, filtered, bucketed and collated as the recipe's loader does it."""
    from gsv_accel.data.dataset import load_prepared
    from gsv_accel.data.s1 import S1Collate, filter_items
    from gsv_accel.data.sampler import LengthBucketBatchSampler

    view = load_prepared(cfg.data.dataset).view("train", ("phones", "semantic", "bert"))
    table = view.hf_dataset.data.table
    phones = [len(x) for x in table.column("phone_ids").to_pylist()]
    semantic = [len(x) for x in table.column("semantic").to_pylist()]
    kept, _ = filter_items(phones, semantic, view.names, cfg.data.filters())
    sampler = LengthBucketBatchSampler([semantic[i] for i in kept], cfg.data.batch_size,
                                       cfg.data.bucket_boundaries, seed=cfg.run.seed)
    collate = S1Collate()
    return [collate([view[kept[i]] for i in batch]) for batch in sampler]


def target_tokens(batch: dict) -> int:
    """Semantic target positions of a batch: per row the ids plus the appended EOS."""
    return int((batch["semantic_ids_len"] + 1).sum())


# ----------------------------------------------------------------------------------------- bare


class BareLoop(OwnRNG):
    """The recipe's math as plain PyTorch: per optimizer step `grad_accum` micro-batches (the
    leftover ones at an epoch's end dropped, as the recipe does), the loss as the recipe reduces it,
    clipping, AdamW, then the per-step LR schedule. Keeps its own RNG stream (dropout draws from the
    global generator), so it can run interleaved with the recipe and still match it exactly."""

    def __init__(self, cfg: S1Config, batches: list[dict]) -> None:
        from gsv_accel.lifecycle import seed_everything
        from gsv_accel.models.gpt import Text2SemanticDecoder

        tc = cfg.train
        self.cfg, self.done = cfg, 0
        n = tc.grad_accum
        self.groups = [batches[i:i + n] for i in range(0, len(batches) - n + 1, n)]  # one epoch's steps
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        with self.own_rng():
            seed_everything(cfg.run.seed)
            self.model = Text2SemanticDecoder(cfg.model)
            decay = [p for p in self.model.parameters() if p.ndim >= 2]
            no_decay = [p for p in self.model.parameters() if p.ndim < 2]
            self.optimizer = torch.optim.AdamW(
                [{"params": decay, "weight_decay": tc.weight_decay},
                 {"params": no_decay, "weight_decay": 0.0}],
                lr=tc.learning_rate, betas=tuple(tc.betas), eps=tc.eps)
            total = max(1, len(batches) // n * tc.epochs)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, warmup_cosine(tc.warmup_steps, total, tc.min_lr_ratio))
            self.model.to(self.device)

    def step(self) -> float:
        """One optimizer step on the next micro-batches; returns its seconds (the RNG swaps excluded)."""
        with self.own_rng():
            start = time.perf_counter()
            self._step(self.groups[self.done % len(self.groups)])
            self.done += 1
            _sync(self.device)
            seconds = time.perf_counter() - start
        return seconds

    def _step(self, micro_batches: list[dict]) -> None:
        tc, n = self.cfg.train, len(micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        for batch in micro_batches:
            batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            loss, _ = self.model(batch["phoneme_ids"], batch["phoneme_ids_len"], batch["semantic_ids"],
                                 batch["semantic_ids_len"], batch["bert_feature"], dpo=tc.dpo)
            if tc.loss_reduction == "mean":
                loss = loss / float((batch["semantic_ids_len"] + 1).sum())
            (loss / n).backward()
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.scheduler.step()


# --------------------------------------------------------------------------------- timed recipe


class TimedS1Recipe(StepTimer, S1Recipe):
    """S1Recipe under bench_s2's StepTimer, also recording `tokens` (semantic target tokens of the
    step's micro-batches)."""

    extra_keys = ("tokens",)

    def record_extra(self, micro_batches: list[dict], record: dict[str, list[float]]) -> None:
        record["tokens"].append(float(sum(target_tokens(batch) for batch in micro_batches)))


def run_recipe(cfg: S1Config, batches: list[dict] | None, paired: bool = False) -> dict:
    """One recipe run: with its own loader (`batches` None) or over pre-collated batches; `paired`:
    with the bare loop stepping in lockstep (pre-collated batches only)."""
    companion = BareLoop(cfg, batches) if paired else None  # seeds itself, before the recipe does
    recipe = TimedS1Recipe(cfg, resume=None, companion=companion)
    # The recipe's console log handler binds to the stderr it finds at setup: keep it off the table
    # (everything still goes to the run folder's train.log).
    with contextlib.redirect_stderr(io.StringIO()):
        recipe.setup()
    if recipe.accelerator.mixed_precision != "no" or recipe.accelerator.num_processes != 1:
        raise SystemExit("bench_s1: run with plain `python` (one process, no mixed precision)")
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
        __doc__.splitlines()[0], default_steps=120,
        steps_help="optimizer steps per run (default 120: the demo's 15 epochs of 8 steps)",
        default_dataset=REPO / "runs" / "demo_dataset_s1",
        dataset_help="prepared GPT-stage demo dataset (prepared into a temp folder if missing)")
    runs, batches = collect_runs(
        args, "s1", ensure_dataset,
        lambda dataset, out, per_epoch, cadence: load_cfg(dataset, out, args.steps, per_epoch or 1, cadence),
        collate_epoch, run_recipe)

    cadence, paired, warm = runs["cadence"], runs["paired"], args.warmup
    cadence_steps = per_step_median(cadence, "step", warm)
    train_steps = per_step_median(cadence, "step", warm, minus="events")
    tokens = per_step_median(cadence, "tokens", warm)  # the same in every run (same seed, same batches)
    data_wait = mean(per_step_median(cadence, "data", warm))
    recipe_steps = per_step_median(paired, "step", warm)
    bare_steps = per_step_median(paired, "bare", warm)
    paired_tokens = per_step_median(paired, "tokens", warm)
    outside = mean(per_step_median(paired, "step", warm, minus="inside"))
    overhead, pairs = lockstep_overhead(paired, warm)

    def tokens_per_s(times: list[float], counts: list[float]) -> float:
        n = min(len(times), len(counts))
        return sum(counts[:n]) / sum(times[:n])

    _row(f"demo cadence: steps/s (validation every epoch of {len(batches)} steps, checkpoints)",
         1 / mean(cadence_steps), "steps / s")
    _row("demo cadence: tokens/s (semantic targets incl. EOS)", tokens_per_s(cadence_steps, tokens),
         "tokens / s")
    _row("demo cadence: training steps/s (validation and checkpoints taken out)", 1 / mean(train_steps),
         "steps / s")
    _row("demo cadence: training tokens/s (validation and checkpoints taken out)",
         tokens_per_s(train_steps, tokens), "tokens / s")
    _row("demo cadence: data wait, share of a training step", 100 * data_wait / mean(train_steps), "%")
    _row("demo cadence: data wait per step (next(loader) + to(device))", 1e3 * data_wait, "ms")
    RESULTS.extend(call_rows(cadence))
    _row("training only, pre-collated batches: recipe", 1 / mean(recipe_steps), "steps / s")
    _row("training only, pre-collated batches: recipe tokens/s", tokens_per_s(recipe_steps, paired_tokens),
         "tokens / s")
    _row("training only, pre-collated batches: bare loop (in lockstep)", 1 / mean(bare_steps), "steps / s")
    _row("training only, pre-collated batches: bare loop tokens/s", tokens_per_s(bare_steps, paired_tokens),
         "tokens / s")
    _row("recipe per step outside train_step (loop bookkeeping)", 1e3 * outside, "ms")
    _row("framework overhead (recipe - bare) / bare (target < 3)", 100 * overhead, "%")
    _row("bare loop vs recipe: max |weight difference| at the end (0 = same math)",
         max(run["weight_diff"] for run in paired), "")

    report("S1 (GPT) demo config", RESULTS, args, runs, pairs,
           note=f"; {mean(tokens):.0f} target tokens per step on average")


if __name__ == "__main__":
    main()
