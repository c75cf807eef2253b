"""The S1 (GPT) recipe end to end on the demo corpus with a tiny model: exact resume after SIGKILL,
plateau early stop with the best export, and exports that load the official way."""

from __future__ import annotations

import re
import signal

import pytest
import torch
from safetensors.torch import load_file

from gsv_accel.checkpoint import verify_checkpoint
from gsv_accel.models.gpt import GPTConfig, GPTLightningLayout, Text2SemanticDecoder

from .conftest import assert_same_weights, run_in_two_legs

# 36 training utterances in batches of up to 6: 8 steps per epoch (length buckets), 3 epochs.
RESUME_SETTINGS = ("train.epochs=3", "checkpoint.every_n_steps=4", "checkpoint.keep_last=20",
                   "plateau.enabled=false")


def _val_losses(log: str) -> list[tuple[int, float]]:
    return [(int(step), float(value))
            for step, value in re.findall(r"step (\d+) epoch \d+: val/loss = ([0-9.]+)", log)]


def test_sigkill_then_resume_auto_matches_uninterrupted(s1_run):
    reference = s1_run("reference", *RESUME_SETTINGS)
    reference.run()
    run = s1_run("killed", *RESUME_SETTINGS)
    process = run.start()
    run.wait_for_log("saved checkpoint step_00000008", process)
    assert run.kill(process) == -signal.SIGKILL
    run.run("--resume", "auto")
    assert "resumed from" in run.log
    assert_same_weights(run.final_weights(), reference.final_weights())
    reference_losses = dict(_val_losses(reference.log))
    assert all(reference_losses[step] == value for step, value in _val_losses(run.log))


def test_overfitting_config_stops_early_and_exports_the_best_model(s1_run):
    run = s1_run("overfit", "train.epochs=200", "train.learning_rate=0.003", "train.warmup_steps=2",
                 "plateau.patience=2", "plateau.max_reductions=0")
    run.run()
    evaluations = _val_losses(run.log)
    assert "training stopped: early_stop" in run.log
    assert len(evaluations) < 200
    best_step, _ = min(evaluations, key=lambda e: e[1])
    best = verify_checkpoint(run.run_dir / "checkpoints" / f"step_{best_step:08d}")
    exported = run.exports / f"demo_best-e{best.epoch}.ckpt"
    assert exported.is_file()


def test_monitoring_top3_accuracy_in_max_mode_stops_on_accuracy_and_exports_its_best(s1_run):
    """plateau.monitor may name any metric the recipe reports: accuracy, maximised."""
    run = s1_run("top3", "train.epochs=200", "train.learning_rate=0.003", "train.warmup_steps=2",
                 "plateau.monitor=val/top3_acc", "plateau.mode=max", "plateau.patience=2",
                 "plateau.max_reductions=0")
    run.run()
    accuracies = [(int(step), float(value)) for step, value in
                  re.findall(r"step (\d+) epoch \d+: val/top3_acc = ([0-9.]+)", run.log)]
    assert "training stopped: early_stop" in run.log and 3 <= len(accuracies) < 200
    # The controller's choice: the first evaluation reaching the highest accuracy (no later one beat it).
    best_value = max(value for _, value in accuracies)
    best_step = next(step for step, value in accuracies if value == best_value)
    assert (f"val/top3_acc has not improved for 2 evaluations (best {best_value:.4g} at step {best_step})"
            in run.log)
    best = verify_checkpoint(run.run_dir / "checkpoints" / f"step_{best_step:08d}")
    assert best.manifest["best"] and best.metrics["val/top3_acc"] == pytest.approx(best_value, abs=5e-6)
    exported = torch.load(run.exports / f"demo_best-e{best.epoch}.ckpt", map_location="cpu",
                          weights_only=True)
    weights = load_file(str(best.path / "model.safetensors"))
    assert all(torch.equal(exported["weight"][f"model.{k}"], v.half()) for k, v in weights.items())


def test_export_loads_the_official_way_with_strict_keys(s1_run):
    run = s1_run("export", "train.epochs=1")
    run.run()
    [export] = (run.exports).glob("demo-e1.ckpt")
    # As GPT-SoVITS inference does: torch.load, build the model from the stored config, load the
    # `model.`-prefixed weights strictly.
    raw = torch.load(export, map_location="cpu", weights_only=False)
    assert raw["info"] == "GPT-e1" and raw["config"]["data"]["max_sec"] == 54.0
    module = GPTLightningLayout(Text2SemanticDecoder(GPTConfig.from_dict(raw["config"]["model"])))
    module.load_state_dict({k: v.float() for k, v in raw["weight"].items()}, strict=True)
    assert all(k.startswith("model.") for k in raw["weight"])
    assert all(v.dtype == torch.float16 for v in raw["weight"].values() if v.is_floating_point())


@pytest.mark.multiprocess
def test_two_process_run_trains_and_resumes_with_one(s1_run):
    run = s1_run("two_procs", "train.epochs=2", "checkpoint.every_n_steps=2", "train.max_steps=3")
    run.run(processes=2, timeout=900)
    assert "2 process(es) on cpu" in run.log
    saved = verify_checkpoint(run.checkpoints()[-1])
    assert saved.manifest["world_size"] == 2 and saved.step == 3
    run.overrides.remove("train.max_steps=3")
    run.run("--resume", "auto")
    final = verify_checkpoint(run.checkpoints()[-1])
    assert final.manifest["world_size"] == 1 and final.epoch == 2
    assert len(_val_losses(run.log)) == 2


def test_gradient_accumulation_counts_steps_and_resumes_mid_epoch_exactly(s1_run):
    """train.grad_accum=3 (the official config uses 4): an epoch's 8 batches make 2 optimizer steps and
    2 left-over batches, the per-step LR schedule counts optimizer steps, and a resume from step 2 (the
    last full step of the first epoch, its left-over batches still unread) continues bitwise."""
    settings = ("train.epochs=3", "train.grad_accum=3", "checkpoint.every_n_steps=2", "plateau.enabled=false")
    reference = s1_run("accumulated", *settings)
    reference.run()
    assert "training stopped: finished at step 6, epoch 3" in reference.log
    run = s1_run("accumulated_resumed", *settings)
    run_in_two_legs(run, stop_at=2)
    assert_same_weights(run.final_weights(), reference.final_weights())
