"""The bookkeeping of one training run, shared by the S1 and S2 recipes.

A recipe owns its models, optimizers, data, training step and validation; `TrainingSession` owns
what every run needs around them and must do identically:

* start-up: the Accelerator (trackers chosen by config), `train.log`, the checkpoint manager, the
  resume decision (`--resume auto|PATH`, checked against the saved config), the resolved config file;
* state that rides in every checkpoint: `TrainingProgress`, the plateau controller, the recipe's
  schedulers and sampler position;
* the boundary logic after each step and epoch: validation cadence, plateau decisions (best
  checkpoint, LR reduction, best-weight restore, early stop), interval saves, non-finite rollback,
  SIGTERM/SIGINT;
* the end: a final checkpoint whatever the intervals, exports of the final and the best model;
* failures: a checkpoint is never written from non-finite weights (the save is skipped and logged),
  and a save that cannot be written (disk full) ends the run with `EXIT_CODE_CHECKPOINT_WRITE`
  (`run_recipe` catches `CheckpointWriteError` and calls `abort_on_write_error`).

The recipe plugs in four callables: `validate() -> float` (the metric, already averaged over
processes), `load_weights(checkpoint_folder)` (the models' weights from a checkpoint, for best-weight
restore), and for exports `export_weights(checkpoint_folder | None)` (the exported model's state dict:
a checkpoint's, or the current one for None) and `write_export(state_dict, name, epoch, step) -> path`
(the file in the GPT-SoVITS format); the session decides when, names the file and refuses
non-finite weights. `run_recipe` is the command line both recipes share (config + overrides,
`--resume`, exit codes); `TrainingSpeed` the steps/s and peak memory they report.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, CheckpointInfo, CheckpointManager, CheckpointWriteError
from .config import (
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
from .formats import GSVFormatError
from .plateau import PlateauConfig, PlateauController
from .tracking import TrackingConfig, new_run_id, setup_logging, start_trackers, tracker_names
from .training import (
    EXIT_CODE_CHECKPOINT_WRITE,
    EXIT_CODE_NONFINITE,
    EXIT_CODE_USER_ERROR,
    StopRequest,
    TrainingProgress,
    check_resume_config,
    ensure_rng_restored,
    interval_due,
    resolve_resume,
    seed_everything,
)

logger = logging.getLogger(__name__)

# Errors in what the user gave us (config, checkpoint, dataset, weights file), found before training:
# one clear message and EXIT_CODE_USER_ERROR, no traceback.
USER_ERRORS = (ConfigError, CheckpointError, DatasetCompatibilityError, GSVFormatError)


class TrainingSession:
    def __init__(self, *, run_dir: str | Path, exp_name: str, seed: int, config: Any,
                 checkpoint: CheckpointConfig, validation: ValidationConfig, plateau: PlateauConfig,
                 tracking: TrackingConfig, max_nonfinite_steps: int, on_nonfinite: str,
                 rollback_lr_factor: float, shape_sections: Sequence[str] = ("model",)) -> None:
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
        self.shape_sections = tuple(shape_sections)
        self.plateau = PlateauController(plateau)
        self.progress = TrainingProgress()
        self.stop = StopRequest()
        # The latest validation and its step: recorded only in a checkpoint saved at that step.
        self.last_metrics: dict[str, float] = {}
        self.last_metrics_step: int | None = None
        self.nonfinite_total = 0  # steps skipped in this process's lifetime (logged)
        self.resume_from: CheckpointInfo | None = None
        # Set by the recipe in its setup (see the module docstring).
        self.sampler = None
        self.schedulers: list = []
        self.validate: Callable[[], float] | None = None
        self.export_weights: Callable[[Path | None], dict[str, torch.Tensor]] | None = None
        self.write_export: Callable[[dict[str, torch.Tensor], str, int, int], Path] | None = None
        self.load_weights: Callable[[Path], None] | None = None
        # Extra Accelerators (one DeepSpeed engine each) saved/loaded in checkpoint subfolders.
        self.extra_states: dict[str, Accelerator] = {}

    @classmethod
    def from_config(cls, cfg: Any, shape_sections: Sequence[str] = ("model",)) -> TrainingSession:
        """The session of a recipe config with the shared sections (`run`, `train`, `validation`,
        `checkpoint`, `plateau`, `tracking`); `shape_sections` may not change on resume."""
        train = cfg.train
        return cls(run_dir=cfg.run.output_dir, exp_name=cfg.run.exp_name, seed=cfg.run.seed, config=cfg,
                   checkpoint=cfg.checkpoint,
                   validation=cfg.validation, plateau=cfg.plateau, tracking=cfg.tracking,
                   max_nonfinite_steps=train.max_nonfinite_steps, on_nonfinite=train.on_nonfinite,
                   rollback_lr_factor=train.rollback_lr_factor, shape_sections=shape_sections)

    # ------------------------------------------------------------------------------ start-up
    def start(self, resume: str | None, deepspeed_models: Sequence[str] = ()) -> Accelerator:
        """Create the Accelerator and the run folder's logging, and decide where to resume from
        (before the recipe builds anything: the saved config decides whether the model settings may
        be used as they are).

        `deepspeed_models` names the models that get their own DeepSpeed engine when launched with a
        DeepSpeed config (one plugin each, see `gsv_accel.deepspeed_support`); the recipe creates the
        extra Accelerators and lists them in `extra_states` so checkpoints cover them."""
        # From here on SIGTERM/SIGINT only set the stop flag: a signal during set-up (data, models,
        # resume) stops the run at its first step boundary with a checkpoint and the usual exit code.
        self.stop.install()
        plugins = {}
        if deepspeed_models and deepspeed_requested():
            plugins["deepspeed_plugins"] = make_plugins(deepspeed_models)
        self.accelerator = acc = Accelerator(
            **plugins,
            log_with=tracker_names(self.tracking_cfg) or None,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir),
                                                logging_dir=str(self.run_dir / "tensorboard")),
        )
        setup_logging(self.run_dir, acc.process_index, acc.is_main_process)
        logger.info("run folder %s; %d process(es) on %s; mixed precision %s", self.run_dir,
                    acc.num_processes, acc.device, acc.mixed_precision)
        plateau_cfg = self.plateau.cfg
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=self.checkpoint_cfg.keep_last,
                                             keep_best=self.checkpoint_cfg.keep_best,
                                             best_metric=plateau_cfg.monitor, best_mode=plateau_cfg.mode)
        if acc.is_main_process:
            self.checkpoints.clean_stale()
        acc.wait_for_everyone()
        self.resume_from = resolve_resume(resume, self.checkpoints)
        if self.resume_from is not None:
            check_resume_config(self.resume_from, to_dict(self.config), shape_sections=self.shape_sections)
        if acc.is_main_process:
            save_config(self.config, self.run_dir / "config.yaml")
        seed_everything(self.seed + acc.process_index)
        return acc

    def restore(self, stateful: Sequence[Any]) -> None:
        """Register the recipe's extra checkpointed objects (schedulers, ...) with ours, load the
        checkpoint when resuming, and start the trackers. Call after `accelerator.prepare`."""
        acc = self.accelerator
        for obj in (*stateful, self.progress, self.plateau):
            acc.register_for_checkpointing(obj)
        if self.resume_from is not None:
            check_same_engine(self.resume_from.path, deepspeed=is_deepspeed(acc))
            self._load_state(self.resume_from.path)
            ensure_rng_restored(self.resume_from, acc.process_index, self.seed, acc.device.type)
            self.sampler.load_state_dict(self.progress.sampler)
            logger.info("resumed from %s: step %d, epoch %d", self.resume_from.path, self.progress.step,
                        self.progress.epoch)
        else:
            self.progress.run_id = new_run_id()
        self.plateau.scale_learning_rates(self.schedulers)
        start_trackers(acc, self.tracking_cfg, self.run_dir, to_dict(self.config), self.progress.run_id)

    def warn_about_intervals(self, epochs: int) -> None:
        ck = self.checkpoint_cfg
        if ck.every_n_epochs and ck.every_n_epochs > epochs and not ck.every_n_steps:
            logger.warning("checkpoint.every_n_epochs=%d is longer than the run (%d epochs): only the "
                           "final checkpoint will be written", ck.every_n_epochs, epochs)

    @property
    def resuming(self) -> bool:
        return self.resume_from is not None

    # ------------------------------------------------------------------------------ the loop
    def record_step(self, skipped: bool) -> None:
        """Count the optimizer step (and consecutive skipped ones)."""
        self.progress.step += 1
        if skipped:
            self.progress.nonfinite_steps += 1
            self.nonfinite_total += 1
        else:
            self.progress.nonfinite_steps = 0

    def end_epoch(self, step_schedulers: bool = True) -> None:
        """The sampler's next epoch and, for per-epoch schedules (S2's ExponentialLR), the LR decay
        with the plateau scale on top. Per-step schedules (S1) pass `step_schedulers=False` and call
        `step_schedulers()` after each optimizer step instead."""
        self.progress.epoch += 1
        self.sampler.set_epoch(self.progress.epoch)
        if step_schedulers:
            self.step_schedulers()

    def step_schedulers(self) -> None:
        """Advance the LR schedules one step, keeping the plateau scale on top."""
        for scheduler in self.schedulers:
            scheduler.step()
        self.plateau.scale_learning_rates(self.schedulers)

    def run(self, loader, train_step: Callable[[list], tuple[dict[str, float], bool]], *, epochs: int,
            grad_accum: int, max_steps: int | None, log_every: int, desc: str,
            postfix: Callable[[dict[str, float]], dict[str, str]], schedule_per_step: bool) -> int:
        """The epoch loop both recipes run; returns the process exit code.

        `train_step(micro_batches)` does one optimizer step over `grad_accum` batches and returns
        (values to log, skipped). Per-step schedules (S1's warmup + cosine) advance after every
        optimizer step, per-epoch ones (S2's ExponentialLR) at the end of each epoch; the plateau
        scale stays on top of both. After each step and epoch `after_step` validates, decides and
        saves; a rollback reloads the last checkpoint and the loop goes on from its position.
        """
        acc, progress, sampler = self.accelerator, self.progress, self.sampler
        total_steps = sampler.steps_per_epoch() // grad_accum * epochs
        if max_steps is not None:
            total_steps = min(total_steps, max_steps)
        bar = tqdm(total=total_steps, initial=progress.step, disable=not acc.is_main_process, desc=desc,
                   dynamic_ncols=True)
        speed = TrainingSpeed(acc.device)
        outcome = "continue"
        while progress.epoch < epochs and outcome == "continue":
            if sampler.epoch != progress.epoch:
                sampler.set_epoch(progress.epoch)
            micro_batches = []
            for batch in loader:
                micro_batches.append(batch)
                if len(micro_batches) < grad_accum:
                    continue
                started = time.perf_counter()
                logs, skipped = train_step(micro_batches)
                speed.add(time.perf_counter() - started)
                micro_batches = []
                sampler.advance(grad_accum)
                self.record_step(skipped)
                if schedule_per_step:
                    self.step_schedulers()
                bar.update(1)
                if progress.step % log_every == 0:
                    logs["train/nonfinite_steps_total"] = float(self.nonfinite_total)
                    logs.update(speed.logs())
                    acc.log(logs, step=progress.step)
                    bar.set_postfix(postfix(logs), refresh=False)
                outcome = self.after_step(epoch_end=False, max_steps=max_steps)
                if outcome != "continue":
                    break
            else:
                # The epoch ran to its end: per-epoch LR decay, then epoch-level validation and saves.
                self.end_epoch(step_schedulers=not schedule_per_step)
                outcome = self.after_step(epoch_end=True)
            if outcome == "rollback":
                outcome = self.rollback()
                bar.n = progress.step
                bar.refresh()
        bar.close()
        logger.info("%s", speed.summary())
        reason = "finished" if outcome == "continue" else outcome
        self.finish(reason)
        return self.exit_code(reason)

    def after_step(self, epoch_end: bool, max_steps: int | None = None) -> str:
        """Validation, plateau decisions, interval saves and stop checks at a step or epoch boundary.

        Returns "continue", or why the run must stop ("early_stop", "signal", "max_steps",
        "nonfinite"), or "rollback" (the recipe then calls `rollback` and goes on).
        """
        progress, ck = self.progress, self.checkpoint_cfg
        count = progress.epoch if epoch_end else progress.step
        every_val = self.validation_cfg.every_n_epochs if epoch_end else self.validation_cfg.every_n_steps
        every_save = ck.every_n_epochs if epoch_end else ck.every_n_steps
        if not epoch_end and progress.nonfinite_steps >= self.max_nonfinite_steps:
            logger.error("%d consecutive steps with non-finite losses (last at step %d)",
                         progress.nonfinite_steps, progress.step)
            return "rollback" if self.on_nonfinite == "rollback" else "nonfinite"
        saved = False
        if interval_due(every_val, count):
            outcome, saved = self._evaluate()
            if outcome != "continue":
                return outcome
        if not saved and interval_due(every_save, count):
            self.save("interval")
        if self.stop.requested(self.accelerator):
            return "signal"
        if max_steps is not None and progress.step >= max_steps:
            return "max_steps"
        return "continue"

    def _evaluate(self) -> tuple[str, bool]:
        """Validate, log, and act on the plateau controller's decision. Returns (outcome, saved)."""
        progress, monitor = self.progress, self.plateau.cfg.monitor
        metric = self.validate()
        decision = self.plateau.update(metric, step=progress.step, epoch=progress.epoch)
        self.accelerator.log({monitor: metric, **self.plateau.log_values()}, step=progress.step)
        logger.info("step %d epoch %d: %s = %.5f (%s)", progress.step, progress.epoch, monitor, metric,
                    decision.reason)
        self.last_metrics, self.last_metrics_step = {monitor: metric}, progress.step
        saved = False
        if decision.is_best:
            progress.best_metric, progress.best_step = metric, progress.step
            if self.checkpoint_cfg.save_on_best:
                self.save("best")
                saved = True
        if decision.action == "reduce_lr":
            self.plateau.scale_learning_rates(self.schedulers)
        if decision.restore_best and decision.action != "stop":
            self.restore_best_weights()
        return ("early_stop" if decision.action == "stop" else "continue"), saved

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, reason: str) -> Path | None:
        """A complete checkpoint of everything needed to continue exactly (call on all processes).

        Not written (None returned, error logged) when the models hold NaN/inf values: such a
        checkpoint would become the resume and rollback point. The validation metric is recorded
        only in a checkpoint of the step it was measured at, so "best" always means those weights.
        Raises CheckpointWriteError (on every process) when the checkpoint cannot be written."""
        acc, progress = self.accelerator, self.progress
        broken = self.nonfinite_weights()
        if broken:
            logger.error("not saving a checkpoint at step %d (%s): non-finite values in %s; the newest "
                         "complete checkpoint stays the one to resume or roll back to", progress.step,
                         reason, ", ".join(broken[:5]) or "another process's models")
            return None
        progress.sampler = self.sampler.state_dict()
        metrics = dict(self.last_metrics) if self.last_metrics_step == progress.step else {}
        path = self.checkpoints.save(
            acc, step=progress.step, epoch=progress.epoch, metrics=metrics,
            config_fingerprint=fingerprint(to_dict(self.config).get("model", {})),
            config=to_dict(self.config),
            extra={"reason": reason, "wandb_run_id": progress.run_id, "device_type": acc.device.type},
            extra_states=self.extra_states)
        logger.info("saved checkpoint %s (%s)", path.name, reason)
        if self.checkpoint_cfg.export_every_save:
            self.export(None, progress.epoch, progress.step, "")
        return path

    def _load_state(self, folder: Path) -> None:
        """`load_state` of the main Accelerator and of each extra one from its subfolder."""
        self.accelerator.load_state(str(folder))
        for sub, other in self.extra_states.items():
            other.load_state(str(Path(folder) / sub))

    def nonfinite_weights(self) -> list[str]:
        """Names of the prepared models' floating-point parameters and buffers holding NaN/inf
        (all processes agree: any process's finding counts on every one)."""
        acc = self.accelerator
        tensors = [(f"{index}.{name}" if index else name, tensor)
                   for index, model in enumerate(
                       [*acc._models, *(m for other in self.extra_states.values() for m in other._models)])
                   for name, tensor in acc.unwrap_model(model).state_dict().items()
                   if tensor.is_floating_point()]
        broken: list[str] = []
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
            broken = [name for name, t in tensors if not bool(torch.isfinite(t).all())]
        if acc.num_processes > 1:
            flag = torch.tensor([1.0 if broken else 0.0], device=acc.device)
            if acc.reduce(flag, reduction="sum").item() > 0 and not broken:
                broken = [""]  # broken on another process only
        return broken

    def rollback(self) -> str:
        """Return to the last complete checkpoint after repeated non-finite steps, with the LR scale
        times `rollback_lr_factor`. Returns "continue", or "nonfinite" when no checkpoint or LR
        reduction is left (the run then stops)."""
        target = self.checkpoints.latest_valid()
        if target is None:
            logger.error("no complete checkpoint to roll back to: stopping")
            return "nonfinite"
        scale_before = self.plateau.lr_scale
        self._load_state(target.path)
        self.sampler.load_state_dict(self.progress.sampler)
        self.progress.nonfinite_steps = 0
        self.last_metrics_step = None
        # load_state restored the checkpoint's LR scale: continue from the lower of the two, so that
        # repeated rollbacks keep lowering it (and end at min_lr_scale) instead of cycling forever.
        self.plateau.lr_scale = min(self.plateau.lr_scale, scale_before)
        scaled = self.plateau.scale_down(self.rollback_lr_factor)
        if scaled is None:
            logger.error("rolled back to %s but the LR scale is already at plateau.min_lr_scale: "
                         "stopping", target.path.name)
            return "nonfinite"
        self.plateau.scale_learning_rates(self.schedulers)
        logger.warning("rolled back to %s (step %d); LR scale %.4g -> %.4g", target.path.name,
                       self.progress.step, *scaled)
        return "continue"

    def restore_best_weights(self) -> None:
        """Load the models' weights of the best checkpoint (all processes)."""
        best = self.checkpoints.best()
        if best is None:
            logger.warning("no best checkpoint to restore: keeping the current weights")
            return
        self.load_weights(best.path)
        monitor = self.plateau.cfg.monitor
        logger.info("restored the best weights (step %d, %s = %.5f)", best.step, monitor,
                    best.metrics[monitor])

    def export(self, checkpoint: Path | None, epoch: int, step: int, tag: str = "") -> Path | None:
        """Export the current weights (`checkpoint` None) or a checkpoint folder's in the GPT-SoVITS
        format, as `<exp_name>[_<tag>]` (main process only). Weights holding NaN/inf are never exported:
        an error is logged and None returned."""
        if not self.accelerator.is_main_process:
            return None
        state_dict = self.export_weights(checkpoint)
        broken = nonfinite_tensors(state_dict)
        if broken:
            logger.error("not exporting step %d: non-finite weights in %s", step, ", ".join(broken[:5]))
            return None
        path = self.write_export(state_dict, self.exp_name + (f"_{tag}" if tag else ""), epoch, step)
        logger.info("exported %s", path)
        return path

    def finish(self, reason: str) -> None:
        """Final checkpoint and exports whatever the intervals; then end the trackers."""
        acc, progress = self.accelerator, self.progress
        if reason == "early_stop" and self.plateau.cfg.restore_best:
            self.restore_best_weights()
        self.save(f"final ({reason})")
        self.export(None, progress.epoch, progress.step, "")
        best = self.checkpoints.best()
        if best is not None:
            self.export(best.path, best.epoch, best.step, "best")
        logger.info("training stopped: %s at step %d, epoch %d", reason, progress.step, progress.epoch)
        self.stop.restore()
        acc.end_training()

    def exit_code(self, reason: str) -> int:
        """The process exit code for how the run ended (see docs/reliability.md): 0 finished or early
        stop, 128 + signal number after SIGTERM/SIGINT, EXIT_CODE_NONFINITE after non-finite losses."""
        if reason == "signal":
            return self.stop.exit_code
        return EXIT_CODE_NONFINITE if reason == "nonfinite" else 0

    def abort_on_write_error(self, err: CheckpointWriteError) -> int:
        """End a run whose checkpoint could not be written (all processes): log, end the trackers,
        return EXIT_CODE_CHECKPOINT_WRITE. Later saves would fail too, so training does not go on."""
        logger.error("%s", err)
        logger.error("training stopped: checkpoint could not be written at step %d; nothing after the "
                     "newest complete checkpoint was kept", self.progress.step)
        self.stop.restore()
        try:
            self.accelerator.end_training()
        except (OSError, RuntimeError) as end_err:  # a tracker flushing to the same full disk
            logger.warning("ending the trackers failed too: %s", end_err)
        return EXIT_CODE_CHECKPOINT_WRITE


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


class TrainingSpeed:
    """Time spent inside the training step (forward, backward, optimizer) and, on CUDA, peak memory.

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

    def peak_memory_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**30

    def logs(self) -> dict[str, float]:
        logs = {"perf/train_steps_per_sec": self.steps_per_second()}
        peak = self.peak_memory_gib()
        if peak is not None:
            logs["perf/peak_memory_gib"] = peak
        return logs

    def summary(self) -> str:
        peak = self.peak_memory_gib()
        memory = f", peak memory {peak:.2f} GiB" if peak is not None else ""
        return (f"speed: {self.steps_per_second():.3f} training steps/s over {self.steps} steps of this "
                f"process (data loading, validation and checkpoints not counted){memory}")


def nonfinite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN/inf (such weights are never exported)."""
    return [key for key, tensor in state_dict.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def run_recipe(name: str, description: str, config_class: type, recipe_class: type, default_config: Path,
               argv: list[str] | None = None) -> int:
    """A recipe's command line, `[--config FILE] [--resume auto|PATH] [section.key=value ...]`: load the
    config, `recipe_class(cfg, resume=...).setup()`, then `.train()`. Returns the exit code: the
    training's, EXIT_CODE_USER_ERROR for bad input found during set-up, EXIT_CODE_CHECKPOINT_WRITE when
    a checkpoint cannot be written (later saves would fail too, so the run stops)."""
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("--config", type=Path, default=default_config, help="YAML config (default: demo)")
    parser.add_argument("--resume", default=None,
                        help="'auto' (latest complete checkpoint of the run, fresh start if none) or a "
                             "checkpoint folder")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(config_class, args.config, args.overrides)
        recipe = recipe_class(cfg, resume=args.resume)
        recipe.setup()
    except USER_ERRORS as err:
        logger.error("%s", err)
        print(f"{name}: error: {err}", file=sys.stderr)
        return EXIT_CODE_USER_ERROR
    try:
        return recipe.train()
    except CheckpointWriteError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return recipe.session.abort_on_write_error(err)
