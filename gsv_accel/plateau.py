"""The plateau controller: watches the validation metric and decides, at each evaluation, whether
training continues, reduces its learning rate, or stops (restoring the best weights).

Few-minute voice data overfits: the validation mel loss falls, flattens, then climbs while the train
loss keeps falling. Both recipes call the controller once per evaluation:

    metric = reduce_metric(accelerator, local_sum, local_count)   # same value on every process
    decision = controller.update(metric, step=step, epoch=epoch)
    tracker.log(controller.log_values(), step=step)
    logger.info(decision.reason)
    if decision.is_best: save the best checkpoint
    if decision.restore_best: load the best weights
    if decision.action == "reduce_lr": controller.scale_learning_rates([scheduler_g, scheduler_d])
    if decision.action == "stop": break

Rules, in the order `update` applies them:
- warmup: the first `warmup` evaluations only check that the metric is finite.
- divergence: a non-finite metric (`check_finite`) or one beyond `divergence_threshold` either stops
  or, with `on_divergence: rollback`, restores the best weights and reduces the LR (a rollback
  counts as a reduction).
- improvement: better than `best` by more than `min_delta` (absolute, or relative to |best|).
- plateau: after `patience` evaluations without improvement (not counted during the `cooldown`
  evaluations that follow a reduction), the LR scale is multiplied by `factor` while fewer than
  `max_reductions` reductions were made and the scale is above `min_lr_scale`; otherwise training
  stops. `max_reductions: 0` stops at the first plateau.
- `stop_patience`, if set, stops after that many evaluations without improvement whatever the
  reductions (it counts cooldown evaluations too).
With `enabled: false` the controller only tracks the best value (`is_best`) and always continues.

Learning rate: the controller owns one multiplicative `lr_scale` (1.0 at the start). The LR of every
param group of every optimizer (generator AND discriminator) is `scheduled * lr_scale`, where
`scheduled` is what the group's epoch scheduler gives without the plateau (base_lr * gamma ** epoch
for ExponentialLR). Ratios between groups (text groups at 0.4x) are therefore kept. The value is
recomputed from the scheduler's base LRs, never from the current group LR, so applying the scale
twice does not compound: call `scale_learning_rates` after every `scheduler.step()`, after a
resume and after a reduction. Do not pass the schedulers to `accelerator.prepare` (it would step
them once per process); log the LR from `optimizer.param_groups`, since `scheduler.get_last_lr()`
does not see the scale.

Distributed runs: decisions depend only on the metric and the controller's state, so every process
takes the same decision at the same step provided it sees the same metric: `reduce_metric` averages
it with one all-reduce, done before `update` and outside any branch, so no process waits on a
collective that another skips. NaN propagates through the sum, so every process sees it alike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import ExponentialLR, LambdaLR

from .config import changed_keys

logger = logging.getLogger(__name__)

# Logged as `plateau/event`: the code is the index in this tuple.
# 0 continue, 1 improved, 2 reduce_lr, 3 rollback (best weights restored + LR reduced), 4 stop.
EVENTS = ("continue", "improved", "reduce_lr", "rollback", "stop")
HISTORY_LENGTH = 100  # (step, metric) pairs kept in the state for train.log and debugging


@dataclass
class PlateauConfig:
    """The recipe config's `plateau:` section."""

    enabled: bool = True
    monitor: str = "val/mel_loss"
    mode: str = "min"  # "min": lower is better; "max": higher is better
    min_delta: float = 0.0  # smallest change that counts as an improvement
    threshold_mode: str = "abs"  # "abs": min_delta as is; "rel": min_delta * |best|
    patience: int = 3  # evaluations without improvement before acting
    factor: float = 0.5  # LR scale multiplier on a reduction
    cooldown: int = 0  # evaluations after a reduction during which bad evaluations are not counted
    # Floor of the LR *scale* (not an absolute LR): a reduction below it is clamped to it, and once the
    # scale sits at the floor the next plateau stops. 0.01 = never below 1% of the scheduled LR.
    min_lr_scale: float = 0.01
    max_reductions: int = 2  # reductions tried before a plateau stops training (0: stop at the first)
    stop_patience: int | None = None  # evaluations without improvement that stop, whatever the reductions
    divergence_threshold: float | None = None  # a metric beyond this (worse side) is a divergence
    check_finite: bool = True  # a NaN/inf metric is a divergence
    on_divergence: str = "stop"  # "stop", or "rollback": restore the best weights, reduce LR, go on
    warmup: int = 0  # first evaluations not counted (only checked for finiteness)
    restore_best: bool = True  # at a stop, ask the recipe to load the best weights

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"plateau.{key} {rule}, got {getattr(self, key)!r}")

        check(bool(self.monitor), "monitor", "must name a logged metric")
        check(self.mode in ("min", "max"), "mode", "must be 'min' or 'max'")
        check(self.threshold_mode in ("abs", "rel"), "threshold_mode", "must be 'abs' or 'rel'")
        check(math.isfinite(self.min_delta) and self.min_delta >= 0, "min_delta", "must be >= 0")
        check(self.patience >= 1, "patience", "must be >= 1")
        check(0 < self.factor < 1, "factor", "must be between 0 and 1 (exclusive)")
        check(self.cooldown >= 0, "cooldown", "must be >= 0")
        check(0 <= self.min_lr_scale <= 1, "min_lr_scale", "must be between 0 and 1")
        check(self.max_reductions >= 0, "max_reductions", "must be >= 0")
        check(self.stop_patience is None or self.stop_patience >= 1, "stop_patience", "must be >= 1 or null")
        check(self.divergence_threshold is None or math.isfinite(self.divergence_threshold),
              "divergence_threshold", "must be a finite number or null")
        check(self.on_divergence in ("stop", "rollback"), "on_divergence", "must be 'stop' or 'rollback'")
        check(self.warmup >= 0, "warmup", "must be >= 0")


@dataclass(frozen=True)
class Decision:
    """What the recipe must do after one evaluation."""

    action: str  # "continue", "improved", "reduce_lr" or "stop"
    reason: str  # one sentence for train.log
    is_best: bool = False  # new best value: save the best checkpoint now
    restore_best: bool = False  # load the best weights now (stop with restore_best, or rollback)
    event: str = "continue"  # one of EVENTS (adds "rollback", a reduce_lr that also restores)


def reduce_metric(accelerator, local_sum: float, local_count: float) -> float:
    """Mean of the metric over all processes: one sum/count all-reduce, identical on every process.

    Call it on ALL processes at every evaluation, before `update` (never inside a branch).
    """
    totals = [float(local_sum), float(local_count)]
    if accelerator.num_processes > 1:
        tensor = torch.tensor(totals, dtype=torch.float64, device=accelerator.device)
        totals = accelerator.reduce(tensor, reduction="sum").tolist()
    total, count = totals
    if count <= 0:
        raise ValueError("validation produced no items on any process: cannot compute the metric")
    return total / count


def scheduled_lrs(scheduler) -> list[float]:
    """The LR of each group without the plateau scale, computed from the scheduler's base LRs and
    epoch (never from the group's current LR, which already carries the scale)."""
    scheduler = getattr(scheduler, "scheduler", scheduler)  # unwrap an Accelerate AcceleratedScheduler
    if isinstance(scheduler, ExponentialLR):
        return [base * scheduler.gamma ** scheduler.last_epoch for base in scheduler.base_lrs]
    if isinstance(scheduler, LambdaLR):
        pairs = zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
        return [base * fn(scheduler.last_epoch) for base, fn in pairs]
    closed_form = getattr(scheduler, "_get_closed_form_lr", None)  # StepLR, CosineAnnealingLR, ...
    if closed_form is None:
        raise TypeError(f"{type(scheduler).__name__} has no closed form: use ExponentialLR or LambdaLR, "
                        "or call apply_lr_scale with the scheduled LRs")
    return list(closed_form())


def apply_lr_scale(optimizer, scheduled: list[float], scale: float) -> None:
    """Set each param group's LR to its scheduled LR times `scale`."""
    if len(scheduled) != len(optimizer.param_groups):
        raise ValueError(f"{len(scheduled)} scheduled LRs for {len(optimizer.param_groups)} param groups")
    for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
        group["lr"] = lr * scale


class PlateauController:
    """Decides continue / reduce LR / stop from the validation metric; see the module docstring."""

    def __init__(self, cfg: PlateauConfig) -> None:
        self.cfg = cfg
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_epoch: int | None = None
        self.bad_evals = 0  # evaluations without improvement since the best or the last reduction
        self.evals_since_best = 0  # same, but never reset by a reduction (for stop_patience)
        self.cooldown_left = 0
        self.reductions = 0
        self.lr_scale = 1.0
        self.evals_seen = 0
        self.stopped = False
        self.stop_reason = ""
        self.history: list[list[float]] = []
        self._last_event = "continue"

    # ---- decisions ----------------------------------------------------------------------------
    def update(self, metric: float, step: int, epoch: int) -> Decision:
        """Record one evaluation (the metric already reduced across processes) and decide."""
        cfg, name, metric = self.cfg, self.cfg.monitor, float(metric)
        if self.stopped:  # a resumed run that had stopped: stop again, nothing to restore
            return self._decide(Decision("stop", self.stop_reason, event="stop"))
        self.evals_seen += 1
        self.history = (self.history + [[step, metric]])[-HISTORY_LENGTH:]
        finite = math.isfinite(metric)
        improved = finite and self._is_improvement(metric)

        if not cfg.enabled:
            if improved:
                return self._improved(metric, step, epoch)
            return self._decide(Decision("continue", f"{name} {metric:.4g} (plateau control disabled)"))
        if cfg.check_finite and not finite:
            return self._diverged(f"{name} is {metric} (not finite)", step)
        if self.evals_seen <= cfg.warmup:
            return self._decide(Decision("continue", f"{name} {metric:.4g}: warmup evaluation "
                                         f"{self.evals_seen}/{cfg.warmup}, not counted"))
        if self._beyond_threshold(metric):
            return self._diverged(f"{name} {metric:.4g} is beyond divergence_threshold "
                                  f"{cfg.divergence_threshold:g}", step)
        if improved:
            self.cooldown_left = max(0, self.cooldown_left - 1)
            return self._improved(metric, step, epoch)

        self.evals_since_best += 1
        if cfg.stop_patience is not None and self.evals_since_best >= cfg.stop_patience:
            return self._stop(f"{name} has not improved for {self.evals_since_best} evaluations "
                              f"(stop_patience {cfg.stop_patience}, {self._best_text()}); stopping")
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            return self._decide(Decision("continue", f"{name} {metric:.4g}, {self._best_text()}: cooldown "
                                                     f"after an LR reduction, {self.cooldown_left} left"))
        self.bad_evals += 1
        if self.bad_evals < cfg.patience:
            return self._decide(Decision("continue", f"{name} {metric:.4g} did not improve on "
                                         f"{self._best_text()}: {self.bad_evals}/{cfg.patience} "
                                         "evaluations without improvement"))
        plateau = f"{name} has not improved for {self.bad_evals} evaluations ({self._best_text()})"
        new_scale = self._reduced_scale()
        if new_scale is None:
            return self._stop(f"{plateau}; stopping after {self._reductions_text()}")
        old = self._reduce(new_scale)
        reason = (f"{plateau}; LR scale {old:.4g} -> {new_scale:.4g} "
                  f"(reduction {self.reductions}/{cfg.max_reductions})")
        return self._decide(Decision("reduce_lr", reason, event="reduce_lr"))

    def _is_improvement(self, metric: float) -> bool:
        if self.best is None:
            return True
        delta = self.cfg.min_delta * (abs(self.best) if self.cfg.threshold_mode == "rel" else 1.0)
        if self.cfg.mode == "min":
            return metric < self.best - delta
        return metric > self.best + delta

    def _beyond_threshold(self, metric: float) -> bool:
        limit = self.cfg.divergence_threshold
        if limit is None:
            return False
        return metric > limit if self.cfg.mode == "min" else metric < limit

    def _reduced_scale(self) -> float | None:
        """The next LR scale, or None when no reduction is left (count or floor reached)."""
        if self.reductions >= self.cfg.max_reductions:
            return None
        new_scale = max(self.lr_scale * self.cfg.factor, self.cfg.min_lr_scale)
        return new_scale if new_scale < self.lr_scale else None

    def _reduce(self, new_scale: float) -> float:
        old, self.lr_scale = self.lr_scale, new_scale
        self.reductions += 1
        self.bad_evals = 0
        self.cooldown_left = self.cfg.cooldown
        return old

    def _improved(self, metric: float, step: int, epoch: int) -> Decision:
        previous = "" if self.best is None else f" (previous best {self.best:.4g} at step {self.best_step})"
        self.best, self.best_step, self.best_epoch = metric, step, epoch
        self.bad_evals = self.evals_since_best = 0
        return self._decide(Decision("improved", f"{self.cfg.monitor} improved to {metric:.4g}{previous}",
                                     is_best=True, event="improved"))

    def _diverged(self, what: str, step: int) -> Decision:
        what = f"{what} at step {step}"
        if self.cfg.on_divergence == "rollback" and self.best is not None:
            new_scale = self._reduced_scale()
            if new_scale is not None:
                old = self._reduce(new_scale)
                return self._decide(Decision(
                    "reduce_lr", f"{what}: rolling back to the best weights ({self._best_text()}), "
                    f"LR scale {old:.4g} -> {new_scale:.4g}", restore_best=True, event="rollback"))
            what += f", no LR reduction left after {self._reductions_text()}"
        return self._stop(f"{what}; stopping ({self._best_text()})")

    def _stop(self, reason: str) -> Decision:
        self.stopped, self.stop_reason = True, reason
        restore = self.cfg.restore_best and self.best is not None
        if restore:
            reason += "; restoring the best weights"
        return self._decide(Decision("stop", reason, restore_best=restore, event="stop"))

    def _decide(self, decision: Decision) -> Decision:
        self._last_event = decision.event
        return decision

    def _best_text(self) -> str:
        if self.best is None:
            return "no best yet"
        return f"best {self.best:.4g} at step {self.best_step}"

    def _reductions_text(self) -> str:
        text = f"{self.reductions} LR reduction{'' if self.reductions == 1 else 's'}"
        if self.reductions < self.cfg.max_reductions:  # stopped by the floor, not the count
            text += f" (LR scale {self.lr_scale:.4g} is at min_lr_scale {self.cfg.min_lr_scale:g})"
        return text

    # ---- learning rates -----------------------------------------------------------------------
    def scale_down(self, factor: float) -> tuple[float, float] | None:
        """An LR reduction asked for outside the metric (a rollback after non-finite losses):
        multiply the scale by `factor`, floored at `min_lr_scale`. Returns (old, new), or None when
        the scale is already at the floor. It does not count toward `max_reductions`."""
        new_scale = max(self.lr_scale * factor, self.cfg.min_lr_scale)
        if new_scale >= self.lr_scale:
            return None
        old, self.lr_scale = self.lr_scale, new_scale
        return old, new_scale

    def scale_learning_rates(self, schedulers) -> None:
        """Set every group's LR of each scheduler's optimizer to scheduled LR * lr_scale.

        Idempotent: call after every `scheduler.step()`, after a resume and after a reduction.
        """
        for scheduler in schedulers:
            apply_lr_scale(getattr(scheduler, "scheduler", scheduler).optimizer, scheduled_lrs(scheduler),
                           self.lr_scale)

    # ---- logging ------------------------------------------------------------------------------
    def log_values(self) -> dict[str, float]:
        """Values to log under `plateau/*` after each evaluation (event: code in EVENTS)."""
        values = {"plateau/lr_scale": self.lr_scale, "plateau/bad_evals": float(self.bad_evals),
                  "plateau/reductions": float(self.reductions),
                  "plateau/event": float(EVENTS.index(self._last_event))}
        if self.best is not None:
            values["plateau/best"] = self.best
        return values

    # ---- checkpointing ------------------------------------------------------------------------
    _STATE_KEYS = ("best", "best_step", "best_epoch", "bad_evals", "evals_since_best", "cooldown_left",
                   "reductions", "lr_scale", "evals_seen", "stopped", "stop_reason")

    def state_dict(self) -> dict[str, Any]:
        """Plain ints/floats/strings/None/lists only (safe for torch's weights-only loader)."""
        state = {key: getattr(self, key) for key in self._STATE_KEYS}
        state["history"] = [list(item) for item in self.history]
        state["config"] = dataclasses.asdict(self.cfg)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved counters. The current config wins over the saved settings; each
        changed setting is logged. A changed `monitor` or `mode` makes the saved best meaningless,
        so best tracking restarts (the LR scale and reduction count are kept)."""
        for key in self._STATE_KEYS:
            if key in state:
                setattr(self, key, state[key])
        self.history = [list(item) for item in state.get("history", [])][-HISTORY_LENGTH:]
        saved = state.get("config", {})
        current = dataclasses.asdict(self.cfg)
        changed = changed_keys(saved, current) if saved else []
        for key in changed:
            logger.warning("plateau.%s changed since the checkpoint: %r -> %r (the new value applies)",
                           key, saved.get(key), current.get(key))
        if "monitor" in changed or "mode" in changed:
            logger.warning("plateau.monitor/mode changed: best-value tracking restarts")
            self.best = self.best_step = self.best_epoch = None
            self.bad_evals = self.evals_since_best = 0
        self.cooldown_left = min(self.cooldown_left, self.cfg.cooldown)
