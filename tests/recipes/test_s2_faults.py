"""Fault injection over the S2 recipe (project issue 7; results in docs/reliability.md).

Every fault here is done to a real recipe process on the demo corpus with the tiny model: SIGKILL at
random moments and inside a save or a prune, SIGINT, corrupt checkpoints, a full disk (injected, and a
real tmpfs where user namespaces allow mounting one), NaN losses from NaN features, a data list with
broken entries, a weights file carrying a pickled callable and bad configs. The claim each test checks
is that nothing is lost: a resume continues from the newest complete checkpoint and ends with exactly
the weights of a run that was never interrupted.

Deterministic fault points come from `GSV_ACCEL_FAULT` (see gsv_accel/checkpoint.py); random moments
use a seed printed in the assertion messages.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from gsv_accel.checkpoint import (
    DELETING_PREFIX,
    FAULT_ENV,
    FAULT_RELEASE_ENV,
    INCOMPLETE_PREFIX,
    MANIFEST_NAME,
    CheckpointManager,
    verify_checkpoint,
)
from gsv_accel.lifecycle import (
    EXIT_CODE_CHECKPOINT_WRITE,
    EXIT_CODE_NONFINITE,
    EXIT_CODE_SIGINT,
)

from .conftest import DEMO_CONFIG, DEMO_SV, REPO, S2_RECIPE, S2Run, assert_same_weights, recipe_env

# Two epochs of 11 steps, a checkpoint every 3 steps, only the last 2 kept: every save from step 9 on
# also deletes an old checkpoint.
FAULT_SETTINGS = ("train.epochs=2", "checkpoint.every_n_steps=3", "checkpoint.keep_last=2")
EXIT_USER_ERROR = 2


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_dataset) -> S2Run:
    """The uninterrupted run every interrupted one must match bitwise."""
    run = S2Run(tmp_path_factory.mktemp("fault_reference") / "run", demo_dataset, *FAULT_SETTINGS)
    run.run()
    return run


def _resumed_steps(log: str) -> list[int]:
    return [int(step) for step in re.findall(r"resumed from \S+: step (\d+)", log)]


def _dot_folders(run: S2Run) -> list[str]:
    root = run.run_dir / "checkpoints"
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


def _newest_complete_step(run: S2Run) -> int | None:
    info = CheckpointManager(run.run_dir).latest_valid()
    return None if info is None else info.step


def _assert_only_complete_checkpoints(run: S2Run) -> None:
    """No folder with a checkpoint name is incomplete: partial writes only ever live in dot folders."""
    for folder in run.checkpoints():
        verify_checkpoint(folder)


def _resume_and_check(run: S2Run, *extra: str, expect: int = 0, env: dict | None = None) -> None:
    """`--resume auto` to the end; it must continue from the newest complete checkpoint."""
    expected = _newest_complete_step(run)
    run.run("--resume", "auto", *extra, expect=expect, env=env)
    assert _resumed_steps(run.log)[-1] == expected


def _start_resumed(run: S2Run) -> subprocess.Popen:
    """Start `--resume auto` and return once it has resumed (its own "resumed from" line)."""
    before = len(_resumed_steps(run.log))
    process = run.start("--resume", "auto")
    deadline = time.monotonic() + 300
    while len(_resumed_steps(run.log)) == before:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the resumed run ended (code {process.returncode}) before resuming")
        time.sleep(0.02)
    return process


def _kill_when(run: S2Run, process: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL `process` as soon as `ready()` is true; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=120)
            return True
        time.sleep(0.001)
    process.kill()
    raise AssertionError("timed out")


# ------------------------------------------------------------------------------------------ SIGKILL


@pytest.mark.slow
def test_repeated_sigkill_inside_save_prune_and_at_random_moments_loses_nothing(s2_run, reference):
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    run = s2_run("killed", *FAULT_SETTINGS)

    # 1. Inside the save of step 6: Accelerate's files are in the staging folder, no manifest yet.
    run.run(expect=-signal.SIGKILL, env={FAULT_ENV: "kill_in_save:6"})
    assert _dot_folders(run) == [f"{INCOMPLETE_PREFIX}step_00000006"]
    assert [p.name for p in run.checkpoints()] == ["step_00000003"]
    _assert_only_complete_checkpoints(run)

    # 2. Resume; killed while pruning: at the save of step 9, step 3 (beyond keep_last=2) was renamed
    # to .deleting-* and is being removed.
    _resume_and_check(run, expect=-signal.SIGKILL, env={FAULT_ENV: "kill_in_prune:3"})
    assert "removing leftover folder" in run.log and f"{INCOMPLETE_PREFIX}step_00000006" in run.log
    assert _dot_folders(run) == [f"{DELETING_PREFIX}step_00000003"]
    assert [p.name for p in run.checkpoints()] == ["step_00000006", "step_00000009"]
    _assert_only_complete_checkpoints(run)

    # 3. Resume; killed after the manifest of step 12 was written but before its folder was renamed:
    # it is still a staging folder, never resumed from.
    _resume_and_check(run, expect=-signal.SIGKILL, env={FAULT_ENV: "kill_after_manifest:12"})
    assert _resumed_steps(run.log)[-1] == 9
    assert _dot_folders(run) == [f"{INCOMPLETE_PREFIX}step_00000012"]
    _assert_only_complete_checkpoints(run)

    # 4. Resume; killed the moment a staging folder appears (a real save in progress, no hook).
    expected = _newest_complete_step(run)
    process = _start_resumed(run)
    root = run.run_dir / "checkpoints"
    _kill_when(run, process, lambda: any(n.startswith(INCOMPLETE_PREFIX) for n in os.listdir(root)))
    assert _resumed_steps(run.log)[-1] == expected
    _assert_only_complete_checkpoints(run)

    # 5. Resume; killed at a random moment.
    expected = _newest_complete_step(run)
    process = _start_resumed(run)
    delay = rng.uniform(0.2, 1.5)
    started = time.monotonic()
    _kill_when(run, process, lambda: time.monotonic() - started > delay)
    assert _resumed_steps(run.log)[-1] == expected, f"seed {seed}"
    _assert_only_complete_checkpoints(run)

    # 6. Resume to the end: exactly the uninterrupted run's weights.
    _resume_and_check(run)
    assert _dot_folders(run) == []
    _assert_only_complete_checkpoints(run)
    assert_same_weights(run.final_weights(), reference.final_weights())


def test_validation_metric_is_recorded_only_where_it_was_measured(reference):
    """An interval checkpoint after a validation does not inherit its metric: "best" (kept by
    retention, exported as *_best_*) is always a checkpoint of the validated weights."""
    validated = {int(step) for step in re.findall(r"step (\d+) epoch \d+: val/mel_loss", reference.log)}
    assert validated == {11, 22}
    for folder in reference.checkpoints():
        info = verify_checkpoint(folder)
        assert bool(info.metrics) == (info.step in validated), folder.name
    assert CheckpointManager(reference.run_dir).best().step in validated


# ------------------------------------------------------------------------------------------ SIGINT


def test_sigint_saves_a_checkpoint_exits_130_and_resumes_exactly(s2_run, reference):
    run = s2_run("interrupted", *FAULT_SETTINGS)
    process = run.start()
    run.wait_for_log("saved checkpoint step_00000003", process)
    assert run.kill(process, signal.SIGINT) == EXIT_CODE_SIGINT == 130
    assert "received SIGINT" in run.log and "training stopped: signal" in run.log
    stopped_at = int(re.search(r"training stopped: signal at step (\d+)", run.log).group(1))
    last = verify_checkpoint(run.checkpoints()[-1])
    assert last.step == stopped_at and "final (signal)" in last.manifest["extra"]["reason"]
    _resume_and_check(run)
    assert _resumed_steps(run.log) == [stopped_at]
    assert_same_weights(run.final_weights(), reference.final_weights())


# ------------------------------------------------------------------------- background checkpoint writes
# checkpoint.async_save (the default, named here in case that changes): the loop hands a host copy of
# the state to a writer thread and trains on. `stall_in_save` holds that writer after it wrote the
# files, before the manifest, until the release file exists.

ASYNC = "checkpoint.async_save=true"


def _logged_steps(run: S2Run) -> list[int]:
    path = run.run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def _handed_over(run: S2Run, step: int) -> bool:
    path = run.run_dir / "train.log"
    text = f"checkpoint step_{step:08d} (interval) handed to the background writer"
    return path.is_file() and text in path.read_text()


def test_sigkill_while_a_background_write_is_held_loses_nothing(s2_run, reference, tmp_path):
    run = s2_run("async_killed", *FAULT_SETTINGS, ASYNC)
    process = run.start(env={FAULT_ENV: "stall_in_save:6", FAULT_RELEASE_ENV: str(tmp_path / "never")})
    staged = run.run_dir / "checkpoints" / f"{INCOMPLETE_PREFIX}step_00000006"
    # Killed once training went on two steps past the save it handed to the writer, held with its
    # files written.
    assert _kill_when(run, process, lambda: _handed_over(run, 6) and max(_logged_steps(run), default=0) >= 8
                      and (staged / "model_1.safetensors").is_file())
    assert _dot_folders(run) == [f"{INCOMPLETE_PREFIX}step_00000006"]
    assert not (staged / MANIFEST_NAME).exists()
    assert [p.name for p in run.checkpoints()] == ["step_00000003"]
    _assert_only_complete_checkpoints(run)
    _resume_and_check(run)
    assert _resumed_steps(run.log) == [3]
    assert _dot_folders(run) == []
    assert_same_weights(run.final_weights(), reference.final_weights())


def test_enospc_in_the_background_writer_is_reported_and_a_synchronous_resume_matches(s2_run, reference):
    run = s2_run("async_enospc", *FAULT_SETTINGS, ASYNC)
    result = run.run(expect=EXIT_CODE_CHECKPOINT_WRITE, env={FAULT_ENV: "enospc_in_save:9"})
    # The writer failed while the loop trained on; the next save (the best one of step 11) raised it.
    assert "background checkpoint step_00000009 failed: OSError" in run.log
    assert max(_logged_steps(run), default=0) == 11
    _disk_full_checks(run, result.stderr, ["step_00000003", "step_00000006"])
    # Background and synchronous checkpoints are the same files: either mode resumes the other's.
    _resume_and_check(run, "checkpoint.async_save=false")
    assert _resumed_steps(run.log) == [6]
    assert_same_weights(run.final_weights(), reference.final_weights())


def test_sigterm_while_a_background_write_runs_waits_for_it_saves_and_resumes_exactly(
        s2_run, reference, tmp_path):
    run = s2_run("async_sigterm", *FAULT_SETTINGS, ASYNC)
    release = tmp_path / "release"
    process = run.start(env={FAULT_ENV: "stall_in_save:6", FAULT_RELEASE_ENV: str(release)})
    deadline = time.monotonic() + 300
    while not (_handed_over(run, 6) and max(_logged_steps(run), default=0) >= 7):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended or hung first"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    run.wait_for_log("received SIGTERM", process)
    time.sleep(1.0)
    # The stop waits for the held write: nothing has ended, step 6 is not published yet.
    assert process.poll() is None and [p.name for p in run.checkpoints()] == ["step_00000003"]
    release.touch()
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    stopped_at = int(re.search(r"training stopped: signal at step (\d+)", run.log).group(1))
    assert stopped_at > 6 and _dot_folders(run) == []
    assert [p.name for p in run.checkpoints()] == ["step_00000006", f"step_{stopped_at:08d}"]
    _assert_only_complete_checkpoints(run)
    _resume_and_check(run)
    assert _resumed_steps(run.log) == [stopped_at]
    assert_same_weights(run.final_weights(), reference.final_weights())


# ------------------------------------------------------------------------------ corrupt checkpoints


@pytest.fixture(scope="module")
def nine_steps(tmp_path_factory, demo_dataset) -> S2Run:
    """A run stopped at step 9 with complete checkpoints at steps 3, 6 and 9."""
    run = S2Run(tmp_path_factory.mktemp("nine_steps") / "run", demo_dataset, *FAULT_SETTINGS,
                "checkpoint.keep_last=10", "train.max_steps=9")
    run.run()
    assert [p.name for p in run.checkpoints()] == ["step_00000003", "step_00000006", "step_00000009"]
    return run


def _truncate(folder: Path) -> str:
    path = folder / "optimizer.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "optimizer.bin"


def _flip_byte(folder: Path) -> str:
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return "model.safetensors"


def _delete_file(folder: Path) -> str:
    (folder / "random_states_0.pkl").unlink()
    return "random_states_0.pkl"


def _delete_manifest(folder: Path) -> str:
    (folder / MANIFEST_NAME).unlink()
    return MANIFEST_NAME


@pytest.mark.parametrize("corrupt", [_truncate, _flip_byte, _delete_file, _delete_manifest],
                         ids=["truncated", "flipped_byte", "missing_file", "missing_manifest"])
def test_corrupt_newest_checkpoint_is_skipped_by_auto_refused_by_path_and_reported_by_inspect(
        corrupt, nine_steps, reference, demo_dataset, tmp_path, capsys):
    from gsv_accel.cli import main as cli_main

    run_dir = tmp_path / "run"
    shutil.copytree(nine_steps.run_dir, run_dir)
    run = S2Run(run_dir, demo_dataset, *FAULT_SETTINGS, "checkpoint.keep_last=10")
    newest = run_dir / "checkpoints" / "step_00000009"
    bad_file = corrupt(newest)

    # gsv-accel inspect: exit 1, naming the file.
    assert cli_main(["inspect", str(newest)]) == 1
    captured = capsys.readouterr()
    assert bad_file in captured.out + captured.err

    # --resume PATH: exit 2 before training, naming the file.
    result = run.run("--resume", str(newest), expect=EXIT_USER_ERROR)
    assert bad_file in result.stderr and "step_00000009" in result.stderr

    # --resume auto: warns, naming the file, and continues from step 6.
    if corrupt is _flip_byte:
        run.run("--resume", "auto")  # to the end: the same weights as the uninterrupted run
        assert_same_weights(run.final_weights(), reference.final_weights())
    else:
        run.overrides.append("train.max_steps=7")
        run.run("--resume", "auto")
    assert re.search(rf"WARNING .*skipping checkpoint: .*step_00000009.*{re.escape(bad_file)}", run.log)
    assert _resumed_steps(run.log) == [6]


# -------------------------------------------------------------------------------------- disk full


def _disk_full_checks(run: S2Run, stderr: str, intact: list[str], run_dir: Path | None = None) -> None:
    message = stderr + run.log
    assert f"cannot write checkpoint step_00000009 in {run_dir or run.run_dir}/checkpoints" in message
    assert "no space left on device (disk full)" in message
    assert "training stopped: checkpoint could not be written at step 9" in run.log
    assert _dot_folders(run) == []  # the partial save was removed: nothing complete-looking is left
    assert [p.name for p in run.checkpoints()] == intact
    _assert_only_complete_checkpoints(run)


def test_injected_enospc_during_save_stops_cleanly_and_earlier_checkpoints_resume(s2_run, reference):
    run = s2_run("enospc", *FAULT_SETTINGS)
    result = run.run(expect=EXIT_CODE_CHECKPOINT_WRITE, env={FAULT_ENV: "enospc_in_save:9"})
    _disk_full_checks(run, result.stderr, ["step_00000003", "step_00000006"])
    _resume_and_check(run)
    assert _resumed_steps(run.log) == [6]
    assert_same_weights(run.final_weights(), reference.final_weights())


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                             f"mount -t tmpfs -o size=64k tmpfs {probe}"], capture_output=True)
    return result.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("headroom", [0.1, 0.5], ids=["fails_in_safetensors", "fails_in_torch_save"])
def test_real_disk_full_on_a_small_tmpfs(headroom, reference, demo_dataset, tmp_path):
    """The run folder on a tmpfs with room for two checkpoints and `headroom` of a third: the save of
    step 9 hits a real ENOSPC (in safetensors' writer, or in torch.save's, which does not say so)."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (needs unshare with user namespaces)")
    checkpoint_bytes = sum(p.stat().st_size for p in reference.checkpoints()[-1].iterdir())
    size_kib = int((2 + headroom) * checkpoint_bytes / 1024) + 64  # + the log and config
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    copy = tmp_path / "copy"
    run = S2Run(mount / "run", demo_dataset, *FAULT_SETTINGS)
    command = " ".join(f"'{part}'" for part in run.command())
    script = (f"mount -t tmpfs -o size={size_kib}k tmpfs '{mount}' || exit 99; {command}; code=$?; "
              f"cp -a '{mount / 'run'}' '{copy}'; exit $code")
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                            cwd=REPO, env=recipe_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == EXIT_CODE_CHECKPOINT_WRITE, result.stderr[-3000:]
    # The tmpfs is gone with its namespace; its copy is the run folder, moved to a real disk.
    moved = S2Run(copy, demo_dataset, *FAULT_SETTINGS)
    _disk_full_checks(moved, result.stderr, ["step_00000003", "step_00000006"], run_dir=run.run_dir)
    if headroom == 0.5:
        _resume_and_check(moved)
        assert_same_weights(moved.final_weights(), reference.final_weights())


@pytest.mark.multiprocess
@pytest.mark.slow
def test_enospc_on_one_rank_stops_every_rank_without_hanging(s2_run):
    run = s2_run("enospc_rank1", "train.epochs=1", "checkpoint.every_n_steps=2", "checkpoint.keep_last=10")
    # Rank 1 fails to write its part of step 4; rank 0 wrote everything it had to.
    env = {**recipe_env(), "ACCELERATE_USE_CPU": "true", FAULT_ENV: "enospc_in_save:4@1"}
    result = subprocess.run(run.command(processes=2), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    # torchrun reports a failed worker with its own code (1); each worker exited with 74.
    assert result.returncode != 0
    for message in ("cannot write checkpoint step_00000004", "training stopped: checkpoint could not be "
                    "written at step 4"):
        lines = [line for line in run.log.splitlines() if message in line]
        assert sorted(re.search(r"\[rank (\d)\]", line).group(1) for line in lines) == ["0", "1"], run.log
    assert f"exitcode: {EXIT_CODE_CHECKPOINT_WRITE}" in result.stderr, result.stderr[-3000:]
    assert _dot_folders(run) == []
    assert [p.name for p in run.checkpoints()] == ["step_00000002"]
    _assert_only_complete_checkpoints(run)


# ------------------------------------------------------------------------------------- non-finite

NONFINITE_SETTINGS = ("train.epochs=1", "checkpoint.every_n_steps=2", "checkpoint.keep_last=10",
                      "train.max_nonfinite_steps=3", "plateau.min_lr_scale=0.2", "tracking.tensorboard=true")


def _all_finite_checkpoints_and_exports(run: S2Run) -> None:
    from gsv_accel.formats import load_gsv_file

    for folder in run.checkpoints():
        for name in ("model.safetensors", "model_1.safetensors"):
            for key, tensor in load_file(str(folder / name)).items():
                assert torch.isfinite(tensor).all(), f"{folder.name}/{name}: {key} is not finite"
    for export in (run.exports).glob("*.pth"):
        for key, tensor in load_gsv_file(export).state_dict.items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), f"{export.name}: {key} is not finite"


def _scalar(run: S2Run, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(run.run_dir.glob("tensorboard/**/events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return values


def test_nan_losses_are_skipped_counted_and_rolled_back_with_lower_lr_until_none_is_left(
        s2_run, nan_dataset):
    run = s2_run("nan_rollback", *NONFINITE_SETTINGS, dataset=nan_dataset)
    result = run.run(expect=EXIT_CODE_NONFINITE)
    log = run.log
    skipped = [int(s) for s in re.findall(r"step (\d+): non-finite loss or gradient, optimizer step skipped",
                                          log)]
    # The NaN batch poisons the quantizer's EMA codebook (updated in the forward pass), so the steps
    # after it are non-finite too: 3 in a row, then a rollback to step 6, four times over.
    assert skipped == [7, 8, 9] * 4, result.stderr[-3000:]
    # The poisoned model at step 8 is never saved: the rollback goes to step 6 each time.
    assert log.count("not saving a checkpoint at step 8 (interval): non-finite values in") == 4
    rollbacks = re.findall(r"rolled back to (step_\d+) \(step (\d+)\); LR scale ([0-9.]+) -> ([0-9.]+)", log)
    assert rollbacks == [("step_00000006", "6", "1", "0.5"), ("step_00000006", "6", "0.5", "0.25"),
                         ("step_00000006", "6", "0.25", "0.2")]
    assert "LR scale is already at plateau.min_lr_scale: stopping" in log
    assert "training stopped: nonfinite at step 6" in log
    counted = _scalar(run, "train/nonfinite_steps_total")
    assert counted and counted[-1][1] == 12
    assert [p.name for p in run.checkpoints()] == ["step_00000002", "step_00000004", "step_00000006"]
    _all_finite_checkpoints_and_exports(run)


def test_nan_losses_with_on_nonfinite_stop_never_save_or_export_nan_weights(s2_run, nan_dataset):
    run = s2_run("nan_stop", *NONFINITE_SETTINGS, "train.on_nonfinite=stop", dataset=nan_dataset)
    run.run(expect=EXIT_CODE_NONFINITE)
    log = run.log
    assert "3 consecutive steps with non-finite losses (last at step 9)" in log
    assert "rolled back" not in log
    assert "not saving a checkpoint at step 9 (final (nonfinite))" in log
    assert "not exporting step 9: non-finite weights" in log
    assert "training stopped: nonfinite at step 9" in log
    assert [p.name for p in run.checkpoints()] == ["step_00000002", "step_00000004", "step_00000006"]
    assert CheckpointManager(run.run_dir).best() is None  # no validation ran: nothing is "best"
    _all_finite_checkpoints_and_exports(run)


# ---------------------------------------------------------------------------------- broken inputs


def test_data_list_with_20_percent_broken_entries_prepares_the_rest_and_trains(s2_run, tmp_path):
    from gsv_accel.data.prepare import REJECTED_FILE, prepare

    corpus = tmp_path / "corpus"
    shutil.copytree(REPO / "demo" / "data" / "wavs", corpus / "wavs")
    good = (REPO / "demo" / "data" / "demo.list").read_text(encoding="utf-8").splitlines()[:24]
    audio, rate = sf.read(corpus / "wavs" / "en_000.flac")
    (corpus / "wavs" / "corrupt.flac").write_bytes(os.urandom(4000))
    (corpus / "wavs" / "zero_bytes.flac").write_bytes(b"")
    sf.write(corpus / "wavs" / "short.flac", audio[: int(0.3 * rate)], rate)
    broken = [
        "wavs/missing.flac|demo_speaker|en|This file does not exist.",  # missing
        "wavs/corrupt.flac|demo_speaker|en|Random bytes, not audio.",  # unreadable
        "wavs/zero_bytes.flac|demo_speaker|en|An empty file.",  # empty
        "wavs/en_001.flac|demo_speaker|en",  # format: three fields
        "wavs/en_002.flac|demo_speaker|xx|Unsupported language.",  # language
        "wavs/short.flac|demo_speaker|en|Too short.",  # too_short
    ]
    lines = good[:4] + broken[:3] + good[4:12] + broken[3:] + good[12:]
    assert len(broken) / len(lines) == 0.2
    (corpus / "train.list").write_text("\n".join(lines) + "\n", encoding="utf-8")

    result = prepare(corpus / "train.list", tmp_path / "dataset", REPO / "demo" / "tiny_hubert",
                     sv_model=DEMO_SV)
    rejected = (tmp_path / "dataset" / REJECTED_FILE).read_text(encoding="utf-8").splitlines()[1:]
    codes = {row.split("\t")[1]: row.split("\t")[2] for row in rejected}
    assert codes == {"wavs/missing.flac": "missing", "wavs/corrupt.flac": "unreadable",
                     "wavs/zero_bytes.flac": "empty", "wavs/en_001.flac": "format",
                     "wavs/en_002.flac": "language", "wavs/short.flac": "too_short"}, rejected
    assert result.counts["train"] + result.counts["validation"] == 24

    run = s2_run("broken_list", "train.epochs=1", "train.max_steps=3", dataset=tmp_path / "dataset")
    run.run()
    assert "training stopped: max_steps at step 3" in run.log
    verify_checkpoint(run.checkpoints()[-1])


def test_weights_file_with_a_pickled_callable_is_refused_and_never_run(s2_run, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil_s2G.pth"
    torch.save({"weight": {"enc_p.proj.weight": Payload()}, "config": {}}, evil)
    run = s2_run("hostile", f"train.pretrained_s2G={evil}")
    result = run.run(expect=EXIT_USER_ERROR)
    assert "os.system" in result.stderr and "refusing to load evil_s2G.pth" in result.stderr
    assert not marker.exists()
    assert not (run.run_dir / "checkpoints").exists()


@pytest.mark.parametrize("override, named", [
    ("train.learning_rate=fast", "train.learning_rate"),  # wrong type
    ("train.lr=0.1", "train.lr"),  # unknown key
    ("train.epochs=0", "train.epochs"),  # impossible value
    ("checkpoint.keep_last=0", "checkpoint.keep_last"),  # impossible value
])
def test_bad_config_fails_before_training_naming_the_key(s2_run, override, named):
    run = s2_run("bad_config", override)
    result = run.run(expect=EXIT_USER_ERROR)
    assert named in result.stderr
    assert not run.run_dir.exists()


def test_bad_config_file_fails_naming_the_key(s2_run, tmp_path):
    config = tmp_path / "bad.yaml"
    settings = yaml.safe_load(DEMO_CONFIG.read_text())
    settings["validation"]["every_n_steps"] = "often"
    config.write_text(yaml.safe_dump(settings))
    run = s2_run("bad_config_file")
    command = [sys.executable, str(S2_RECIPE), "--config", str(config), *run.overrides]
    result = subprocess.run(command, cwd=REPO, env=recipe_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USER_ERROR
    assert "validation.every_n_steps" in result.stderr
    assert not run.run_dir.exists()


def test_fault_hook_is_inert_unless_set(monkeypatch):
    from gsv_accel.checkpoint import fault_point

    monkeypatch.delenv(FAULT_ENV, raising=False)
    fault_point("enospc_in_save", 9)
    monkeypatch.setenv(FAULT_ENV, "enospc_in_save:9@1")
    fault_point("enospc_in_save", 9, rank=0)  # another rank
    fault_point("enospc_in_save", 8, rank=1)  # another step
    with pytest.raises(OSError, match="No space left on device"):
        fault_point("enospc_in_save", 9, rank=1)
    monkeypatch.setenv(FAULT_ENV, "enospc_in_sav:9")
    with pytest.raises(ValueError, match="expected point:step"):
        fault_point("enospc_in_save", 9)
