"""Out-of-memory retry and peak memory (`gsv_accel.memory`), through the session's fake recipe.

Out-of-memory errors are injected with GSV_ACCEL_INJECT_OOM (a real `torch.OutOfMemoryError`, raised
from the model's forward pass inside the step). The fake recipe trains eight items in batches of four:
two steps per epoch, eight steps in four epochs.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from gsv_accel.checkpoint import CheckpointManager, verify_checkpoint
from gsv_accel.data.sampler import LengthBucketBatchSampler
from gsv_accel.lifecycle import EXIT_CODE_OUT_OF_MEMORY
from gsv_accel.memory import INJECT_OOM_ENV, PeakMemory, injected_oom_steps, is_out_of_memory

from .test_session import FakeRecipe, config, train

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

SETTINGS = ("train.batch_size=4", "train.epochs=4", "checkpoint.every_n_steps=1", "checkpoint.keep_last=20")


def final_weights(run_dir, recipe) -> dict[str, torch.Tensor]:
    return recipe.session.model_weights(CheckpointManager(run_dir).latest_valid().path, recipe.model)


def metric_rows(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [row for row in map(json.loads, lines) if "train/loss" in row]


# ----------------------------------------------------------------------------------- recognition

def test_out_of_memory_errors_are_recognised_and_other_errors_are_not():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                         "can't allocate memory: you tried to allocate 80000000000 bytes."))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x1)"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocator's error


def test_real_cpu_allocation_failure_is_recognised():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_out_of_memory(caught.value)


def test_peak_memory_where_getrusage_is_missing_is_not_measured_rather_than_an_import_error(monkeypatch):
    # Windows has no `resource` module: the peak comes from psutil when installed, else it is NaN.
    import builtins
    import math

    import gsv_accel.memory as memory

    measured = PeakMemory(torch.device("cpu"))
    assert measured.run_gib() > 0.01  # getrusage here: this test process holds torch
    monkeypatch.setattr(memory, "resource", None)
    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError("no psutil")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    unmeasured = PeakMemory(torch.device("cpu"))
    assert math.isnan(unmeasured.window_gib()) and math.isnan(unmeasured.run_gib())


def test_injection_variable_is_parsed_and_bad_values_name_it():
    assert injected_oom_steps({}) == []
    assert injected_oom_steps({INJECT_OOM_ENV: "3, 3,7"}) == [3, 3, 7]
    assert injected_oom_steps({INJECT_OOM_ENV: "3,5@1,7@0"}, rank=1) == [3, 5]
    with pytest.raises(ValueError, match=INJECT_OOM_ENV):
        injected_oom_steps({INJECT_OOM_ENV: "three"})
    with pytest.raises(ValueError, match="count from 1"):
        injected_oom_steps({INJECT_OOM_ENV: "0"})


# ---------------------------------------------------------------------------------------- sampler

def test_sampler_cuts_batches_into_halves_and_keeps_its_position_in_whole_batches():
    sampler = LengthBucketBatchSampler([10] * 10, 4, [0, 100], seed=3)
    whole = sampler.global_batches()
    assert sorted(len(b) for b in whole) == [2, 4, 4]
    assert sampler.halve_micro_batch() == 2
    pieces = list(sampler)
    assert pieces == [batch[i:i + 2] for batch in whole for i in range(0, len(batch), 2)]
    assert len(sampler) == len(pieces)
    # Steps of two batches: the shares say how many pieces each step takes, in loader order.
    shares = list(sampler.step_shares(2))
    assert len(shares) == 1 and shares[0] == [0.5] * (len(whole[0]) // 2 + len(whole[1]) // 2)
    sampler.advance(1)
    assert sampler.state_dict()["consumed_batches"] == 1 and sampler.state_dict()["micro_batch_size"] == 2
    assert list(sampler) == pieces[len(whole[0]) // 2:]
    assert sampler.halve_micro_batch() == 1
    with pytest.raises(ValueError, match="one item"):
        sampler.halve_micro_batch()
    # The micro-batch size travels with the position; an old state without it means whole batches.
    restored = LengthBucketBatchSampler([10] * 10, 4, [0, 100], seed=3)
    restored.load_state_dict(sampler.state_dict())
    assert restored.micro_batch_size == 1 and list(restored) == list(sampler)
    restored.load_state_dict({"epoch": 0, "consumed_batches": 0})
    assert restored.micro_batch_size == 4 and list(restored) == whole


def test_odd_batches_are_cut_by_rounding_up():
    sampler = LengthBucketBatchSampler([10] * 5, 5, [0, 100], shuffle=False)
    assert sampler.halve_micro_batch() == 3
    assert list(sampler) == [[0, 1, 2], [3, 4]]
    assert list(sampler.step_shares(1)) == [[0.6, 0.4]]


# --------------------------------------------------------------------------------------- the loop

def test_injected_oom_halves_the_micro_batch_logs_it_and_the_run_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv(INJECT_OOM_ENV, "3")
    recipe = train(config(tmp_path, *SETTINGS))
    run_dir = tmp_path / "run"
    assert recipe.exit_code == 0 and recipe.session.progress.step == 8
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert ("step 3 ran out of memory (injected out of memory in step 3 (GSV_ACCEL_INJECT_OOM)): retrying "
            "it with micro-batches of 2 item(s) instead of 4") in log
    rows = metric_rows(run_dir)
    assert [row["sys/micro_batch_size"] for row in rows] == [4, 4, 2, 2, 2, 2, 2, 2]
    assert [row["sys/oom_retries_total"] for row in rows] == [0, 0, 1, 1, 1, 1, 1, 1]
    # The step after the error trained the same items: every step is still counted once, and the
    # checkpoints hold the new micro-batch size.
    assert [row["step"] for row in rows] == list(range(1, 9))
    checkpoint = verify_checkpoint(run_dir / "checkpoints" / "step_00000003")
    assert checkpoint.step == 3
    resumed = train(config(tmp_path, *SETTINGS, "train.epochs=5"), resume="auto")
    assert resumed.session.sampler.micro_batch_size == 2
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "micro-batches of 2 item(s) (data.batch_size 4), as the checkpoint's run had" in log


def test_the_retried_step_is_the_same_optimizer_step(tmp_path, monkeypatch):
    """Two half batches weighted by their shares give the step of the whole batch (to rounding)."""
    plain = train(config(tmp_path / "plain", *SETTINGS))
    monkeypatch.setenv(INJECT_OOM_ENV, "1,1")
    halved = train(config(tmp_path / "halved", *SETTINGS))
    assert halved.session.sampler.micro_batch_size == 1
    a = final_weights(tmp_path / "plain" / "run", plain)
    b = final_weights(tmp_path / "halved" / "run", halved)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


@pytest.mark.parametrize("stop_at", [2, 5], ids=["stopped_before_the_oom", "stopped_after_the_oom"])
def test_a_resumed_run_ends_bitwise_equal_to_the_uninterrupted_run_with_the_same_oom(tmp_path, monkeypatch,
                                                                                      stop_at):
    monkeypatch.setenv(INJECT_OOM_ENV, "3")
    straight = train(config(tmp_path / "straight", *SETTINGS))
    first = train(config(tmp_path, *SETTINGS, f"train.max_steps={stop_at}"))
    assert first.session.sampler.micro_batch_size == (4 if stop_at < 3 else 2)
    # The environment still injects at step 3: a run resumed before it meets the error again, one
    # resumed after it takes the halved micro-batch from its checkpoint.
    resumed = train(config(tmp_path, *SETTINGS), resume="auto")
    assert resumed.exit_code == 0 and resumed.session.progress.step == 8
    a = final_weights(tmp_path / "straight" / "run", straight)
    b = final_weights(tmp_path / "run", resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_out_of_memory_at_one_item_per_micro_batch_saves_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(INJECT_OOM_ENV, "3,3,3")
    recipe = train(config(tmp_path, *SETTINGS))
    run_dir = tmp_path / "run"
    assert recipe.exit_code == EXIT_CODE_OUT_OF_MEMORY and recipe.session.progress.step == 2
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "micro-batches of 2 item(s) instead of 4" in log
    assert "micro-batches of 1 item(s) instead of 2" in log
    assert "step 3 ran out of memory" in log
    assert "with one item per micro-batch: enable train.grad_ckpt" in log
    assert "training stopped: out_of_memory at step 2" in log
    # The checkpoint of step 2 is complete, with the micro-batch size of that step, and the run is not
    # finished: it resumes (here without the injection) and trains to its end.
    assert CheckpointManager(run_dir).latest_valid().step == 2
    monkeypatch.delenv(INJECT_OOM_ENV)
    resumed = train(config(tmp_path, *SETTINGS), resume="auto")
    assert resumed.exit_code == 0 and resumed.session.progress.step == 8
    assert resumed.session.sampler.micro_batch_size == 4


def test_peak_memory_is_logged_per_row_and_at_the_end(tmp_path):
    train(config(tmp_path, *SETTINGS))
    rows = metric_rows(tmp_path / "run")
    peaks = [row["sys/peak_memory_gib"] for row in rows]
    # On the CPU: the process's peak resident set size, which never decreases.
    assert all(0 < peak < 1024 for peak in peaks) and peaks == sorted(peaks)
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    [logged] = re.findall(r"process peak RSS: peak memory ([0-9.]+) GiB", log)
    assert peaks[-1] - 0.01 <= float(logged) <= PeakMemory(torch.device("cpu")).run_gib() + 0.01


def test_the_fp16_scaler_forgets_a_failed_step_so_the_retry_can_unscale_again():
    from torch.amp import GradScaler

    from gsv_accel.memory import _reset_scaler

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = GradScaler("cpu", init_scale=4.0)
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    scaler.unscale_(optimizer)  # the failed attempt got this far
    with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
        scaler.unscale_(optimizer)
    _reset_scaler(scaler)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(model(torch.ones(1, 2)).sum()).backward()
    scaler.unscale_(optimizer)
    assert scaler.get_scale() == 4.0 and torch.equal(model.weight.grad, torch.ones(1, 2))
    scaler.step(optimizer)
    scaler.update()


class HungryRecipe(FakeRecipe):
    """The fake recipe on a device too small for micro-batches of more than two items: its step asks
    the CPU allocator for an impossible amount of memory then (a real allocation failure)."""

    def train_step(self, micro_batches):
        if max(len(batch["x"]) for batch in micro_batches) > 2:
            torch.empty(2**62, dtype=torch.uint8)
        return super().train_step(micro_batches)


def test_a_real_cpu_allocation_failure_is_retried_on_smaller_micro_batches(tmp_path):
    cfg = config(tmp_path, *SETTINGS)
    recipe = HungryRecipe(cfg)
    recipe.setup()
    assert recipe.train() == 0 and recipe.session.progress.step == 8
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "step 1 ran out of memory ([enforce fail at" in log and "DefaultCPUAllocator" in log
    assert [row["sys/micro_batch_size"] for row in metric_rows(tmp_path / "run")] == [2] * 8
