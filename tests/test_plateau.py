"""Plateau controller: decisions on scripted metric sequences, state round trips, LR scaling."""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch.optim.lr_scheduler import ExponentialLR, LambdaLR

from gsv_accel.config import ConfigError, load_config
from gsv_accel.plateau import (
    EVENTS,
    PlateauConfig,
    PlateauController,
    apply_lr_scale,
    reduce_metric,
    scheduled_lrs,
)

# Some tests step schedulers without a training step, which torch warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")

NAN, INF = float("nan"), float("inf")
# The example: val mel loss at epochs 1, 3, ..., 13 (step = 100 * epoch), best at epoch 7.
OVERFIT = [0.72, 0.58, 0.46, 0.41, 0.45, 0.52, 0.61]


def run(cfg: PlateauConfig, metrics, controller: PlateauController | None = None, first_epoch: int = 1):
    """Feed metrics at epochs first_epoch, first_epoch + 2, ... until a stop.

    Returns (controller, decisions)."""
    controller = controller or PlateauController(cfg)
    decisions = []
    for i, metric in enumerate(metrics):
        epoch = first_epoch + 2 * i
        decisions.append(controller.update(metric, step=100 * epoch, epoch=epoch))
        if decisions[-1].action == "stop":
            break
    return controller, decisions


def actions(decisions) -> list[str]:
    return [d.action for d in decisions]


# ---- the scenarios -------------------------------------------------------------------------
def test_overfitting_run_stops_after_patience_and_restores_best():
    controller, decisions = run(PlateauConfig(patience=2, max_reductions=0), OVERFIT)
    assert actions(decisions) == ["improved"] * 4 + ["continue", "stop"]  # stop at epoch 11
    assert (controller.best, controller.best_epoch, controller.best_step) == (0.41, 7, 700)
    assert [d.is_best for d in decisions] == [True] * 4 + [False, False]
    stop = decisions[-1]
    assert stop.restore_best and controller.stopped
    assert stop.reason.startswith("val/mel_loss has not improved for 2 evaluations (best 0.41 at step 700)")
    assert "stopping after 0 LR reductions" in stop.reason
    # Once stopped (e.g. a resumed finished run), every evaluation says stop again, restoring nothing.
    again = controller.update(0.3, step=1500, epoch=15)
    assert again.action == "stop" and not again.restore_best and not again.is_best


def test_one_reduction_before_the_stop():
    controller, decisions = run(PlateauConfig(patience=2, max_reductions=1), OVERFIT + [0.7])
    assert actions(decisions) == ["improved"] * 4 + ["continue", "reduce_lr", "continue", "stop"]
    assert decisions[5].reason.endswith("LR scale 1 -> 0.5 (reduction 1/1)")
    assert not decisions[5].restore_best
    assert controller.lr_scale == 0.5 and controller.reductions == 1
    assert "stopping after 1 LR reduction;" in decisions[-1].reason and decisions[-1].restore_best


def test_restore_best_false_only_stops():
    _, decisions = run(PlateauConfig(patience=2, max_reductions=0, restore_best=False), OVERFIT)
    assert decisions[-1].action == "stop" and not decisions[-1].restore_best


def test_cooldown_evaluations_are_not_counted():
    cfg = PlateauConfig(patience=1, cooldown=2, max_reductions=2)
    controller, decisions = run(cfg, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7])
    # reduce; 2 cooldown evaluations; reduce; 2 cooldown evaluations; stop (no reduction left)
    assert actions(decisions) == ["improved", "reduce_lr", "continue", "continue", "reduce_lr",
                                  "continue", "continue", "stop"]
    assert "cooldown" in decisions[2].reason and "cooldown" in decisions[3].reason
    assert controller.lr_scale == 0.25


def test_bad_evals_counter_during_cooldown_stays_zero():
    controller = PlateauController(PlateauConfig(patience=2, cooldown=1))
    for metric, bad in [(1.0, 0), (1.1, 1), (1.2, 0), (1.3, 0), (1.4, 1)]:  # reduce at 1.2, cooldown 1.3
        controller.update(metric, step=0, epoch=0)
        assert controller.bad_evals == bad


def test_min_lr_scale_clamps_then_stops():
    cfg = PlateauConfig(patience=1, factor=0.5, min_lr_scale=0.3, max_reductions=10)
    controller, decisions = run(cfg, [1.0, 1.1, 1.2, 1.3, 1.4])
    assert actions(decisions) == ["improved", "reduce_lr", "reduce_lr", "stop"]
    assert controller.lr_scale == 0.3  # 0.25 clamped to the floor
    assert "LR scale 0.5 -> 0.3" in decisions[2].reason
    assert "LR scale 0.3 is at min_lr_scale 0.3" in decisions[-1].reason


@pytest.mark.parametrize("threshold_mode, min_delta, counts", [
    ("rel", 0.005, True),   # 1% better than 0.5 beats a 0.5% relative threshold
    ("rel", 0.02, False),   # ... but not a 2% one
    ("abs", 0.02, False),   # 0.005 better is less than 0.02 absolute
    ("abs", 0.001, True),
    ("abs", 0.0, True),
])
def test_relative_and_absolute_thresholds(threshold_mode, min_delta, counts):
    controller = PlateauController(PlateauConfig(min_delta=min_delta, threshold_mode=threshold_mode))
    controller.update(0.5, step=100, epoch=1)
    decision = controller.update(0.495, step=200, epoch=2)
    assert decision.is_best is counts
    assert controller.best == (0.495 if counts else 0.5)


def test_mode_max():
    cfg = PlateauConfig(monitor="val/top3_acc", mode="max", patience=2, max_reductions=0,
                        min_delta=0.01, threshold_mode="rel")
    controller, decisions = run(cfg, [0.30, 0.50, 0.62, 0.625, 0.61, 0.9])
    # 0.625 is < 1% better than 0.62: not an improvement; 0.61 is the second bad evaluation.
    assert actions(decisions) == ["improved"] * 3 + ["continue", "stop"]
    assert controller.best == 0.62 and decisions[-1].reason.startswith("val/top3_acc has not improved")


# ---- divergence --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_value", [NAN, INF, -INF])
def test_non_finite_metric_stops_and_restores(bad_value):
    controller, decisions = run(PlateauConfig(), [0.5, 0.4, bad_value])
    assert decisions[-1].action == "stop" and decisions[-1].restore_best
    assert "not finite" in decisions[-1].reason and controller.best == 0.4


def test_non_finite_rollback_restores_reduces_and_continues():
    cfg = PlateauConfig(on_divergence="rollback", max_reductions=1, cooldown=1)
    controller, decisions = run(cfg, [0.5, 0.4, NAN, 0.45, 0.38, INF])
    rollback = decisions[2]
    assert (rollback.action, rollback.event, rollback.restore_best) == ("reduce_lr", "rollback", True)
    assert "rolling back to the best weights (best 0.4 at step 300)" in rollback.reason
    assert controller.log_values()["plateau/event"] >= 0
    assert actions(decisions[3:]) == ["continue", "improved", "stop"]  # 0.45 in cooldown
    assert "no LR reduction left after 1 LR reduction" in decisions[-1].reason
    assert decisions[-1].restore_best and controller.best == 0.38


def test_rollback_without_a_best_stops():
    _, decisions = run(PlateauConfig(on_divergence="rollback"), [NAN])
    assert decisions[0].action == "stop" and not decisions[0].restore_best


def test_check_finite_off_counts_nan_as_bad():
    controller, decisions = run(PlateauConfig(check_finite=False, patience=2), [0.5, NAN])
    assert decisions[-1].action == "continue" and controller.bad_evals == 1 and controller.best == 0.5


def test_divergence_threshold():
    _, decisions = run(PlateauConfig(divergence_threshold=1.0), [0.9, 0.8, 1.5])
    assert decisions[-1].action == "stop" and "beyond divergence_threshold 1" in decisions[-1].reason
    _, decisions = run(PlateauConfig(mode="max", divergence_threshold=0.1), [0.3, 0.05])
    assert decisions[-1].action == "stop"


def test_warmup_evaluations_are_ignored_but_nan_still_stops():
    cfg = PlateauConfig(warmup=2, patience=1, max_reductions=0, divergence_threshold=1.0)
    controller, decisions = run(cfg, [5.0, 0.1, 0.9, 0.95])  # 5.0 is beyond the threshold: ignored
    assert actions(decisions) == ["continue", "continue", "improved", "stop"]
    assert "warmup evaluation 1/2" in decisions[0].reason and controller.best == 0.9
    _, decisions = run(cfg, [NAN])
    assert decisions[0].action == "stop"


def test_stop_patience_is_independent_of_reductions():
    cfg = PlateauConfig(patience=1, max_reductions=10, min_lr_scale=0.0, stop_patience=3)
    controller, decisions = run(cfg, [1.0, 1.1, 1.2, 1.3, 1.4])
    assert actions(decisions) == ["improved", "reduce_lr", "reduce_lr", "stop"]
    assert "stop_patience 3" in decisions[-1].reason and controller.reductions == 2


def test_disabled_controller_tracks_best_and_never_acts():
    controller, decisions = run(PlateauConfig(enabled=False, patience=1), [0.5, 0.6, NAN, 0.7, 0.4])
    assert actions(decisions) == ["improved", "continue", "continue", "continue", "improved"]
    assert controller.lr_scale == 1.0 and controller.best == 0.4


def test_log_values():
    controller = PlateauController(PlateauConfig(patience=1))
    assert "plateau/best" not in controller.log_values()
    controller.update(0.5, step=100, epoch=1)
    controller.update(0.6, step=200, epoch=2)
    assert controller.log_values() == {"plateau/lr_scale": 0.5, "plateau/bad_evals": 0.0,
                                       "plateau/reductions": 1.0, "plateau/best": 0.5,
                                       "plateau/event": float(EVENTS.index("reduce_lr"))}
    assert EVENTS == ("continue", "improved", "reduce_lr", "rollback", "stop")


# ---- state -------------------------------------------------------------------------------------------
def roundtrip(state: dict) -> dict:
    """Through torch.save and the weights-only loader, as Accelerate's custom checkpoints go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


LONG_RUN = OVERFIT + [0.40, 0.43, NAN, 0.39, 0.42, 0.44, 0.45, 0.46, 0.47, 0.48]


@pytest.mark.parametrize("cut", range(1, 13))  # the uninterrupted run stops at evaluation 13
def test_resume_mid_plateau_stops_at_the_same_evaluation(cut):
    cfg = PlateauConfig(patience=2, cooldown=1, max_reductions=2, on_divergence="rollback")
    _, expected = run(cfg, LONG_RUN)
    assert actions(expected)[-1] == "stop" and len(expected) > cut

    first, before = run(cfg, LONG_RUN[:cut])
    resumed = PlateauController(PlateauConfig(**vars(cfg)))  # a fresh process, same config
    resumed.load_state_dict(roundtrip(first.state_dict()))
    _, after = run(cfg, LONG_RUN[cut:], controller=resumed, first_epoch=1 + 2 * cut)
    assert before + after == expected
    # repr: NaN in the history compares unequal to itself.
    assert repr(resumed.state_dict()) == repr(run(cfg, LONG_RUN)[0].state_dict())


def test_state_dict_holds_plain_values_and_bounded_history():
    controller, _ = run(PlateauConfig(enabled=False), [1.0 - i * 1e-3 for i in range(250)])
    state = controller.state_dict()
    assert len(state["history"]) == 100 and state["history"][-1] == [100 * 499, pytest.approx(0.751)]
    assert state["evals_seen"] == 250 and state["config"]["monitor"] == "val/mel_loss"

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, float, str))

    assert plain(state) and roundtrip(state) == state


def test_changed_settings_on_load_take_effect_and_are_logged(caplog):
    old, _ = run(PlateauConfig(patience=3), [0.5, 0.6, 0.7])  # 2 bad evaluations of 3
    new = PlateauController(PlateauConfig(patience=2, max_reductions=0))
    with caplog.at_level(logging.WARNING, logger="gsv_accel.plateau"):
        new.load_state_dict(old.state_dict())
    assert "plateau.patience changed since the checkpoint: 3 -> 2" in caplog.text
    assert "plateau.max_reductions changed since the checkpoint: 2 -> 0" in caplog.text
    assert new.cfg.patience == 2 and new.bad_evals == 2 and new.best == 0.5
    assert new.update(0.8, step=700, epoch=7).action == "stop"  # the new patience and max apply


def test_changed_monitor_on_load_restarts_best_tracking(caplog):
    old, _ = run(PlateauConfig(patience=1), [0.5, 0.6])  # one reduction
    new = PlateauController(PlateauConfig(monitor="val/kl_loss"))
    with caplog.at_level(logging.WARNING, logger="gsv_accel.plateau"):
        new.load_state_dict(old.state_dict())
    assert "best-value tracking restarts" in caplog.text
    assert new.best is None and new.bad_evals == 0 and new.lr_scale == 0.5 and new.reductions == 1


def test_same_settings_on_load_log_nothing(caplog):
    old, _ = run(PlateauConfig(), [0.5, 0.6])
    with caplog.at_level(logging.WARNING, logger="gsv_accel.plateau"):
        PlateauController(PlateauConfig()).load_state_dict(old.state_dict())
    assert caplog.text == ""


# ---- config ------------------------------------------------------------------------------------------
@dataclass
class Recipe:
    plateau: PlateauConfig = field(default_factory=PlateauConfig)


def test_config_section_loads_with_overrides():
    cfg = load_config(Recipe, None, ["plateau.stop_patience=6", "plateau.divergence_threshold=2.5",
                                     "plateau.on_divergence=rollback"])
    assert isinstance(cfg.plateau, PlateauConfig)
    assert (cfg.plateau.stop_patience, cfg.plateau.divergence_threshold) == (6, 2.5)


@pytest.mark.parametrize("override, key", [
    ("mode=lowest", "mode"), ("threshold_mode=pct", "threshold_mode"), ("min_delta=-0.1", "min_delta"),
    ("patience=0", "patience"), ("factor=1.0", "factor"), ("factor=0", "factor"),
    ("cooldown=-1", "cooldown"), ("min_lr_scale=2", "min_lr_scale"), ("max_reductions=-1", "max_reductions"),
    ("stop_patience=0", "stop_patience"), ("divergence_threshold=inf", "divergence_threshold"),
    ("on_divergence=retry", "on_divergence"), ("warmup=-2", "warmup"), ("monitor=''", "monitor"),
])
def test_impossible_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"plateau\.{key} must"):
        load_config(Recipe, None, [f"plateau.{override}"])


# ---- metric reduction (single process; the 2-process case is in test_plateau_distributed.py) -------
class OneProcess:
    num_processes = 1
    device = torch.device("cpu")


def test_reduce_metric_single_process():
    assert reduce_metric(OneProcess(), 3.0, 4) == 0.75
    assert math.isnan(reduce_metric(OneProcess(), NAN, 4))
    with pytest.raises(ValueError, match="no items"):
        reduce_metric(OneProcess(), 0.0, 0)


# ---- learning rates with real optimizers and schedulers ----------------------------------------------
GAMMA = 0.999875
BASE_LR = 1e-4
RATIOS = [1.0, 0.4, 0.4, 0.4]  # generator groups: the text groups train at 0.4x


def make_optimizers():
    torch.manual_seed(0)
    g_params = [torch.nn.Parameter(torch.randn(3)) for _ in RATIOS]
    groups = [{"params": [p], "lr": BASE_LR * r} for p, r in zip(g_params, RATIOS, strict=True)]
    optim_g = torch.optim.AdamW(groups, betas=(0.8, 0.99))
    optim_d = torch.optim.AdamW([torch.nn.Parameter(torch.randn(3))], lr=BASE_LR, betas=(0.8, 0.99))
    return optim_g, optim_d, ExponentialLR(optim_g, gamma=GAMMA), ExponentialLR(optim_d, gamma=GAMMA)


def group_lrs(optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


def test_learning_rates_are_scheduled_times_scale_for_every_group():
    optim_g, optim_d, sched_g, sched_d = make_optimizers()
    # Reference: the same schedule without the plateau (torch's own chained ExponentialLR).
    ref_g, ref_d, ref_sched_g, ref_sched_d = make_optimizers()
    controller = PlateauController(PlateauConfig(patience=1, max_reductions=3))
    metrics = [0.5, 0.4, 0.45, 0.39, 0.41, 0.42, 0.43, 0.44]
    for epoch, metric in enumerate(metrics, start=1):
        for optimizer in (optim_g, optim_d, ref_g, ref_d):  # a training step leaves the LR alone
            for group in optimizer.param_groups:
                group["params"][0].grad = torch.ones(3)
            optimizer.step()
        for scheduler in (sched_g, sched_d, ref_sched_g, ref_sched_d):
            scheduler.step()
        controller.scale_learning_rates([sched_g, sched_d])  # after the epoch's scheduler step
        decision = controller.update(metric, step=100 * epoch, epoch=epoch)
        if decision.action == "reduce_lr":
            controller.scale_learning_rates([sched_g, sched_d])
        scale = controller.lr_scale
        for optimizer, ref_sched in ((optim_g, ref_sched_g), (optim_d, ref_sched_d)):
            ratios = RATIOS if optimizer is optim_g else [1.0]
            expected = [BASE_LR * r * GAMMA**epoch * scale for r in ratios]
            assert group_lrs(optimizer) == expected  # exactly: the closed form, scaled once
            assert group_lrs(optimizer) == pytest.approx([lr * scale for lr in ref_sched.get_last_lr()],
                                                         rel=1e-12)
            assert [lr / group_lrs(optimizer)[0] for lr in group_lrs(optimizer)] == pytest.approx(ratios)
        # Applying again (e.g. after a resume) does not compound.
        before = group_lrs(optim_g) + group_lrs(optim_d)
        controller.scale_learning_rates([sched_g, sched_d])
        controller.scale_learning_rates([sched_g, sched_d])
        assert group_lrs(optim_g) + group_lrs(optim_d) == before
        if decision.action == "stop":
            break
    assert controller.reductions == 3 and controller.lr_scale == 0.125 and decision.action == "stop"


def test_scale_survives_resume_of_optimizer_scheduler_and_controller():
    optim_g, optim_d, sched_g, sched_d = make_optimizers()
    controller = PlateauController(PlateauConfig(patience=1))
    controller.update(0.5, step=100, epoch=1)
    controller.update(0.6, step=200, epoch=2)  # reduce to 0.5
    for _ in range(5):
        sched_g.step()
        sched_d.step()
        controller.scale_learning_rates([sched_g, sched_d])
    saved = [roundtrip(x.state_dict()) for x in (optim_g, optim_d, sched_g, sched_d, controller)]

    new_g, new_d, new_sched_g, new_sched_d = make_optimizers()
    new_controller = PlateauController(PlateauConfig(patience=1))
    for obj, state in zip((new_g, new_d, new_sched_g, new_sched_d, new_controller), saved, strict=True):
        obj.load_state_dict(state)
    new_controller.scale_learning_rates([new_sched_g, new_sched_d])
    assert group_lrs(new_g) == group_lrs(optim_g) and group_lrs(new_d) == group_lrs(optim_d)
    new_sched_g.step()
    new_controller.scale_learning_rates([new_sched_g])
    assert group_lrs(new_g) == [BASE_LR * r * GAMMA**6 * 0.5 for r in RATIOS]


def test_lambda_scheduler_and_unsupported_scheduler():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=0.002)
    scheduler = LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))  # S1-style warmup
    for _ in range(3):
        scheduler.step()
    assert scheduled_lrs(scheduler) == [0.002 * 0.4]
    apply_lr_scale(optimizer, scheduled_lrs(scheduler), 0.5)
    assert group_lrs(optimizer) == [0.002 * 0.4 * 0.5]
    with pytest.raises(ValueError, match="2 scheduled LRs for 1 param groups"):
        apply_lr_scale(optimizer, [1.0, 2.0], 0.5)

    class Custom(torch.optim.lr_scheduler.LRScheduler):
        def get_lr(self):
            return [group["lr"] for group in self.optimizer.param_groups]

    with pytest.raises(TypeError, match="Custom has no closed form"):
        scheduled_lrs(Custom(optimizer))
