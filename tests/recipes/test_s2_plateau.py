"""The plateau controller inside the S2 recipe: an overfitting config stops early and exports the
best model; a run killed in the middle of a plateau stops at the same evaluation after resuming."""

from __future__ import annotations

import re
import signal

import torch
from safetensors.torch import load_file

from gsv_accel.checkpoint import verify_checkpoint
from gsv_accel.formats import load_gsv_file

# Validate after every step; no LR reduction before stopping. Many epochs: only the controller can end
# the run early.
EARLY_STOP = ("train.epochs=30", "validation.every_n_steps=1", "validation.every_n_epochs=null",
              "checkpoint.every_n_epochs=null", "plateau.max_reductions=0")


def _evaluations(log: str) -> list[tuple[int, float, str]]:
    return [(int(step), float(value), reason) for step, value, reason in
            re.findall(r"step (\d+) epoch \d+: val/mel_loss = ([0-9.]+)[^(]* \((.*)\)", log)]


def test_overfitting_config_stops_early_and_exports_the_lowest_val_model(s2_run):
    run = s2_run("overfit", *EARLY_STOP, "plateau.patience=1")
    run.run()
    evaluations = _evaluations(run.log)
    last_step = evaluations[-1][0]
    assert last_step < 30 * 11, "the controller should have stopped the run early"
    assert "stopping" in evaluations[-1][2]
    assert "training stopped: early_stop" in run.log
    best_step, best_value, _ = min(evaluations, key=lambda e: e[1])
    # The best export is the checkpoint with the lowest validation loss in train.log.
    [best_export] = (run.exports).glob("demo_best_e*_s*.pth")
    assert best_export.name.endswith(f"_s{best_step}.pth")
    best_checkpoint = run.run_dir / "checkpoints" / f"step_{best_step:08d}"
    assert abs(verify_checkpoint(best_checkpoint).metrics["val/mel_loss"] - best_value) < 5e-6
    exported = load_gsv_file(best_export).state_dict
    saved = load_file(str(best_checkpoint / "model.safetensors"))
    for key, tensor in exported.items():
        assert torch.equal(tensor, saved[key].half()), key
    # restore_best: the final checkpoint holds the best weights, not the last trained ones.
    final = run.final_weights()["generator"]
    assert all(torch.equal(final[k], saved[k]) for k in saved)


def test_kill_in_the_middle_of_a_plateau_stops_at_the_same_evaluation(s2_run):
    settings = (*EARLY_STOP, "plateau.patience=3", "checkpoint.every_n_steps=1", "checkpoint.keep_last=40")
    reference = s2_run("plateau_reference", *settings)
    reference.run()
    evaluations = _evaluations(reference.log)
    mid_plateau = [step for step, _, reason in evaluations if "1/3 evaluations without improvement" in reason]
    assert mid_plateau, "no plateau in the reference run"
    kill_at = mid_plateau[-1]

    run = s2_run("plateau_killed", *settings)
    process = run.start()
    run.wait_for_log(f"saved checkpoint step_{kill_at:08d}", process)
    assert run.kill(process) == -signal.SIGKILL
    run.run("--resume", "auto")
    assert _evaluations(run.log)[-1][:2] == evaluations[-1][:2]
    assert run.log.count("training stopped: early_stop") == 1
