"""Background checkpoint saves: same files as a synchronous save, state taken at the call, errors raised
at the next save, the next save and readers wait for the one in flight. (Real processes killed and
signalled during a background write: tests/recipes/test_s2_async_checkpoint.py.)"""

from __future__ import annotations

import errno
import json
import threading
import time

import pytest
import torch
from accelerate import Accelerator

from gsv_accel.checkpoint import (
    FAULT_ENV,
    FAULT_RELEASE_ENV,
    INCOMPLETE_PREFIX,
    MANIFEST_NAME,
    CheckpointManager,
    CheckpointWriteError,
    verify_checkpoint,
)
from gsv_accel.host_copy import HostCopier, storage_key


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def state_dict(self):
        return {"value": self.value, "history": [self.value, {"nested": torch.tensor([self.value])}]}

    def load_state_dict(self, state):
        self.value = state["value"]


class TiedNet(torch.nn.Module):
    """Two parameters sharing one storage (tied weights), as safetensors' duplicate removal sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, 4, bias=False)
        self.head = torch.nn.Linear(4, 4)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return self.head(torch.tanh(self.embed(x)))


@pytest.fixture
def parts(fresh_accelerate_state):
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    net, other = TiedNet(), torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt_a = torch.optim.AdamW(net.parameters(), lr=0.1)
    groups = [{"params": other[0].parameters()}, {"params": other[1].parameters(), "lr": 0.01}]
    opt_b = torch.optim.AdamW(groups, lr=0.1)
    net, opt_a, other, opt_b = accelerator.prepare(net, opt_a, other, opt_b)
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    return accelerator, (net, other), (opt_a, opt_b), counter


def _train_step(models, optimizers) -> None:
    net, other = models
    loss = net(torch.randn(8, 4)).pow(2).mean() + other(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
        optimizer.zero_grad()


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST_NAME}


def test_background_save_writes_the_same_bytes_as_save_state(tmp_path, parts):
    accelerator, models, optimizers, counter = parts
    _train_step(models, optimizers)
    counter.value = 3
    sync = CheckpointManager(tmp_path / "sync").save(accelerator, step=1, epoch=0)
    background = CheckpointManager(tmp_path / "background")
    folder = background.save(accelerator, step=1, epoch=0, background=True)
    background.wait(accelerator)
    assert folder.name == sync.name
    expected = _files(sync)
    assert {"model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin",
            "custom_checkpoint_0.pkl", "random_states_0.pkl"} <= set(expected)
    assert _files(folder) == expected  # byte for byte, RNG file included
    manifests = [json.loads((f / MANIFEST_NAME).read_text()) for f in (sync, folder)]
    assert manifests[0]["files"] == manifests[1]["files"]
    verify_checkpoint(folder)


def _stall(monkeypatch, tmp_path, step: int):
    release = tmp_path / "release"
    monkeypatch.setenv(FAULT_ENV, f"stall_in_save:{step}")
    monkeypatch.setenv(FAULT_RELEASE_ENV, str(release))
    return release


def test_training_goes_on_while_the_writer_holds_the_state_of_the_call(tmp_path, parts, monkeypatch):
    accelerator, models, optimizers, counter = parts
    release = _stall(monkeypatch, tmp_path, 5)
    manager = CheckpointManager(tmp_path / "run")
    _train_step(models, optimizers)
    counter.value = 5
    saved = {k: v.clone() for k, v in accelerator.unwrap_model(models[1]).state_dict().items()}
    folder = manager.save(accelerator, step=5, epoch=0, background=True)
    rng_after_save = torch.get_rng_state()
    try:
        # The writer is held after its files, before its manifest: the loop trains on meanwhile.
        for _ in range(3):
            _train_step(models, optimizers)
        counter.value = 8
        staging = tmp_path / "run" / "checkpoints" / f"{INCOMPLETE_PREFIX}{folder.name}"
        deadline = time.monotonic() + 120
        while not (staging / "custom_checkpoint_0.pkl").is_file() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (staging / "optimizer.bin").is_file() and not (staging / MANIFEST_NAME).exists()
        assert manager.in_background and not folder.exists()
    finally:
        release.touch()  # never leave the writer held past the test
    manager.wait(accelerator)
    verify_checkpoint(folder)
    accelerator.load_state(str(folder))
    restored = accelerator.unwrap_model(models[1]).state_dict()
    assert all(torch.equal(restored[k], saved[k]) for k in saved)
    assert counter.value == 5
    assert torch.equal(torch.get_rng_state(), rng_after_save)  # the RNG as it was at the save call


def test_the_next_save_and_readers_wait_for_the_one_in_flight(tmp_path, parts, monkeypatch):
    accelerator, models, optimizers, _ = parts
    release = _stall(monkeypatch, tmp_path, 1)
    manager = CheckpointManager(tmp_path / "run", keep_last=1)
    manager.save(accelerator, step=1, epoch=0, background=True)
    threading.Timer(0.3, release.touch).start()
    _train_step(models, optimizers)
    manager.save(accelerator, step=2, epoch=0, background=True)  # waits for step 1 first
    # Reading the folder waits for step 2: it is there, and pruning (keep_last=1) removed step 1.
    assert [info.step for info in manager.complete()] == [2]
    assert manager.latest_valid().step == 2
    manager.wait(accelerator)
    assert not manager.in_background


def test_a_failed_background_write_is_raised_at_the_next_save_and_keeps_the_earlier_ones(
        tmp_path, parts, monkeypatch):
    accelerator, models, optimizers, _ = parts
    manager = CheckpointManager(tmp_path / "run")
    manager.save(accelerator, step=1, epoch=0, background=True)
    import accelerate.utils

    real_save = accelerate.utils.save

    def full_disk(obj, path, **kwargs):
        if path.name == "optimizer_1.bin":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, **kwargs)

    monkeypatch.setattr(accelerate.utils, "save", full_disk)
    _train_step(models, optimizers)
    manager.save(accelerator, step=2, epoch=0, background=True)  # returns: the writer fails later
    _train_step(models, optimizers)
    with pytest.raises(CheckpointWriteError) as raised:
        manager.save(accelerator, step=3, epoch=0, background=True)
    err = raised.value
    assert err.disk_full and err.step == 2
    assert "cannot write checkpoint step_00000002" in str(err) and "intact (newest step_00000001)" in str(err)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]  # no partial folder left
    verify_checkpoint(root / "step_00000001")
    # The error was reported once; with space again the run's saves work.
    monkeypatch.setattr(accelerate.utils, "save", real_save)
    manager.save(accelerator, step=3, epoch=0, background=True)
    manager.wait(accelerator)
    assert [info.step for info in manager.complete()] == [3, 1]


def test_a_background_save_of_nonfinite_weights_is_refused_by_the_writer(tmp_path, parts, caplog):
    accelerator, models, optimizers, _ = parts
    manager = CheckpointManager(tmp_path / "run")
    manager.save(accelerator, step=1, epoch=0, background=True, refuse_nonfinite=True)
    _train_step(models, optimizers)
    with torch.no_grad():
        models[1][1].bias[0] = float("nan")  # the second model's parameter
    manager.save(accelerator, step=2, epoch=0, extra={"reason": "interval"}, background=True,
                 refuse_nonfinite=True)
    manager.wait(accelerator)  # no error: nothing to report but the log line
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]
    assert manager.latest_valid().step == 1
    assert ("not saving a checkpoint at step 2 (interval): non-finite values in model_1.safetensors:1.bias"
            in caplog.text)


def test_host_copier_keeps_shared_storages_shared_and_reuses_its_buffers():
    base = torch.arange(12, dtype=torch.float32)
    state = {"a": base[:6].view(2, 3), "b": base[6:], "same": base, "n": 3, "list": [base[2:4]]}
    copier = HostCopier()
    copied = copier.copy(state).state
    assert copied["a"].untyped_storage().data_ptr() == copied["b"].untyped_storage().data_ptr()
    assert copied["a"].untyped_storage().data_ptr() != base.untyped_storage().data_ptr()
    assert copied["b"].storage_offset() == 6 and copied["a"].shape == (2, 3)
    base.zero_()  # training moves on: the copy keeps the values of the call
    assert torch.equal(copied["same"], torch.arange(12, dtype=torch.float32))
    assert torch.equal(copied["list"][0], torch.tensor([2.0, 3.0])) and copied["n"] == 3
    buffer = copied["same"].untyped_storage().data_ptr()
    assert copier.held_bytes == 48
    copier.release()
    again = copier.copy(state).state
    assert again["same"].untyped_storage().data_ptr() == buffer and copier.held_bytes == 48
    assert torch.equal(again["same"], torch.zeros(12))


def test_deferred_storages_are_copied_later_and_optimizer_steps_wait_for_them():
    weight = torch.nn.Parameter(torch.ones(3))
    running = torch.zeros(2)  # a buffer: a forward pass may change it, so it is copied at the call
    optimizer = torch.optim.SGD([weight], lr=1.0)
    host = HostCopier().copy({"weight": weight.detach(), "running": running}, {storage_key(weight)})
    running.add_(5.0)
    weight.grad = torch.ones(3)
    stepper = threading.Thread(target=optimizer.step)
    stepper.start()
    stepper.join(timeout=0.5)
    assert stepper.is_alive()  # blocked in the step pre-hook: the copy is not complete
    assert torch.equal(weight.detach(), torch.ones(3))
    host.complete()
    stepper.join(timeout=60)
    assert not stepper.is_alive() and torch.equal(weight.detach(), torch.zeros(3))
    assert torch.equal(host.state["weight"], torch.ones(3))
    assert torch.equal(host.state["running"], torch.zeros(2))
    optimizer.step()  # nothing outstanding: steps run freely again
