"""The S1 recipe's memory features end to end (tiny GPT with dropout, real processes): gradient
checkpointing trains bitwise the same weights; an injected out-of-memory error halves the micro-batch
and a run stopped after it resumes bitwise equal to the uninterrupted run with the same error."""

from __future__ import annotations

import json

from gsv_accel.memory import INJECT_OOM_ENV

from .conftest import S1Run, assert_same_weights

# 36 training utterances in batches of up to 6: 8 steps per epoch (length buckets).
SETTINGS = ("train.epochs=1", "checkpoint.every_n_steps=4", "checkpoint.keep_last=10",
            "plateau.enabled=false")
OOM_AT_STEP_2 = {INJECT_OOM_ENV: "2"}


def _micro_batch_sizes(run: S1Run) -> list[float]:
    rows = map(json.loads, (run.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
    return [row["sys/micro_batch_size"] for row in rows if "train/loss" in row]


def test_grad_ckpt_trains_the_same_weights(s1_run):
    plain = s1_run("plain", *SETTINGS, "train.max_steps=3")
    plain.run()
    checkpointed = s1_run("grad_ckpt", *SETTINGS, "train.max_steps=3", "train.grad_ckpt=true")
    checkpointed.run()
    assert "gradient checkpointing of the transformer layers (train.grad_ckpt)" in checkpointed.log
    assert_same_weights(checkpointed.final_weights(), plain.final_weights())


def test_injected_oom_halves_the_batch_and_a_resumed_run_ends_bitwise_equal(s1_run):
    straight = s1_run("oom_straight", *SETTINGS)
    straight.run(env=OOM_AT_STEP_2)
    assert "step 2 ran out of memory (injected out of memory in step 2" in straight.log
    assert "retrying it with micro-batches of 3 item(s) instead of 6" in straight.log
    assert _micro_batch_sizes(straight) == [6] + [3] * 7
    two_legs = s1_run("oom_two_legs", *SETTINGS, "train.max_steps=4")
    two_legs.run(env=OOM_AT_STEP_2)
    two_legs.overrides[-1] = "train.max_steps=null"
    two_legs.run("--resume", "auto", env=OOM_AT_STEP_2)
    assert "micro-batches of 3 item(s) (data.batch_size 6), as the checkpoint's run had" in two_legs.log
    assert_same_weights(two_legs.final_weights(), straight.final_weights())
