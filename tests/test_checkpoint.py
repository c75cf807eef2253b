"""Checkpoint manager: complete saves with manifests, retention, verification and fallback."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from accelerate import Accelerator

from gsv_accel.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    CheckpointManager,
    checkpoint_name,
    sha256_of,
    verify_checkpoint,
)


class Counter:
    """A custom object registered for checkpointing, as the recipes register their progress."""

    def __init__(self) -> None:
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


@pytest.fixture
def accel_parts(fresh_accelerate_state):
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    return accelerator, model, optimizer, counter


def _train_step(model, optimizer):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_save_writes_manifest_last_with_hashes_and_restores_exactly(tmp_path, accel_parts):
    accelerator, model, optimizer, counter = accel_parts
    manager = CheckpointManager(tmp_path)
    _train_step(model, optimizer)
    counter.value = 7
    folder = manager.save(accelerator, step=10, epoch=1, metrics={"val/mel_loss": 0.5},
                          config_fingerprint="abc", extra={"wandb_run_id": "r1"})
    assert folder.name == checkpoint_name(10)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest["step"] == 10 and manifest["epoch"] == 1 and manifest["world_size"] == 1
    assert manifest["metrics"] == {"val/mel_loss": 0.5} and manifest["extra"]["wandb_run_id"] == "r1"
    assert "model.safetensors" in manifest["files"] and "optimizer.bin" in manifest["files"]
    for rel, entry in manifest["files"].items():
        assert sha256_of(folder / rel) == entry["sha256"]
    assert {"torch", "accelerate", "gsv_accel", "python"} <= set(manifest["versions"])
    saved_weight = model.weight.detach().clone()

    _train_step(model, optimizer)
    counter.value = 99
    assert not torch.equal(model.weight, saved_weight)
    accelerator.load_state(str(folder))
    assert torch.equal(model.weight, saved_weight)
    assert counter.value == 7


def test_keeps_last_k_and_best_separately(tmp_path, accel_parts):
    accelerator, model, optimizer, _ = accel_parts
    manager = CheckpointManager(tmp_path, keep_last=2, keep_best=1)
    # The session flags a save as best when the plateau controller says it improved (10, then 20).
    losses = {10: 0.9, 20: 0.3, 30: 0.6, 40: 0.7, 50: 0.8}
    for step, loss in losses.items():
        _train_step(model, optimizer)
        manager.save(accelerator, step=step, epoch=step // 10, metrics={"val/mel_loss": loss},
                     best=step in (10, 20))
    assert [c.step for c in manager.complete()] == [50, 40, 20]
    assert manager.best().step == 20


def test_protected_step_survives_pruning_and_a_lower_unflagged_metric_is_not_best(tmp_path, accel_parts):
    """"Best" is the controller's decision (min_delta included), not the lowest number in a manifest:
    step 30's 0.29 did not beat 0.3 by min_delta, so it is not flagged, and the protected best step 20
    is kept even with keep_best=0."""
    accelerator, model, optimizer, _ = accel_parts
    manager = CheckpointManager(tmp_path, keep_last=1, keep_best=0)
    for step, loss in {10: 0.9, 20: 0.3, 30: 0.29, 40: 0.5}.items():
        _train_step(model, optimizer)
        manager.save(accelerator, step=step, epoch=1, metrics={"val/mel_loss": loss}, best=step in (10, 20),
                     protect=(20,))
    assert [c.step for c in manager.complete()] == [40, 20]
    assert manager.best().step == 20


def test_corrupt_checkpoint_of_the_same_step_is_kept_aside_not_deleted(tmp_path, accel_parts):
    accelerator, model, optimizer, _ = accel_parts
    manager = CheckpointManager(tmp_path, keep_last=3)
    _train_step(model, optimizer)
    folder = manager.save(accelerator, step=5, epoch=0)
    damaged = next(p for p in folder.iterdir() if p.name.endswith(".safetensors"))
    damaged.write_bytes(b"\0" * damaged.stat().st_size)  # same size, wrong content
    manager.save(accelerator, step=5, epoch=0)
    kept = [p for p in tmp_path.joinpath("checkpoints").iterdir()
            if p.name.startswith("corrupt-step_00000005")]
    assert len(kept) == 1 and (kept[0] / damaged.name).read_bytes() == b"\0" * damaged.stat().st_size
    assert manager.latest_valid().step == 5
    assert not any(p.name.startswith(".") for p in manager.root.iterdir())


def test_corrupt_or_incomplete_newest_falls_back_to_previous(tmp_path, accel_parts, caplog):
    accelerator, model, optimizer, _ = accel_parts
    manager = CheckpointManager(tmp_path, keep_last=5)
    for step in (1, 2, 3, 4):
        _train_step(model, optimizer)
        manager.save(accelerator, step=step, epoch=0)
    # step 4: one flipped byte in the weights; step 3: truncated optimizer; step 2: no manifest.
    weights = manager.root / checkpoint_name(4) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    optimizer_file = manager.root / checkpoint_name(3) / "optimizer.bin"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:10])
    (manager.root / checkpoint_name(2) / MANIFEST_NAME).unlink()
    # A crashed save leaves a staging folder, which is never a candidate.
    (manager.root / ".incomplete-step_00000005").mkdir()

    with caplog.at_level(logging.WARNING, logger="gsv_accel.checkpoint"):
        latest = manager.latest_valid()
    assert latest is not None and latest.step == 1
    messages = caplog.text
    assert "model.safetensors does not match its sha256" in messages
    assert "optimizer.bin has 10 bytes" in messages
    assert "no manifest.json" in messages

    with pytest.raises(CheckpointError, match="model.safetensors"):
        verify_checkpoint(manager.root / checkpoint_name(4))
    (manager.root / checkpoint_name(1) / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError, match="optimizer.bin listed in the manifest is missing"):
        verify_checkpoint(manager.root / checkpoint_name(1))
    assert manager.latest_valid() is None


def test_clean_stale_removes_leftovers_only(tmp_path, accel_parts):
    accelerator, model, optimizer, _ = accel_parts
    manager = CheckpointManager(tmp_path)
    manager.save(accelerator, step=1, epoch=0)
    (manager.root / ".incomplete-step_00000002").mkdir()
    (manager.root / ".deleting-step_00000000").mkdir()
    manager.clean_stale()
    assert sorted(p.name for p in manager.root.iterdir()) == [checkpoint_name(1)]


def test_saving_the_same_step_twice_replaces_it_completely(tmp_path, accel_parts):
    accelerator, model, optimizer, _ = accel_parts
    manager = CheckpointManager(tmp_path)
    manager.save(accelerator, step=5, epoch=0, metrics={"val/mel_loss": 1.0})
    manager.save(accelerator, step=5, epoch=1, metrics={"val/mel_loss": 0.5})
    [only] = manager.complete()
    assert only.epoch == 1 and only.metrics["val/mel_loss"] == 0.5


def test_inspect_shows_manifest_and_reports_a_corrupt_file(tmp_path, accel_parts, capsys):
    from gsv_accel.cli import main

    accelerator, model, optimizer, _ = accel_parts
    folder = CheckpointManager(tmp_path).save(accelerator, step=12, epoch=3,
                                               metrics={"val/mel_loss": 0.25})
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "complete, every file matches its sha256" in out
    assert "step:        12" in out and "epoch:       3" in out and "val/mel_loss = 0.25" in out
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["inspect", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and "model.safetensors does not match its sha256" in out
    (folder / MANIFEST_NAME).unlink()  # a checkpoint folder without manifest: an unfinished save, broken
    assert main(["inspect", str(folder)]) == 1
    assert "no manifest.json, the save never completed" in capsys.readouterr().err


def test_a_save_that_cannot_be_written_leaves_no_partial_and_keeps_the_earlier_ones(
        tmp_path, accel_parts, monkeypatch):
    import errno

    from gsv_accel.checkpoint import CheckpointWriteError

    accelerator, model, optimizer, _ = accel_parts
    manager = CheckpointManager(tmp_path, keep_last=1)
    manager.save(accelerator, step=1, epoch=0, metrics={"val/mel_loss": 0.5})
    real_save_state = accelerator.save_state

    def full_disk(output_dir):
        real_save_state(output_dir=output_dir)  # the files are written, then the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(accelerator, "save_state", full_disk)
    monkeypatch.setattr("gsv_accel.checkpoint.shutil.disk_usage",
                        lambda path: _disk_usage(total=10, used=10, free=0))
    with pytest.raises(CheckpointWriteError, match="no space left on device") as raised:
        manager.save(accelerator, step=2, epoch=0)
    assert raised.value.disk_full and "intact (newest step_00000001)" in str(raised.value)
    assert sorted(p.name for p in manager.root.iterdir()) == [checkpoint_name(1)]
    verify_checkpoint(manager.root / checkpoint_name(1))

    # Replacing the same step: a failure before the new copy is in place puts the old one back.
    monkeypatch.setattr(accelerator, "save_state", real_save_state)
    monkeypatch.setattr("gsv_accel.checkpoint.os.replace", _fail_on_staging(os.replace, errno.EIO))
    with pytest.raises(CheckpointWriteError, match="Input/output error"):
        manager.save(accelerator, step=1, epoch=0)
    assert sorted(p.name for p in manager.root.iterdir()) == [checkpoint_name(1)]
    assert verify_checkpoint(manager.root / checkpoint_name(1)).metrics == {"val/mel_loss": 0.5}


def _disk_usage(total: int, used: int, free: int):
    import shutil

    return shutil._ntuple_diskusage(total, used, free)


def _fail_on_staging(replace, code: int):
    def fake(src, dst):
        if str(src).rsplit("/", 1)[-1].startswith(".incomplete-"):
            raise OSError(code, os.strerror(code))
        return replace(src, dst)

    return fake
