"""The S2 recipe end to end on the demo corpus with a tiny model: exact resume after SIGKILL and
SIGTERM, resume after moving the run and the dataset, the final save whatever the interval, exports
and the offline W&B record."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal

import pytest

from gsv_accel.checkpoint import verify_checkpoint
from gsv_accel.lifecycle import EXIT_CODE_SIGTERM

from .conftest import S2Run, assert_same_weights, load_sovits_export_the_official_way, run_in_two_legs

# Two epochs of 11 steps, checkpoints every 3 steps and at each epoch end.
RESUME_SETTINGS = ("train.epochs=2", "checkpoint.every_n_steps=3", "checkpoint.keep_last=10")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, demo_dataset) -> S2Run:
    run = S2Run(tmp_path_factory.mktemp("reference") / "run", demo_dataset, *RESUME_SETTINGS)
    run.run()
    return run


def _val_losses(log: str) -> list[tuple[int, float]]:
    return [(int(step), float(value))
            for step, value in re.findall(r"step (\d+) epoch \d+: val/mel_loss = ([0-9.]+)", log)]


def test_sigkill_at_random_step_then_resume_auto_matches_uninterrupted(s2_run, uninterrupted):
    rng = random.Random()
    seed = rng.randrange(1000)
    kill_after = random.Random(seed).choice([3, 6, 9, 12, 15, 18])
    run = s2_run("killed", *RESUME_SETTINGS)
    process = run.start()
    run.wait_for_log(f"saved checkpoint step_{kill_after:08d}", process)
    assert run.kill(process) == -signal.SIGKILL, f"seed {seed}"
    run.run("--resume", "auto")
    assert f"resumed from {run.run_dir / 'checkpoints'}" in run.log
    assert_same_weights(run.final_weights(), uninterrupted.final_weights())
    # Validation after the resume point reproduces the uninterrupted run's values exactly.
    reference = dict(_val_losses(uninterrupted.log))
    resumed = _val_losses(run.log)
    assert resumed and all(reference[step] == value for step, value in resumed), (seed, resumed, reference)


def test_resume_after_moving_run_folder_and_dataset(s2_run, uninterrupted, demo_dataset, tmp_path):
    run = s2_run("before_move", *RESUME_SETTINGS, "train.max_steps=7")
    run.run()
    assert [p.name for p in run.checkpoints()][-1] == "step_00000007"
    moved_dataset = tmp_path / "elsewhere" / "dataset"
    shutil.copytree(demo_dataset, moved_dataset)
    moved_run = tmp_path / "elsewhere" / "run"
    shutil.move(run.run_dir, moved_run)
    resumed = S2Run(moved_run, moved_dataset, *RESUME_SETTINGS)
    resumed.run("--resume", "auto")
    assert "resume: data.dataset changed" in resumed.log
    assert "resume: train.max_steps changed from 7 to None" in resumed.log
    assert_same_weights(resumed.final_weights(), uninterrupted.final_weights())


def test_sigterm_saves_a_checkpoint_and_exits_with_the_documented_code(s2_run, uninterrupted):
    run = s2_run("terminated", *RESUME_SETTINGS)
    process = run.start()
    run.wait_for_log("saved checkpoint step_00000003", process)
    assert run.kill(process, signal.SIGTERM) == EXIT_CODE_SIGTERM
    assert "received SIGTERM" in run.log and "training stopped: signal" in run.log
    last = run.checkpoints()[-1]
    verify_checkpoint(last)
    run.run("--resume", "auto")
    assert_same_weights(run.final_weights(), uninterrupted.final_weights())


def test_gradient_accumulation_counts_steps_and_resumes_mid_epoch_exactly(s2_run):
    """train.grad_accum=2: an optimizer step takes two of an epoch's 11 batches (5 steps, the odd batch
    left over), and a resume from step 3 (6 batches into the epoch) continues bitwise."""
    settings = ("train.epochs=2", "train.grad_accum=2", "checkpoint.every_n_steps=3")
    uninterrupted = s2_run("accumulated", *settings)
    uninterrupted.run()
    assert "training stopped: finished at step 10, epoch 2" in uninterrupted.log
    run = s2_run("accumulated_resumed", *settings)
    run_in_two_legs(run, stop_at=3)
    assert_same_weights(run.final_weights(), uninterrupted.final_weights())


def test_short_run_with_long_save_interval_still_leaves_final_checkpoint_and_export(s2_run):
    run = s2_run("short", "train.epochs=2", "checkpoint.every_n_epochs=4", "checkpoint.save_on_best=false")
    run.run()
    assert "checkpoint.every_n_epochs=4 is longer than the run (2 epochs)" in run.log
    [final] = run.checkpoints()
    info = verify_checkpoint(final)
    assert info.step == 22 and info.epoch == 2
    assert (run.exports / "demo_e2_s22.pth").is_file()


def test_export_loads_the_gpt_sovits_way_and_inspect_shows_progress(s2_run, capsys):
    from gsv_accel.cli import main as cli_main

    run = s2_run("export", "train.epochs=1")
    run.run()
    export = run.exports / "demo_e1_s11.pth"
    load_sovits_export_the_official_way(export, info="1epoch_11iteration")

    assert cli_main(["inspect", str(export), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epoch"] == 1 and summary["step"] == 11


def test_offline_wandb_record_holds_the_val_mel_loss_of_train_log(s2_run):
    from ..wandb_offline import history

    run = s2_run("wandb", "train.epochs=2", "tracking.wandb=true", "tracking.tensorboard=true")
    run.run()
    [run_file] = (run.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = history(run_file)
    logged = [(row["_step"], row["val/mel_loss"]) for row in rows if "val/mel_loss" in row]
    # Two generated utterances per validation: audio and mel images, in W&B and TensorBoard.
    media = {key.rsplit("/", 1)[0]: value for row in rows for key, value in row.items()
             if key.startswith(("val_audio/", "val_mel/")) and key.endswith("/_type")}
    assert sorted(media.values()) == ["audio-file", "audio-file", "image-file", "image-file"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, set] = {"audio": set(), "images": set(), "scalars": set()}
    for events_dir in {p.parent for p in (run.run_dir / "tensorboard").rglob("events.out.tfevents.*")}:
        found = EventAccumulator(str(events_dir), size_guidance={"audio": 0, "images": 0}).Reload().Tags()
        for kind in tags:
            tags[kind].update(found[kind])
    assert len(tags["audio"]) == 2 and len(tags["images"]) == 2
    assert {"train/loss_mel", "val/mel_loss"} <= tags["scalars"]
    in_log = _val_losses(run.log)
    assert len(in_log) == 2
    assert [step for step, _ in logged] == [step for step, _ in in_log]
    for (_, wandb_value), (_, log_value) in zip(logged, in_log, strict=True):
        assert wandb_value == pytest.approx(log_value, abs=5e-6)  # train.log prints 5 decimals


def test_a_learning_rate_change_on_resume_changes_train_lr_g_from_the_next_step(s2_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = s2_run("lr_change", "train.epochs=1", "train.max_steps=3", "tracking.tensorboard=true",
                 "validation.every_n_epochs=null")
    run.run()
    run.run("--resume", "auto", "train.max_steps=5", "train.learning_rate=0.00005")
    assert "resume: train.learning_rate changed from 0.0002 to 5e-05 (applies from the next step)" in run.log
    logged = {}
    for events in {p.parent for p in (run.run_dir / "tensorboard").rglob("events.out.tfevents.*")}:
        accumulator = EventAccumulator(str(events)).Reload()
        if "train/lr_g" in accumulator.Tags()["scalars"]:
            logged.update({event.step: event.value for event in accumulator.Scalars("train/lr_g")})
    # Epoch 0 throughout: no decay yet, so the LR is the base LR of whichever process ran the step.
    assert logged == pytest.approx({1: 2e-4, 2: 2e-4, 3: 2e-4, 4: 5e-5, 5: 5e-5})


def test_wandb_holds_every_validation_row_once_after_a_kill_between_validation_and_checkpoint(s2_run):
    """SIGKILL loses what W&B had buffered (its offline file can stay empty); the resumed run starts
    after that validation, from the previous checkpoint, so it logs those rows again itself."""
    from ..wandb_offline import history

    run = s2_run("wandb_kill", "train.epochs=1", "tracking.wandb=true", "validation.every_n_steps=2",
                 "validation.every_n_epochs=null", "checkpoint.every_n_steps=3",
                 "checkpoint.every_n_epochs=null", "checkpoint.save_on_best=false", "tracking.num_samples=0")
    process = run.start()
    run.wait_for_log("step 4 epoch", process)  # validated at 2 and 4, checkpoint at 3, none at 4 yet
    run.kill(process)
    run.run("--resume", "auto")
    rows = [(row["_step"], row["val/mel_loss"])
            for path in (run.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
            for row in history(path) if "val/mel_loss" in row]
    in_log = dict(_val_losses(run.log))  # the resumed run's values win for steps validated twice
    assert sorted(step for step, _ in rows) == sorted(in_log) == [2, 4, 6, 8, 10]
    for step, value in rows:
        assert value == pytest.approx(in_log[step], abs=5e-6)


@pytest.mark.multiprocess
def test_two_process_run_trains_validates_checkpoints_and_resumes_with_one(s2_run):
    # The 36 training utterances form 11 global batches of up to 4 per epoch (demo buckets). Two
    # processes: the odd batch is re-dealt into two, 12 batches = 6 steps per epoch.
    run = s2_run("two_procs", "train.epochs=3", "checkpoint.every_n_steps=2", "checkpoint.keep_last=10",
                 "train.max_steps=7")
    run.run(processes=2, timeout=900)
    assert "2 process(es) on cpu" in run.log
    saved = verify_checkpoint(run.checkpoints()[-1])
    assert saved.manifest["world_size"] == 2 and saved.step == 7 and saved.epoch == 1
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(saved.manifest["files"])
    assert [step for step, _ in _val_losses(run.log)] == [6]

    run.overrides.remove("train.max_steps=7")
    run.run("--resume", "auto")
    assert run.log.count("1 process(es) on cpu") == 1
    assert "resume: train.max_steps changed from 7 to None" in run.log
    assert "resume: number of processes 2 -> 1" in run.log
    final = verify_checkpoint(run.checkpoints()[-1])
    assert final.manifest["world_size"] == 1 and final.epoch == 3
    # Step 7 consumed 2 of epoch 2's global batches; one process finishes the other 9 of its 11,
    # neither skipping nor repeating any, then runs epoch 3's 11.
    assert final.step == 7 + 9 + 11
    assert [step for step, _ in _val_losses(run.log)] == [6, 16, 27]


def test_a_v2_model_trains_on_a_dataset_with_speaker_vectors_and_exports_a_plain_v2_file(s2_run):
    """The demo config is v2Pro; the same recipe trains v2 (no speaker-verification input: the dataset's
    vectors are ignored) and exports the v2 layout into SoVITS_weights_v2/."""
    run = s2_run("v2", "model.version=v2", "train.max_steps=3", "validation.every_n_steps=3",
                 "validation.every_n_epochs=null")
    run.export_folder = "SoVITS_weights_v2"
    run.run()
    assert "val/mel_loss" in run.log
    [export] = run.exports.glob("demo_e0_s3.pth")
    assert export.read_bytes()[:2] == b"PK"
    weights = load_sovits_export_the_official_way(export, info="0epoch_3iteration")
    assert not any(k.startswith(("sv_emb.", "ge_to512.", "prelu.")) for k in weights)
