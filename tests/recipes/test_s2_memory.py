"""The S2 recipe's memory features end to end (tiny demo model, real processes): an out-of-memory
error injected in a step halves the micro-batch, the run goes on, and a run killed after it and resumed
ends bitwise equal to the uninterrupted run with the same error; peak memory is logged; gradient
checkpointing trains the same weights."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest

from gsv_accel.memory import INJECT_OOM_ENV

from .conftest import REPO, S2Run, assert_same_weights, recipe_env

# One epoch of 11 steps (batches of 4), a checkpoint every 3 steps.
SETTINGS = ("train.epochs=1", "checkpoint.every_n_steps=3", "checkpoint.keep_last=10",
            "checkpoint.save_on_best=false")
OOM_AT_STEP_2 = {INJECT_OOM_ENV: "2"}


def _train_rows(run: S2Run) -> list[dict]:
    rows = map(json.loads, (run.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
    return [row for row in rows if "train/loss_gen" in row]


def test_injected_oom_halves_the_batch_and_a_killed_run_resumes_bitwise(s2_run):
    straight = s2_run("oom_straight", *SETTINGS)
    straight.run(env=OOM_AT_STEP_2)
    log = straight.log
    assert "step 2 ran out of memory (injected out of memory in step 2" in log
    assert "retrying it with micro-batches of 2 item(s) instead of 4" in log
    assert "training stopped: finished at step 11, epoch 1" in log
    rows = _train_rows(straight)
    assert [row["step"] for row in rows] == list(range(1, 12))
    assert [row["sys/micro_batch_size"] for row in rows] == [4] + [2] * 10
    assert all(row["sys/peak_memory_gib"] > 0 for row in rows)
    assert "process peak RSS: peak memory " in log

    # Killed after the checkpoint of step 6 (written with micro-batches of 2), resumed with the same
    # injection still set: step 2 is not run again, the micro-batch size comes from the checkpoint.
    killed = s2_run("oom_killed", *SETTINGS)
    process = killed.start(env=OOM_AT_STEP_2)
    killed.wait_for_log("saved checkpoint step_00000006", process)
    assert killed.kill(process) == -signal.SIGKILL
    killed.run("--resume", "auto", env=OOM_AT_STEP_2)
    assert "micro-batches of 2 item(s) (data.batch_size 4), as the checkpoint's run had" in killed.log
    assert_same_weights(killed.final_weights(), straight.final_weights())


def test_grad_ckpt_trains_the_same_weights(s2_run):
    settings = ("train.max_steps=3", "checkpoint.every_n_steps=3", "validation.every_n_epochs=null")
    plain = s2_run("plain", *settings)
    plain.run()
    checkpointed = s2_run("grad_ckpt", *settings, "train.grad_ckpt=true")
    checkpointed.run()
    assert "gradient checkpointing of the generator (train.grad_ckpt)" in checkpointed.log
    assert "gradient checkpointing" not in plain.log
    assert_same_weights(checkpointed.final_weights(), plain.final_weights())


@pytest.mark.multiprocess
@pytest.mark.slow
def test_oom_on_one_of_two_processes_ends_both_without_hanging(s2_run):
    run = s2_run("oom_rank1", "train.epochs=1", "checkpoint.every_n_steps=2", "checkpoint.keep_last=10")
    env = {**recipe_env(), "ACCELERATE_USE_CPU": "true", INJECT_OOM_ENV: "3@1"}
    result = subprocess.run(run.command(processes=2), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    [line] = [line for line in run.log.splitlines() if "ran out of memory" in line]
    assert re.search(r"\[rank 1\].*step 3 ran out of memory and cannot be retried with several processes: "
                     r"lower data.batch_size \(now 4\), enable train.grad_ckpt", line), line
    assert "OutOfMemoryError: injected out of memory in step 3" in result.stderr
    # The checkpoint of step 2 is complete: the run resumes from it.
    assert [p.name for p in run.checkpoints()] == ["step_00000002"]
