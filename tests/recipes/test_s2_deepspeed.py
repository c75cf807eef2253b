"""The S2 recipe under DeepSpeed ZeRO-2 (and ZeRO-1; one engine per model, two Accelerators), one
process on the CPU (`DS_ACCELERATOR=cpu`; DeepSpeed runs only one process on a CPU through Accelerate):
it trains, saves DeepSpeed checkpoints (the discriminator's in `discriminator/`), resumes to exactly the
weights of an uninterrupted run (also with bf16 autocast and gradient accumulation, ZeRO-1 too, and
after a kill inside a save), equals the plain recipe in fp32, exports a generator file that loads the
GPT-SoVITS way, restores the best weights at an early stop, skips non-finite steps, and refuses fp16,
S1, and checkpoints of the other kind of launcher."""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
from pathlib import Path

import pytest
import torch

from gsv_accel.lifecycle import EXIT_CODE_NONFINITE, EXIT_CODE_USER_ERROR

from .conftest import (
    NAN_STEP,
    REPO,
    S1_DEMO_CONFIG,
    S1_RECIPE,
    S2Run,
    assert_same_weights,
    load_sovits_export_the_official_way,
    run_in_two_legs,
)

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is an optional extra (pip install 'gsv_accel[deepspeed]')")

ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate"
SETTINGS = ("checkpoint.every_n_steps=3",)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DeepSpeedS2Run(S2Run):
    """`accelerate launch --config_file deepspeed_zero<stage>.yaml --num_processes 1` on the CPU."""

    def __init__(self, run_dir: Path, dataset: Path, *overrides: str, mixed_precision: str = "no",
                 stage: int = 2) -> None:
        super().__init__(run_dir, dataset, *overrides)
        self.mixed_precision = mixed_precision
        self.accelerate_config = ACCELERATE_CONFIGS / f"deepspeed_zero{stage}.yaml"

    def command(self, *extra: str, processes: int = 1) -> list[str]:
        assert processes == 1, "DeepSpeed on a CPU runs one process only"
        launcher = [sys.executable, "-m", "accelerate.commands.launch",
                    "--config_file", str(self.accelerate_config), "--num_processes", "1",
                    "--mixed_precision", self.mixed_precision, "--main_process_port", str(_free_port()),
                    str(self.recipe)]
        return [*launcher, "--config", str(self.config), *self.overrides, *extra]

    def run(self, *extra: str, **kwargs):
        return super().run(*extra, env={"DS_ACCELERATOR": "cpu", **kwargs.pop("env", {})}, **kwargs)

    def final_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        from gsv_accel.deepspeed_support import consolidated_state_dict

        latest = self.checkpoints()[-1]
        return {"generator": consolidated_state_dict(latest),
                "discriminator": consolidated_state_dict(latest / "discriminator")}


def test_extra_accelerators_save_into_subfolders_listed_in_the_manifest(tmp_path: Path,
                                                                        fresh_accelerate_state) -> None:
    """The hook the DeepSpeed path uses (no DeepSpeed needed): a second Accelerator's state goes into a
    subfolder of the same checkpoint, before the manifest, so it is verified like the rest."""
    from accelerate import Accelerator

    from gsv_accel.checkpoint import CheckpointManager, verify_checkpoint

    main, other = Accelerator(cpu=True), Accelerator(cpu=True)
    main.prepare(torch.nn.Linear(2, 2))
    other.prepare(torch.nn.Linear(2, 1))
    path = CheckpointManager(tmp_path).save(main, step=1, epoch=0, extra_states={"discriminator": other})
    files = verify_checkpoint(path).manifest["files"]
    assert "model.safetensors" in files and "discriminator/model.safetensors" in files


@pytest.mark.slow
@needs_deepspeed
def test_zero2_cpu_trains_saves_resumes_exactly_and_exports(tmp_path: Path, demo_dataset: Path) -> None:
    uninterrupted = DeepSpeedS2Run(tmp_path / "uninterrupted", demo_dataset, *SETTINGS, "train.max_steps=6")
    uninterrupted.run()
    log = uninterrupted.log
    assert "saved checkpoint step_00000003" in log and "saved checkpoint step_00000006" in log

    # DeepSpeed checkpoints: one engine per model, the discriminator's in a subfolder, all in the manifest.
    step3 = uninterrupted.checkpoints()[0]
    assert (step3 / "pytorch_model" / "mp_rank_00_model_states.pt").is_file()
    assert (step3 / "discriminator" / "pytorch_model" / "mp_rank_00_model_states.pt").is_file()
    assert not (step3 / "model.safetensors").exists()
    from gsv_accel.checkpoint import verify_checkpoint

    manifest_files = verify_checkpoint(step3).manifest["files"]
    assert any(name.startswith("discriminator/pytorch_model/") for name in manifest_files)

    # Interrupted after step 3, resumed: the next steps reproduce the uninterrupted run's weights exactly.
    resumed = DeepSpeedS2Run(tmp_path / "resumed", demo_dataset, *SETTINGS, "train.max_steps=3")
    resumed.run()
    first_leg = resumed.final_weights()
    resumed.overrides[-1] = "train.max_steps=6"
    resumed.run("--resume", "auto")
    assert f"resumed from {resumed.run_dir / 'checkpoints' / 'step_00000003'}" in resumed.log
    final = resumed.final_weights()
    assert_same_weights(final, uninterrupted.final_weights())
    assert not all(torch.equal(t, first_leg["generator"][k]) for k, t in final["generator"].items())

    # The export loads as GPT-SoVITS inference does and holds the consolidated weights (in fp16).
    export = resumed.exports / "demo_e0_s6.pth"
    assert export.is_file(), sorted(p.name for p in (resumed.exports).iterdir())
    weights = load_sovits_export_the_official_way(export, info="0epoch_6iteration")
    for key, tensor in weights.items():
        torch.testing.assert_close(tensor.float(), final["generator"][key].float(), atol=1e-2, rtol=1e-2)


@pytest.mark.slow
@needs_deepspeed
def test_zero2_fp32_equals_the_plain_recipe_and_resumes_only_under_deepspeed(tmp_path: Path,
                                                                              demo_dataset: Path) -> None:
    """One process, fp32: ZeRO-2's partitioned fp32 optimizer must compute what the plain AdamW step
    does (the for-loop kernel), so 13 steps (across the first epoch's end (11 steps) and its LR decay)
    give identical weights.
    Resuming either run under the other kind of launcher is refused with a message."""
    # The plain run with the for-loop AdamW kernel DeepSpeed's partitions use (not the fused one).
    settings = ("train.max_steps=13", "checkpoint.every_n_steps=13", "train.fused_adamw=false")
    plain = S2Run(tmp_path / "plain", demo_dataset, *settings)
    plain.run()
    zero2 = DeepSpeedS2Run(tmp_path / "zero2", demo_dataset, *settings)
    zero2.run()
    assert_same_weights(zero2.final_weights(), plain.final_weights())

    # A checkpoint resumes only under the kind of launcher that wrote it, with a message saying so.
    longer = ("train.max_steps=14", "checkpoint.every_n_steps=13")
    before = {run: [p.name for p in run.checkpoints()] for run in (plain, zero2)}
    result = S2Run(zero2.run_dir, demo_dataset, *longer).run("--resume", "auto", expect=EXIT_CODE_USER_ERROR)
    assert "was written under DeepSpeed and this run is not" in result.stderr, result.stderr[-3000:]
    result = DeepSpeedS2Run(plain.run_dir, demo_dataset, *longer).run("--resume", "auto", expect=1)
    assert f"failed (exitcode: {EXIT_CODE_USER_ERROR})" in result.stderr
    assert "was written without DeepSpeed and this run uses it" in result.stderr
    assert {run: [p.name for p in run.checkpoints()] for run in (plain, zero2)} == before  # nothing written


@pytest.mark.slow
@needs_deepspeed
def test_zero2_killed_inside_a_save_resumes_from_the_previous_complete_checkpoint(tmp_path: Path,
                                                                                 demo_dataset: Path) -> None:
    """SIGKILL after DeepSpeed wrote checkpoint 6's files, before its manifest: the staging folder is
    left behind and ignored, the resume starts from step 3, and the end matches an uninterrupted run."""
    settings = ("checkpoint.every_n_steps=3", "train.max_steps=9")
    uninterrupted = DeepSpeedS2Run(tmp_path / "uninterrupted", demo_dataset, *settings)
    uninterrupted.run()
    run = DeepSpeedS2Run(tmp_path / "killed", demo_dataset, *settings)
    result = run.run(expect=1, env={"GSV_ACCEL_FAULT": "kill_in_save:6"})
    assert "failed (exitcode: -9)" in result.stderr, result.stderr[-3000:]
    staged = sorted(p.name for p in (run.run_dir / "checkpoints").iterdir())
    assert staged == [".incomplete-step_00000006", "step_00000003"]
    run.run("--resume", "auto")
    assert f"resumed from {run.run_dir / 'checkpoints' / 'step_00000003'}" in run.log
    assert_same_weights(run.final_weights(), uninterrupted.final_weights())


def _engine_state(folder: Path) -> dict:
    """What DeepSpeed recorded with an engine's checkpoint (our own test file: a full unpickle is fine)."""
    return torch.load(folder / "pytorch_model" / "mp_rank_00_model_states.pt", map_location="cpu",
                      weights_only=False)


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_bf16_as_autocast_with_accumulation_resumes_exactly(tmp_path: Path, demo_dataset: Path,
                                                                 stage: int) -> None:
    settings = ("checkpoint.every_n_steps=2", "train.grad_accum=2")
    uninterrupted = DeepSpeedS2Run(tmp_path / "uninterrupted", demo_dataset, *settings, "train.max_steps=4",
                                   mixed_precision="bf16", stage=stage)
    uninterrupted.run()
    resumed = DeepSpeedS2Run(tmp_path / "resumed", demo_dataset, *settings, mixed_precision="bf16",
                             stage=stage)
    run_in_two_legs(resumed, stop_at=2, end=4)
    assert_same_weights(resumed.final_weights(), uninterrupted.final_weights())
    assert re.search(r"speed: [0-9.]+ training steps/s over 2 steps of this process", resumed.log)

    # What the engines ran: ZeRO `stage`, bf16 through torch.autocast over fp32 weights (not DeepSpeed's
    # bf16 section, which would cast the model), 4 optimizer steps of 2 micro-batches of 4 utterances.
    latest = uninterrupted.checkpoints()[-1]
    for folder in (latest, latest / "discriminator"):
        state = _engine_state(folder)
        config = state["ds_config"]
        assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
        assert not config["bf16"]["enabled"] and config["gradient_accumulation_steps"] == 2
        assert config["zero_optimization"]["stage"] == stage
        assert (state["global_steps"], state["global_samples"], state["skipped_steps"]) == (4, 32, 0)
        assert {t.dtype for t in state["module"].values() if t.is_floating_point()} == {torch.float32}


@pytest.mark.slow
@needs_deepspeed
def test_zero2_skips_steps_with_nonfinite_gradients(tmp_path: Path, nan_dataset: Path) -> None:
    """NaN features from step 7 on: DeepSpeed drops the step (the engine sees a non-finite gradient
    norm), the recipe counts it and stops after 3. Only the quantizer's EMA codebook (a buffer updated
    in the forward pass) turns NaN; no parameter does, so the optimizer step really was skipped."""
    run = DeepSpeedS2Run(tmp_path / "nan", nan_dataset, "train.epochs=1", "checkpoint.every_n_steps=2",
                         "checkpoint.keep_last=10", "train.max_nonfinite_steps=3", "train.on_nonfinite=stop")
    result = run.run(expect=1)  # the launcher's own code; the recipe's is in its report
    assert f"failed (exitcode: {EXIT_CODE_NONFINITE})" in result.stderr, result.stderr[-3000:]
    log = run.log
    skipped = [int(s) for s in re.findall(r"step (\d+): non-finite loss or gradient, optimizer step skipped",
                                          log)]
    assert skipped == [NAN_STEP, NAN_STEP + 1, NAN_STEP + 2]
    assert (f"not saving a checkpoint at step {NAN_STEP + 2} (final (nonfinite)): non-finite values in "
            "quantizer.vq.layers.0._codebook.embed, quantizer.vq.layers.0._codebook.embed_avg;") in log
    assert [p.name for p in run.checkpoints()] == ["step_00000002", "step_00000004", "step_00000006"]
    for folder in (run.checkpoints()[-1], run.checkpoints()[-1] / "discriminator"):
        assert _engine_state(folder)["skipped_steps"] == 0


@needs_deepspeed
def test_fp16_under_deepspeed_is_refused_with_the_alternatives(tmp_path: Path, demo_dataset: Path) -> None:
    run = DeepSpeedS2Run(tmp_path / "fp16", demo_dataset, mixed_precision="fp16")
    result = run.run(expect=1)
    assert f"failed (exitcode: {EXIT_CODE_USER_ERROR})" in result.stderr, result.stderr[-3000:]
    assert "s2: error: fp16 under DeepSpeed is not supported" in result.stderr
    assert "Use bf16 with DeepSpeed" in result.stderr
    assert not (run.run_dir / "checkpoints").exists() or not run.checkpoints()


@needs_deepspeed
def test_s1_refuses_deepspeed_and_names_the_launchers_to_use(tmp_path: Path, demo_dataset: Path) -> None:
    class DeepSpeedS1Run(DeepSpeedS2Run):
        recipe, config = S1_RECIPE, S1_DEMO_CONFIG

    result = DeepSpeedS1Run(tmp_path / "s1", demo_dataset).run(expect=1)
    assert f"failed (exitcode: {EXIT_CODE_USER_ERROR})" in result.stderr, result.stderr[-3000:]
    assert "s1: error: the S1 recipe does not run under DeepSpeed" in result.stderr
    assert "single_gpu.yaml or multi_gpu.yaml" in result.stderr


@pytest.mark.slow
@needs_deepspeed
def test_zero2_early_stop_restores_and_exports_the_best_weights(tmp_path: Path, demo_dataset: Path) -> None:
    """The plateau controller under DeepSpeed: the best weights are loaded back into both engines
    (module and ZeRO's fp32 master copy, which is what the final checkpoint's consolidated weights
    come from) and exported."""
    from gsv_accel.deepspeed_support import consolidated_state_dict
    from gsv_accel.formats import load_gsv_file

    run = DeepSpeedS2Run(tmp_path / "early_stop", demo_dataset, "train.epochs=30",
                         "validation.every_n_steps=1", "validation.every_n_epochs=null",
                         "checkpoint.every_n_epochs=null", "plateau.max_reductions=0", "plateau.patience=1")
    run.run()
    evaluations = [(int(step), float(value)) for step, value in
                   re.findall(r"step (\d+) epoch \d+: val/mel_loss = ([0-9.]+)", run.log)]
    assert "training stopped: early_stop" in run.log and evaluations[-1][0] < 30 * 11
    best_step = min(evaluations, key=lambda e: e[1])[0]
    assert best_step < evaluations[-1][0], "the last evaluation should not be the best one here"
    best = run.run_dir / "checkpoints" / f"step_{best_step:08d}"
    best_weights = {"generator": consolidated_state_dict(best),
                    "discriminator": consolidated_state_dict(best / "discriminator")}
    assert_same_weights(run.final_weights(), best_weights)
    [best_export] = (run.exports).glob(f"demo_best_e*_s{best_step}.pth")
    for key, tensor in load_gsv_file(best_export).state_dict.items():
        assert torch.equal(tensor, best_weights["generator"][key].half()), key
