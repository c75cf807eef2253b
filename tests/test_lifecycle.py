"""Loop helpers: resume resolution, config-change checks, stop signals, intervals, W&B mode."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest

from gsv_accel.checkpoint import CheckpointError, CheckpointInfo, CheckpointManager
from gsv_accel.config import ConfigError
from gsv_accel.lifecycle import (
    EXIT_CODE_SIGINT,
    EXIT_CODE_SIGTERM,
    StopRequest,
    check_resume_config,
    interval_due,
    resolve_resume,
)
from gsv_accel.tracking import mel_to_image, wandb_mode


def test_interval_due():
    assert [c for c in range(0, 10) if interval_due(3, c)] == [3, 6, 9]
    assert not any(interval_due(None, c) for c in range(10))


def test_fresh_start_in_a_folder_with_checkpoints_is_refused(tmp_path):
    manager = CheckpointManager(tmp_path)
    assert resolve_resume(None, manager) is None
    (manager.root / "step_00000010").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--resume auto"):
        resolve_resume(None, manager)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_resume(str(tmp_path / "nowhere"), manager)
    with pytest.raises(CheckpointError, match="no manifest.json"):
        resolve_resume(str(manager.root / "step_00000010"), manager)


def _checkpoint(config: dict) -> CheckpointInfo:
    return CheckpointInfo(path=None, manifest={"step": 5, "epoch": 1, "files": {}, "config": config})


def test_resume_refuses_model_changes_and_lists_training_changes(caplog):
    saved = {"model": {"n_layers": 6, "p_dropout": 0.1}, "train": {"epochs": 2, "learning_rate": 1e-4}}
    current = {"model": {"n_layers": 6, "p_dropout": 0.2}, "train": {"epochs": 4, "learning_rate": 1e-4}}
    with caplog.at_level(logging.INFO, logger="gsv_accel.lifecycle"):
        changed = check_resume_config(_checkpoint(saved), current)
    assert changed == ["model.p_dropout", "train.epochs"]  # the session logs them as applied
    current["model"]["n_layers"] = 2
    with pytest.raises(ConfigError, match=r"model.n_layers \(saved 6, now 2\)"):
        check_resume_config(_checkpoint(saved), current)


def test_stop_request_turns_signals_into_a_flag_and_exit_code():
    class OneProcess:
        num_processes = 1
        device = "cpu"

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when launched in the background
    stop = StopRequest().install()
    try:
        assert not stop.requested(OneProcess())
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested(OneProcess()) and stop.exit_code == EXIT_CODE_SIGINT == 130
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before
    assert EXIT_CODE_SIGTERM == 143


def test_wandb_mode_respects_env_and_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_mel_image_puts_low_frequencies_at_the_bottom():
    mel = np.zeros((4, 3), dtype=np.float32)
    mel[0] = 1.0  # lowest mel band loudest
    image = mel_to_image(mel)
    assert image.shape == (4, 3, 3) and image.dtype == np.uint8
    assert (image[-1] == 255).all() and (image[0] == 0).all()
