"""The bookkeeping of one training run, shared by every recipe (`gsv_accel.recipe` has the contract).

`TrainingSession` owns what every run needs around a recipe's models, step and validation, and must
do identically:

* start-up: the Accelerator (trackers chosen by config), the resume decision (`--resume
  auto|PATH`, checked against the saved config), CPU threads, the seed; nothing is written to the
  run folder until the recipe is attached, so bad input leaves no trace;
* `attach`: the recipe's models, schedulers and sampler; the monitored metric checked against the
  metrics the recipe reports; the checkpoint loaded, what changed since logged and the current
  optimizer settings applied; a finished run recognised; `train.log`, `config.yaml`, trackers;
* state that rides in every checkpoint: `TrainingProgress`, the plateau controller, the schedulers
  and the sampler position; the checkpoint layout (which file holds which model's weights);
* the boundary logic after each step and epoch: validation cadence, logging every reported metric and
  the media, plateau decisions (best checkpoint, LR reduction, best-weight restore, early stop),
  interval saves, non-finite rollback, SIGTERM/SIGINT;
* the end: a final checkpoint unless this step is already saved, exports of the final and the best
  model (the plateau controller's best step, with its metric);
* failures: a checkpoint is never written from non-finite weights (the save is skipped and logged),
  and a save that cannot be written (disk full) ends the run with `EXIT_CODE_CHECKPOINT_WRITE`.

`run_recipe` is the command line every recipe shares (config + overrides, `--resume`, exit codes);
`TrainingSpeed` the steps/s the runs report (`gsv_accel.memory`: peak memory, out-of-memory retries).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .atomic import write_json_atomic
from .checkpoint import (
    CheckpointError,
    CheckpointInfo,
    CheckpointManager,
    CheckpointWriteError,
    library_versions,
)
from .config import (
    SCORE_METRIC,
    CheckpointConfig,
    ConfigError,
    ValidationConfig,
    fingerprint,
    load_config,
    save_config,
    to_dict,
)
from .data.dataset import DatasetCompatibilityError
from .deepspeed_support import deepspeed_requested, is_deepspeed, make_plugins
from .distributed import any_process
from .formats import GSVFormatError
from .lifecycle import (
    EXIT_CODE_CHECKPOINT_WRITE,
    EXIT_CODE_NONFINITE,
    EXIT_CODE_OUT_OF_MEMORY,
    EXIT_CODE_USER_ERROR,
    VALIDATION_HISTORY,
    StopRequest,
    TrainingProgress,
    check_resume_config,
    describe_environment_changes,
    ensure_rng_restored,
    interval_due,
    lookup,
    one_line,
    resolve_resume,
    seed_everything,
    set_cpu_threads,
)
from .memory import OutOfMemoryAtSmallestBatch, OutOfMemoryRetry, PeakMemory, injected_oom_steps
from .plateau import PlateauConfig, PlateauController
from .recipe import BATCH_SHARE, Recipe, RunOutcome, ValidationResult
from .samples import save_validation_samples
from .tracking import (
    TrackingConfig,
    append_metrics_log,
    log_media,
    new_run_id,
    open_log_file,
    setup_logging,
    start_trackers,
    tracker_names,
)

logger = logging.getLogger(__name__)

# Errors in what the user gave us (config, checkpoint, dataset, weights file), found before training:
# one clear message and EXIT_CODE_USER_ERROR, no traceback.
USER_ERRORS = (ConfigError, CheckpointError, DatasetCompatibilityError, GSVFormatError)


class TrainingSession:
    def __init__(self, *, run_dir: str | Path, exp_name: str, seed: int, config: Any,
                 checkpoint: CheckpointConfig, validation: ValidationConfig, plateau: PlateauConfig,
                 tracking: TrackingConfig, max_nonfinite_steps: int, on_nonfinite: str,
                 rollback_lr_factor: float, epochs: int, max_steps: int | None,
                 cpu_threads: int | None = None, shape_sections: Sequence[str] = ("model",)) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.exp_name = exp_name  # exports are named <exp_name>[_<tag>] + the format's suffix
        self.seed = seed
        self.config = config  # the recipe's resolved config dataclass
        self.checkpoint_cfg = checkpoint
        self.validation_cfg = validation
        self.tracking_cfg = tracking
        self.max_nonfinite_steps = max_nonfinite_steps
        self.on_nonfinite = on_nonfinite
        self.rollback_lr_factor = rollback_lr_factor
        self.epochs = epochs
        self.max_steps = max_steps
        self.cpu_threads = cpu_threads
        self.shape_sections = tuple(shape_sections)
        self.plateau = PlateauController(plateau)
        self.progress = TrainingProgress()
        self.stop = StopRequest()
        # The latest validation and its step: recorded only in a checkpoint saved at that step.
        self.last_metrics: dict[str, float] = {}
        self.last_metrics_step: int | None = None
        self.nonfinite_total = 0  # steps skipped in this process's lifetime (logged)
        self.resume_from: CheckpointInfo | None = None
        self.config_changes: list[str] = []  # config keys that differ from the resumed checkpoint's
        self.already_finished = ""  # set by attach: the checkpoint is of a finished run
        self._saved_step: int | None = None  # step of this process's newest checkpoint (same weights)
        # Set by `attach`.
        self.recipe: Recipe | None = None
        self.models: list[torch.nn.Module] = []
        self.schedulers: list = []
        self.sampler = None
        self.schedule_per_step = False
        self.extra_states: dict[str, Accelerator] = {}  # subfolder -> Accelerator (DeepSpeed engine)

    @classmethod
    def from_config(cls, cfg: Any, shape_sections: Sequence[str] = ("model",)) -> TrainingSession:
        """The session of a recipe config with the shared sections (`run`, `train`, `validation`,
        `checkpoint`, `plateau`, `tracking`); `shape_sections` may not change on resume."""
        train = cfg.train
        return cls(run_dir=cfg.run.output_dir, exp_name=cfg.run.exp_name, seed=cfg.run.seed, config=cfg,
                   checkpoint=cfg.checkpoint, validation=cfg.validation, plateau=cfg.plateau,
                   tracking=cfg.tracking, max_nonfinite_steps=train.max_nonfinite_steps,
                   on_nonfinite=train.on_nonfinite, rollback_lr_factor=train.rollback_lr_factor,
                   epochs=train.epochs, max_steps=train.max_steps, cpu_threads=cfg.run.cpu_threads,
                   shape_sections=shape_sections)

    # ------------------------------------------------------------------------------ start-up
    def start(self, resume: str | None, deepspeed_models: Sequence[str] = (),
              kwargs_handlers: Sequence[Any] = ()) -> Accelerator:
        """Create the Accelerator and decide where to resume from (before the recipe builds anything:
        the saved config decides whether the model settings may be used as they are). Nothing is
        written to the run folder yet (see `attach`).

        `deepspeed_models` names the models that get their own DeepSpeed engine when launched with a
        DeepSpeed config (one plugin each, see `gsv_accel.deepspeed_support`); the recipe creates the
        extra Accelerators and passes them to `attach` so checkpoints cover them. `kwargs_handlers`
        go to the Accelerator (e.g. DDP's `find_unused_parameters`)."""
        # From here on SIGTERM/SIGINT only set the stop flag: a signal during set-up (data, models,
        # resume) stops the run at its first step boundary with a checkpoint and the usual exit code.
        self.stop.install()
        plugins = {}
        if deepspeed_models and deepspeed_requested():
            plugins["deepspeed_plugins"] = make_plugins(deepspeed_models)
        self.accelerator = acc = Accelerator(
            **plugins,
            kwargs_handlers=list(kwargs_handlers),
            log_with=tracker_names(self.tracking_cfg) or None,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir),
                                                logging_dir=str(self.run_dir / "tensorboard")),
        )
        setup_logging(acc.process_index, acc.is_main_process)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        self.threads = set_cpu_threads(self.cpu_threads, local_processes)
        logger.info("run folder %s; %d process(es) on %s; mixed precision %s; %d CPU thread(s) per process",
                    self.run_dir, acc.num_processes, acc.device, acc.mixed_precision, self.threads)
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=self.checkpoint_cfg.keep_last,
                                             keep_best=self.checkpoint_cfg.keep_best)
        self.resume_from = resolve_resume(resume, self.checkpoints)
        if self.resume_from is not None:
            self.config_changes = check_resume_config(self.resume_from, to_dict(self.config),
                                                      shape_sections=self.shape_sections)
        seed_everything(self.seed + acc.process_index)
        return acc

    @property
    def resuming(self) -> bool:
        return self.resume_from is not None

    def attach(self, recipe: Recipe, *, models: Sequence[torch.nn.Module], schedulers: Sequence,
               sampler, schedule_per_step: bool, extra_states: dict[str, Accelerator] | None = None,
               export_model: int = 0) -> None:
        """Give the session the recipe's prepared parts (call once, after `accelerator.prepare`).

        `models`: prepared in this order on the session's Accelerator (or each on its own one in
        `extra_states`, under DeepSpeed); checkpoints hold their weights, best-weight restore loads
        them all, `models[export_model]` is the exported one. `schedulers` (not passed to prepare:
        Accelerate would step them once per process) advance per optimizer step when
        `schedule_per_step`, else per epoch; the plateau scale sits on top of both.

        Checks the monitored metric, loads the checkpoint when resuming (and applies the current
        optimizer settings), then opens the run folder: `train.log`, `config.yaml`, trackers. A run
        whose checkpoint says it finished is left untouched (`run` then only says so)."""
        acc = self.accelerator
        reported = scored_metrics(tuple(recipe.reported_metrics()), self.validation_cfg.score)
        monitor = self.plateau.cfg.monitor
        if monitor not in reported:
            hint = f" ({SCORE_METRIC} needs validation.score)" if monitor == SCORE_METRIC else ""
            raise ConfigError(f"plateau.monitor={monitor!r} is not a metric this recipe reports{hint}; it "
                              "reports " + ", ".join(reported))
        if monitor == SCORE_METRIC and self.plateau.cfg.mode != "max":
            raise ConfigError(f"plateau.monitor={SCORE_METRIC} is higher-is-better: set plateau.mode=max")
        self.recipe, self.models, self.export_model = recipe, list(models), export_model
        self.schedulers, self.sampler = list(schedulers), sampler
        self.schedule_per_step = schedule_per_step
        self.extra_states = dict(extra_states or {})
        for obj in (*self.schedulers, self.progress, self.plateau):
            acc.register_for_checkpointing(obj)
        if self.resume_from is not None:
            check_same_engine(self.resume_from.path, deepspeed=is_deepspeed(acc))
            current = optimizer_settings(self.schedulers)
            self._load_state(self.resume_from.path)
            ensure_rng_restored(self.resume_from, acc.process_index, self.seed, acc.device.type)
            self.sampler.load_state_dict(self.progress.sampler)
            self.already_finished = self._finished_text()
            if self.already_finished:
                return  # nothing is written: the run folder stays as the finished run left it
            self._apply_settings(current)
        else:
            self.progress.run_id = new_run_id()
        self.plateau.scale_learning_rates(self.schedulers)
        self._open_run_folder()

    def _open_run_folder(self) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            open_log_file(self.run_dir)
            self.checkpoints.clean_stale()
            save_config(self.config, self.run_dir / "config.yaml")
        acc.wait_for_everyone()
        if not acc.is_main_process:
            open_log_file(self.run_dir)
        if self.resume_from is not None:
            logger.info("resumed from %s: step %d, epoch %d", self.resume_from.path, self.progress.step,
                        self.progress.epoch)
            for line in describe_environment_changes(self.resume_from, self._manifest_environment()):
                logger.warning("resume: %s", line)
        start_trackers(acc, self.tracking_cfg, self.run_dir, to_dict(self.config), self.progress.run_id)
        if self.resume_from is not None:
            self._relog_unflushed_validations()
        ck = self.checkpoint_cfg
        if ck.every_n_epochs and ck.every_n_epochs > self.epochs and not ck.every_n_steps:
            logger.warning("checkpoint.every_n_epochs=%d is longer than the run (%d epochs): only the "
                           "final checkpoint will be written", ck.every_n_epochs, self.epochs)

    def _relog_unflushed_validations(self) -> None:
        """Log again the validation rows of the checkpoint's history that the trackers may have lost.

        A killed process loses what its trackers still buffered (W&B offline writes its file in large
        chunks: after SIGKILL it can be empty), and the resumed run starts after those validations. A
        process that ended cleanly records up to which step its trackers were flushed
        (`TRACKERS_FLUSHED`); rows after that step, up to the checkpoint, are logged once more."""
        flushed = read_trackers_flushed(self.run_dir, self.progress.run_id)
        rows = [(step, metrics) for step, metrics in self.progress.validations if step > flushed]
        for step, metrics in rows:
            self.accelerator.log(metrics, step=step)
        if rows:
            logger.info("re-logged %d validation row(s) (steps %s) that the previous process may not have "
                        "flushed to the trackers", len(rows), ", ".join(str(step) for step, _ in rows))

    def _trackers_ended(self) -> None:
        """After `end_training`: everything logged so far is on disk (main process records it)."""
        if self.accelerator.is_main_process and self.run_dir.is_dir():
            write_trackers_flushed(self.run_dir, self.progress.run_id, self.progress.step)

    def _finished_text(self) -> str:
        """Why the checkpointed run needs no more training with the current limits ("" if it does)."""
        progress = self.progress
        if self.plateau.stopped:
            return (f"it stopped early at step {progress.step} ({self.plateau.stop_reason}). To train on, "
                    "start a new run from its best export (train.pretrained_*=<run>/exports/...)")
        if self.max_steps is not None and progress.step >= self.max_steps:
            return (f"it reached train.max_steps={self.max_steps} (step {progress.step}). To continue, "
                    "raise train.max_steps and resume")
        if progress.epoch >= self.epochs:
            return (f"it trained all train.epochs={self.epochs} (step {progress.step}). To continue, raise "
                    "train.epochs and resume")
        return ""

    def _apply_settings(self, current: list[dict[str, Any]]) -> None:
        """After `load_state`: the optimizers' and schedules' settings of the current config win
        (learning rate and group ratios, betas, eps, weight decay, decay rate); the position (epoch,
        step, moments) and the plateau scale come from the checkpoint. Each change is logged."""
        saved, now = self.resume_from.manifest.get("config", {}), to_dict(self.config)
        for key in self.config_changes:
            logger.info("resume: %s changed from %r to %r (applies from the next step)", key,
                        lookup(saved, key), lookup(now, key))
        for index, (scheduler, wanted) in enumerate(zip(self.schedulers, current, strict=True)):
            for line in apply_optimizer_settings(scheduler, wanted):
                logger.info("resume: optimizer %d %s", index, line)

    def _manifest_environment(self) -> dict[str, Any]:
        acc = self.accelerator
        return {"world_size": acc.num_processes, "versions": library_versions(),
                "extra": {"device_type": acc.device.type, "mixed_precision": str(acc.mixed_precision),
                          "cpu_threads": self.threads, "run_dir": str(self.run_dir)}}

    # ------------------------------------------------------------------------------ the loop
    def record_step(self, skipped: bool) -> None:
        """Count the optimizer step (and consecutive skipped ones)."""
        self.progress.step += 1
        if skipped:
            self.progress.nonfinite_steps += 1
            self.nonfinite_total += 1
        else:
            self.progress.nonfinite_steps = 0

    def end_epoch(self) -> None:
        """The sampler's next epoch and, for per-epoch schedules (S2's ExponentialLR), the LR decay
        with the plateau scale on top."""
        self.progress.epoch += 1
        self._saved_step = None  # the epoch counter (and the schedule) moved on since that save
        self.sampler.set_epoch(self.progress.epoch)
        if not self.schedule_per_step:
            self.step_schedulers()

    def step_schedulers(self) -> None:
        """Advance the LR schedules one step, keeping the plateau scale on top."""
        for scheduler in self.schedulers:
            scheduler.step()
        self.plateau.scale_learning_rates(self.schedulers)

    def run(self, loader, *, grad_accum: int, log_every: int, desc: str,
            postfix: Callable[[dict[str, float]], dict[str, str]]) -> int:
        """The epoch loop every recipe runs; returns the process exit code.

        `recipe.train_step(micro_batches)` does one optimizer step over `grad_accum` batches. After
        each step and epoch `after_step` validates, decides and saves; a rollback reloads the last
        checkpoint and the loop goes on from its position.
        """
        if self.already_finished:
            logger.info("%s is finished: %s", self.run_dir, self.already_finished)
            self.stop.restore()
            return 0
        acc, progress, sampler = self.accelerator, self.progress, self.sampler
        total_steps = sampler.steps_per_epoch() // grad_accum * self.epochs
        if self.max_steps is not None:
            total_steps = min(total_steps, self.max_steps)
        progress_lines = acc.is_main_process and self.config.run.progress == "lines"
        bar = tqdm(total=total_steps, initial=progress.step, desc=desc, dynamic_ncols=True,
                   disable=not acc.is_main_process or progress_lines)
        speed, memory = TrainingSpeed(acc.device), PeakMemory(acc.device)
        oom = OutOfMemoryRetry(acc, self.models, sampler, deepspeed=is_deepspeed(acc),
                               injected_steps=injected_oom_steps(rank=acc.process_index))
        if sampler.micro_batch_size < sampler.batch_size:
            logger.info("micro-batches of %d item(s) (data.batch_size %d), as the checkpoint's run had after "
                        "an out-of-memory error", sampler.micro_batch_size, sampler.batch_size)
        outcome = RunOutcome.CONTINUE
        while progress.epoch < self.epochs and outcome is RunOutcome.CONTINUE:
            if sampler.epoch != progress.epoch:
                sampler.set_epoch(progress.epoch)
            # How many micro-batches each step takes from the loader, and their shares of their batches
            # (one whole batch each unless an out-of-memory error made the sampler cut them).
            plan = sampler.step_shares(grad_accum)
            shares, micro_batches, retry = next(plan, None), [], False
            for batch in loader:
                if shares is None:
                    continue  # batches after the last whole step of the epoch are not trained on
                micro_batches.append(batch)
                if len(micro_batches) < len(shares):
                    continue
                for micro_batch, share in zip(micro_batches, shares, strict=True):
                    micro_batch[BATCH_SHARE] = share
                started = time.perf_counter()
                try:
                    result = oom.attempt(self.recipe.train_step, micro_batches, progress.step + 1)
                except OutOfMemoryAtSmallestBatch as err:
                    logger.error("%s", err)
                    outcome = RunOutcome.OUT_OF_MEMORY
                    break
                if result is None:
                    # Out of memory: the sampler now cuts smaller micro-batches; fetch this step's items
                    # again (its position moves only after a completed step).
                    retry = True
                    break
                speed.add(time.perf_counter() - started)
                micro_batches, shares = [], next(plan, None)
                sampler.advance(grad_accum)
                self.record_step(result.skipped)
                if self.schedule_per_step:
                    self.step_schedulers()
                logs = result.logs
                if progress.step % log_every == 0:
                    logs["train/nonfinite_steps_total"] = float(self.nonfinite_total)
                    logs.update(speed.logs())
                    logs["sys/peak_memory_gib"] = memory.window_gib()
                    logs.update(oom.logs())
                    self._log(logs)
                bar.set_postfix(postfix(logs), refresh=False)
                bar.update(1)
                if progress_lines and progress.step % log_every == 0:
                    print_progress_line(progress.epoch, sampler, progress.step, total_steps, postfix(logs))
                outcome = self.after_step(epoch_end=False)
                if outcome is not RunOutcome.CONTINUE:
                    break
            else:
                # The epoch ran to its end: per-epoch LR decay, then epoch-level validation and saves.
                self.end_epoch()
                if progress_lines:
                    print(f"====> Epoch: {progress.epoch}", flush=True)
                outcome = self.after_step(epoch_end=True)
            if retry:
                continue
            if outcome is RunOutcome.ROLLBACK:
                outcome = self.rollback()
                bar.n = progress.step
                bar.refresh()
        bar.close()
        logger.info("%s", speed.summary(memory))
        if outcome is RunOutcome.CONTINUE:
            outcome = RunOutcome.FINISHED
        self.finish(outcome)
        return self.exit_code(outcome)

    def after_step(self, epoch_end: bool) -> RunOutcome:
        """Validation, plateau decisions, interval saves and stop checks at a step or epoch boundary."""
        progress, ck = self.progress, self.checkpoint_cfg
        count = progress.epoch if epoch_end else progress.step
        every_val = self.validation_cfg.every_n_epochs if epoch_end else self.validation_cfg.every_n_steps
        every_save = ck.every_n_epochs if epoch_end else ck.every_n_steps
        if not epoch_end and progress.nonfinite_steps >= self.max_nonfinite_steps:
            logger.error("%d consecutive steps with non-finite losses (last at step %d)",
                         progress.nonfinite_steps, progress.step)
            return RunOutcome.ROLLBACK if self.on_nonfinite == "rollback" else RunOutcome.NONFINITE
        if interval_due(every_val, count):
            outcome = self._evaluate()
            if outcome is not RunOutcome.CONTINUE:
                return outcome
        if self._saved_step != progress.step and interval_due(every_save, count):
            self.save("interval")
        if self.stop.requested(self.accelerator):
            return RunOutcome.SIGNAL
        if self.max_steps is not None and progress.step >= self.max_steps:
            return RunOutcome.MAX_STEPS
        return RunOutcome.CONTINUE

    def validate(self) -> ValidationResult:
        """The recipe's validation (all processes), on a forked RNG so that it never changes the
        training run's random stream."""
        acc = self.accelerator
        devices = [acc.device] if acc.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return self.recipe.validate()

    def _log(self, values: dict[str, float]) -> None:
        """Log to the trackers and append the row to `<run>/metrics.jsonl` (main process)."""
        self.accelerator.log(values, step=self.progress.step)
        if self.accelerator.is_main_process:
            append_metrics_log(self.run_dir, self.progress.step, self.progress.epoch, values)

    def _evaluate(self) -> RunOutcome:
        """Validate (adding `val/score` when `validation.score` is set), log every metric and the
        media, keep the samples in the run folder, and act on the plateau controller's decision."""
        progress, monitor = self.progress, self.plateau.cfg.monitor
        result = self.validate()
        add_score(result.metrics, self.validation_cfg.score)
        if monitor not in result.metrics:
            raise ConfigError(f"plateau.monitor={monitor!r} is not among the validation's metrics: "
                              + ", ".join(result.metrics))
        metric = result.metrics[monitor]
        decision = self.plateau.update(metric, step=progress.step, epoch=progress.epoch)
        self._log({**result.metrics, **self.plateau.log_values()})
        log_media(self.accelerator, progress.step, result.media, result.sampling_rate or 0)
        self._save_samples(result, decision.reason)
        others = ", ".join(f"{k} = {v:.5f}" for k, v in result.metrics.items() if k != monitor)
        logger.info("step %d epoch %d: %s = %.5f%s (%s)", progress.step, progress.epoch, monitor, metric,
                    f"; {others}" if others else "", decision.reason)
        self.last_metrics, self.last_metrics_step = dict(result.metrics), progress.step
        progress.validations = [*progress.validations,
                                [progress.step, dict(result.metrics)]][-VALIDATION_HISTORY:]
        if decision.is_best:
            progress.best_metric, progress.best_step = metric, progress.step
            if self.checkpoint_cfg.save_on_best:
                self.save("best", best=True)
        if decision.action == "reduce_lr":
            self.plateau.scale_learning_rates(self.schedulers)
        if decision.action == "stop":
            return RunOutcome.EARLY_STOP
        if decision.restore_best:  # a divergence rollback: back to the best weights, lower LR
            self.restore_best_weights()
        return RunOutcome.CONTINUE

    def _save_samples(self, result: ValidationResult, decision: str) -> None:
        """`<run>/samples/step_<N>/` (main process; `gsv_accel.samples`). Samples are for listening:
        a failure to write them (disk full) is logged and training goes on; the checkpoint that
        follows reports a full disk as it must."""
        if not self.accelerator.is_main_process or not result.media:
            return
        try:
            save_validation_samples(self.run_dir, step=self.progress.step, epoch=self.progress.epoch,
                                    media=result.media, sampling_rate=result.sampling_rate or 0,
                                    metrics=result.metrics, decision=decision)
        except OSError as err:
            logger.warning("validation samples of step %d not saved: %s", self.progress.step, err)

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, reason: str, best: bool = False, weights_of_step: int | None = None) -> Path | None:
        """A complete checkpoint of everything needed to continue exactly (call on all processes).

        Not written (None returned, error logged) when the models hold NaN/inf values: such a
        checkpoint would become the resume and rollback point. The validation metrics are recorded
        only in a checkpoint of the step they were measured at and of those weights, so "best"
        always means those weights; `weights_of_step` records that the weights are an earlier
        step's (restored best weights). Raises CheckpointWriteError (on every process) when the
        checkpoint cannot be written."""
        acc, progress = self.accelerator, self.progress
        background = self.checkpoint_cfg.async_save and self.checkpoints.writes_in_background(
            acc, self.extra_states)
        # A background writer checks its host copy instead (refuse_nonfinite): off the loop.
        broken = [] if background else self.nonfinite_weights()
        if broken:
            logger.error("not saving a checkpoint at step %d (%s): non-finite values in %s; the newest "
                         "complete checkpoint stays the one to resume or roll back to", progress.step,
                         reason, ", ".join(broken[:5]) or "another process's models")
            return None
        progress.sampler = self.sampler.state_dict()
        same_weights = self.last_metrics_step == progress.step and weights_of_step is None
        # The same step saved again with the same weights stays the best checkpoint it was.
        best = best or (same_weights and self.plateau.best_step == progress.step)
        environment = self._manifest_environment()["extra"]
        extra = {"reason": reason, "wandb_run_id": progress.run_id, **environment}
        if weights_of_step is not None:
            extra["weights_of_step"] = weights_of_step
        protect = (self.plateau.best_step,) if self.plateau.best_step is not None else ()
        started = time.perf_counter()
        path = self.checkpoints.save(
            acc, step=progress.step, epoch=progress.epoch, metrics=self.last_metrics if same_weights else {},
            config_fingerprint=fingerprint(to_dict(self.config).get("model", {})),
            config=to_dict(self.config), extra=extra, extra_states=self.extra_states, best=best,
            protect=protect, background=background, refuse_nonfinite=True)
        self._saved_step = progress.step if weights_of_step is None else None
        if self.checkpoints.in_background:  # "saved checkpoint" is logged by the writer once published
            logger.info("checkpoint %s (%s) handed to the background writer after %.3f s", path.name, reason,
                        time.perf_counter() - started)
        else:
            logger.info("saved checkpoint %s (%s)", path.name, reason)
        if self.checkpoint_cfg.export_every_save:
            self.export(None, progress.epoch, progress.step, "")
        return path

    def _load_state(self, folder: Path) -> None:
        """`load_state` of the main Accelerator and of each extra one from its subfolder."""
        self.accelerator.load_state(str(folder))
        for sub, other in self.extra_states.items():
            other.load_state(str(Path(folder) / sub))

    def _model_location(self, model) -> tuple[Accelerator, str, int]:
        """(the model's Accelerator, its checkpoint subfolder, its index among that one's models)."""
        for sub, acc in (("", self.accelerator), *self.extra_states.items()):
            for index, prepared in enumerate(acc._models):
                # Compared unwrapped: Accelerate may keep another wrapper (DDP, compile) than it returned.
                if acc.unwrap_model(prepared) is acc.unwrap_model(model):
                    return acc, sub, index
        raise ValueError("the model was not prepared by the session's Accelerators")

    def model_weights(self, folder: Path, model) -> dict[str, torch.Tensor]:
        """One attached model's weights as a checkpoint folder holds them (Accelerate writes
        `model.safetensors`, `model_1.safetensors`, ... in prepare order; DeepSpeed engines their
        ZeRO files, consolidated here to fp32)."""
        acc, sub, index = self._model_location(model)
        folder = Path(folder) / sub
        if is_deepspeed(acc):
            from .deepspeed_support import consolidated_state_dict

            return consolidated_state_dict(folder)
        return load_file(str(folder / ("model.safetensors" if index == 0 else f"model_{index}.safetensors")))

    def load_weights(self, folder: Path) -> None:
        """Every attached model's weights from a checkpoint folder (all processes)."""
        for model in self.models:
            acc = self._model_location(model)[0]
            weights = self.model_weights(folder, model)
            if is_deepspeed(acc):
                from .deepspeed_support import load_into_engine

                load_into_engine(acc, model, weights)
            else:
                acc.unwrap_model(model).load_state_dict(weights)

    def nonfinite_weights(self) -> list[str]:
        """Names of the attached models' floating-point parameters and buffers holding NaN/inf
        (all processes agree: any process's finding counts on every one)."""
        tensors = [(f"{index}.{name}" if index else name, tensor)
                   for index, model in enumerate(self.models)
                   for name, tensor in self._model_location(model)[0].unwrap_model(model).state_dict().items()
                   if tensor.is_floating_point()]
        broken: list[str] = []
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
            broken = [name for name, t in tensors if not bool(torch.isfinite(t).all())]
        if any_process(self.accelerator, bool(broken))[0] and not broken:
            broken = [""]  # broken on another process only
        return broken

    def rollback(self) -> RunOutcome:
        """Return to the last complete checkpoint after repeated non-finite steps, with the LR scale
        times `rollback_lr_factor`. Returns CONTINUE, or NONFINITE when no checkpoint or LR
        reduction is left (the run then stops)."""
        self.checkpoints.wait(self.accelerator)  # a background save in flight may be the newest one
        target = self.checkpoints.latest_valid()
        if target is None:
            logger.error("no complete checkpoint to roll back to: stopping")
            return RunOutcome.NONFINITE
        scale_before = self.plateau.lr_scale
        self._load_state(target.path)
        self.sampler.load_state_dict(self.progress.sampler)
        self.progress.nonfinite_steps = 0
        self.last_metrics_step = None
        self._saved_step = self.progress.step
        # load_state restored the checkpoint's LR scale: continue from the lower of the two, so that
        # repeated rollbacks keep lowering it (and end at min_lr_scale) instead of cycling forever.
        self.plateau.lr_scale = min(self.plateau.lr_scale, scale_before)
        scaled = self.plateau.scale_down(self.rollback_lr_factor)
        if scaled is None:
            logger.error("rolled back to %s but the LR scale is already at plateau.min_lr_scale: "
                         "stopping", target.path.name)
            return RunOutcome.NONFINITE
        self.plateau.scale_learning_rates(self.schedulers)
        logger.warning("rolled back to %s (step %d); LR scale %.4g -> %.4g", target.path.name,
                       self.progress.step, *scaled)
        return RunOutcome.CONTINUE

    def best_checkpoint(self) -> CheckpointInfo | None:
        """The checkpoint of the plateau controller's best step (its decision, min_delta and mode
        included), or None when there is none (no validation yet, or `save_on_best` off and that step
        not saved)."""
        self.checkpoints.wait(self.accelerator)  # it may be the background save in flight (all processes)
        step = self.plateau.best_step
        return None if step is None else self.checkpoints.find(step)

    def restore_best_weights(self) -> CheckpointInfo | None:
        """Load the models' weights of the best checkpoint (all processes); returns it, or None."""
        best = self.best_checkpoint()
        if best is None:
            logger.warning("no checkpoint of the best step to restore: keeping the current weights")
            return None
        self.load_weights(best.path)
        self._saved_step = None
        logger.info("restored the best weights (step %d, %s = %.5f)", best.step, self.plateau.cfg.monitor,
                    self.plateau.best)
        return best

    def export(self, checkpoint: Path | None, epoch: int, step: int, tag: str = "") -> Path | None:
        """Export the current weights (`checkpoint` None) or a checkpoint folder's in the GPT-SoVITS
        format, as `<exp_name>[_<tag>]` (main process only). Weights holding NaN/inf are never exported:
        an error is logged and None returned."""
        if not self.accelerator.is_main_process:
            return None
        model = self.models[self.export_model]
        if checkpoint is None:
            state_dict = self._model_location(model)[0].unwrap_model(model).state_dict()
        else:
            state_dict = self.model_weights(checkpoint, model)
        broken = nonfinite_tensors(state_dict)
        if broken:
            logger.error("not exporting step %d: non-finite weights in %s", step, ", ".join(broken[:5]))
            return None
        path = self.recipe.write_export(state_dict, self.exp_name + (f"_{tag}" if tag else ""), epoch, step)
        logger.info("exported %s", path)
        return path

    def finish(self, outcome: RunOutcome) -> None:
        """The one place that decides the end: best weights restored at an early stop, a final
        checkpoint unless this step's weights are already saved, exports of the final and the best
        model; then the trackers end."""
        acc, progress = self.accelerator, self.progress
        weights_of_step = None
        if outcome is RunOutcome.EARLY_STOP and self.plateau.cfg.restore_best:
            restored = self.restore_best_weights()
            weights_of_step = restored.step if restored is not None else None
        if outcome.completes_run:
            progress.finished = outcome.value  # for the record: a re-launch tells it from the limits
        if self._saved_step != progress.step:
            self.save(f"final ({outcome.value})", weights_of_step=weights_of_step)
        # The final (and SIGTERM/SIGINT) checkpoint is complete before the run reports its end; a
        # background save that failed is raised here (exit code EXIT_CODE_CHECKPOINT_WRITE).
        self.checkpoints.wait(acc)
        self.export(None, progress.epoch, progress.step, "")
        best = self.best_checkpoint()
        if best is not None:
            self.export(best.path, best.epoch, best.step, "best")
        logger.info("training stopped: %s at step %d, epoch %d", outcome.value, progress.step, progress.epoch)
        self.stop.restore()
        acc.end_training()
        self._trackers_ended()

    def exit_code(self, outcome: RunOutcome) -> int:
        """The process exit code for how the run ended (see docs/reliability.md): 0 finished or early
        stop, 128 + signal number after SIGTERM/SIGINT, EXIT_CODE_NONFINITE after non-finite losses."""
        if outcome is RunOutcome.SIGNAL:
            return self.stop.exit_code
        if outcome is RunOutcome.OUT_OF_MEMORY:
            return EXIT_CODE_OUT_OF_MEMORY
        return EXIT_CODE_NONFINITE if outcome is RunOutcome.NONFINITE else 0

    def abort_on_write_error(self, err: CheckpointWriteError) -> int:
        """End a run whose checkpoint could not be written (all processes): log, end the trackers,
        return EXIT_CODE_CHECKPOINT_WRITE. Later saves would fail too, so training does not go on."""
        logger.error("%s", err, extra={"console": False})
        step = err.step if err.step is not None else self.progress.step  # a background save fails later
        logger.error("training stopped: checkpoint could not be written at step %d; nothing after the "
                     "newest complete checkpoint was kept", step, extra={"console": False})
        self.stop.restore()
        try:
            self.accelerator.end_training()
            self._trackers_ended()
        except (OSError, RuntimeError) as end_err:  # a tracker flushing to the same full disk
            logger.warning("ending the trackers failed too: %s", end_err)
        return EXIT_CODE_CHECKPOINT_WRITE


def scored_metrics(reported: tuple[str, ...], score: dict[str, float]) -> tuple[str, ...]:
    """The metrics a recipe reports plus `val/score` when `validation.score` weights some; a weight on
    a metric the recipe does not report is refused, naming the ones it does."""
    if not score:
        return reported
    unknown = [name for name in score if name not in reported]
    if unknown:
        raise ConfigError(f"validation.score weights {', '.join(unknown)}, which this recipe does not "
                          "report; it reports " + ", ".join(reported))
    return (*reported, SCORE_METRIC)


def add_score(metrics: dict[str, float], score: dict[str, float]) -> None:
    """Add `val/score` = sum(weight * metric) to one validation's metrics (nothing when `score` is
    empty). Higher is better; NaN in a weighted metric makes the score NaN."""
    if score:
        metrics[SCORE_METRIC] = float(sum(weight * metrics[name] for name, weight in score.items()))


# Optimizer/schedule settings that a config may change on resume; the rest of the optimizer's and
# scheduler's state (moments, step counts, epoch) is the run's position and comes from the checkpoint.
_GROUP_SETTINGS = ("initial_lr", "betas", "eps", "weight_decay", "momentum", "amsgrad")
_SCHEDULE_SETTINGS = ("gamma",)


def _raw(scheduler):
    return getattr(scheduler, "scheduler", scheduler)  # an Accelerate AcceleratedScheduler, or itself


def optimizer_settings(schedulers: Sequence) -> list[dict[str, Any]]:
    """The settings the current config gave each scheduler and its optimizer's groups (before
    `load_state` replaces them with the checkpoint's)."""
    result = []
    for scheduler in schedulers:
        raw = _raw(scheduler)
        groups = [{key: group[key] for key in _GROUP_SETTINGS if key in group}
                  for group in raw.optimizer.param_groups]
        schedule = {key: getattr(raw, key) for key in _SCHEDULE_SETTINGS if hasattr(raw, key)}
        result.append({"groups": groups, "schedule": schedule})
    return result


def apply_optimizer_settings(scheduler, wanted: dict[str, Any]) -> list[str]:
    """Put the current config's settings back after `load_state`; returns one line per change.
    A changed `initial_lr` (train.learning_rate, or a group's ratio) becomes the schedule's base LR,
    so the LR follows the same schedule position from the new base."""
    raw = _raw(scheduler)
    lines = []
    for index, (group, settings) in enumerate(zip(raw.optimizer.param_groups, wanted["groups"], strict=True)):
        for key, value in settings.items():
            if group.get(key) != value:
                lines.append(f"group {index}: {key} {group.get(key)!r} -> {value!r}")
                group[key] = value
                if key == "initial_lr":
                    raw.base_lrs[index] = value
    for key, value in wanted["schedule"].items():
        if getattr(raw, key) != value:
            lines.append(f"schedule: {key} {getattr(raw, key)!r} -> {value!r}")
            setattr(raw, key, value)
    return lines


# Written in the run folder when a process ended its trackers cleanly: {"run_id", "step"}.
TRACKERS_FLUSHED = "trackers_flushed.json"


def read_trackers_flushed(run_dir: Path, run_id: str) -> int:
    """The step up to which the trackers of `run_id` are known to hold every row (-1: none known)."""
    try:
        record = json.loads((run_dir / TRACKERS_FLUSHED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return -1
    return int(record.get("step", -1)) if record.get("run_id") == run_id else -1


def write_trackers_flushed(run_dir: Path, run_id: str, step: int) -> None:
    write_json_atomic(run_dir / TRACKERS_FLUSHED, {"run_id": run_id, "step": step})


def check_same_engine(checkpoint: Path, *, deepspeed: bool) -> None:
    """Refuse to resume a DeepSpeed checkpoint without DeepSpeed or the other way round: DeepSpeed
    stores the models and the partitioned optimizer states in its own files (`pytorch_model/`), which
    `load_state` of the other kind cannot read."""
    written_by_deepspeed = (Path(checkpoint) / "pytorch_model").is_dir()
    if written_by_deepspeed == deepspeed:
        return
    if written_by_deepspeed:
        raise CheckpointError(
            f"{checkpoint} was written under DeepSpeed and this run is not: resume it with the same "
            "DeepSpeed accelerate config (`accelerate launch --config_file recipes/accelerate/"
            "deepspeed_zero2.yaml ...`), or start a new run without DeepSpeed from its export "
            "(train.pretrained_s2G=<run>/exports/<file>.pth)")
    raise CheckpointError(
        f"{checkpoint} was written without DeepSpeed and this run uses it: resume it without DeepSpeed "
        "(the accelerate config it was started with), or start a new DeepSpeed run from its export "
        "(train.pretrained_s2G=<run>/exports/<file>.pth)")


def print_progress_line(epoch: int, sampler, step: int, total_steps: int, shown: dict[str, str]) -> None:
    """`run.progress: lines`: the official trainers' "Train Epoch: N [P%]" line (epochs counted from
    1), with the step and the values the progress bar would show."""
    done = sampler.consumed_batches / max(1, sampler.steps_per_epoch() * sampler.num_replicas)
    values = " ".join(f"{key}={value}" for key, value in shown.items())
    print(f"Train Epoch: {epoch + 1} [{100.0 * done:.0f}%] step {step}/{total_steps} {values}".rstrip(),
          flush=True)


class TrainingSpeed:
    """Time spent inside the training step (forward, backward, optimizer).

    Data loading, validation and checkpoints are not counted: this is the figure to compare across
    precisions and launchers. No extra synchronisation is needed on a GPU: every step reads its losses
    back to the host (`float(loss)`), so its wall time includes its kernels."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.steps = 0

    def add(self, seconds: float) -> None:
        self.seconds += seconds
        self.steps += 1

    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")

    def logs(self) -> dict[str, float]:
        return {"perf/train_steps_per_sec": self.steps_per_second()}

    def summary(self, memory: PeakMemory) -> str:
        """The run's speed and peak memory (`memory.source` says which) in one line."""
        return (f"speed: {self.steps_per_second():.3f} training steps/s over {self.steps} steps of this "
                f"process (data loading, validation and checkpoints not counted); {memory.source}: "
                f"peak memory {memory.run_gib():.2f} GiB")


def nonfinite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN/inf (such weights are never exported)."""
    return [key for key, tensor in state_dict.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def run_recipe(name: str, description: str, config_class: type, recipe_class: type, default_config: Path,
               argv: list[str] | None = None) -> int:
    """A recipe's command line, `[--config FILE] [--resume auto|PATH] [section.key=value ...]`: load the
    config, `recipe_class(cfg, resume=...).setup()`, then `.train()`. Returns the exit code: the
    training's, EXIT_CODE_USER_ERROR for bad input found during set-up (one line on stderr, nothing
    written to the run folder), EXIT_CODE_CHECKPOINT_WRITE when a checkpoint cannot be written
    (later saves would fail too, so the run stops)."""
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--config", type=Path, default=default_config, help="YAML config (default: demo)")
    parser.add_argument("--resume", default=None,
                        help="'auto' (latest complete checkpoint of the run, fresh start if none) or a "
                             "checkpoint folder")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    # Intermixed: overrides may come before and after --config/--resume (`... x=1 --resume auto y=2`).
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = load_config(config_class, args.config, args.overrides)
        recipe = recipe_class(cfg, resume=args.resume)
        recipe.setup()
    except USER_ERRORS as err:
        return report_user_error(name, err)
    try:
        return recipe.train()
    except CheckpointWriteError as err:
        print(f"{name}: error: {one_line(err)}", file=sys.stderr)
        return recipe.session.abort_on_write_error(err)


def report_user_error(name: str, err: BaseException) -> int:
    """Bad input: exactly one line on stderr (`<name>: error: ...`), the same in train.log when the
    run folder is open already; returns EXIT_CODE_USER_ERROR."""
    message = one_line(err)
    logger.error("%s", message, extra={"console": False})
    print(f"{name}: error: {message}", file=sys.stderr)
    return EXIT_CODE_USER_ERROR
