"""The S2 recipe under DeepSpeed ZeRO-2 (one engine per model, two Accelerators), single process on
the CPU (`DS_ACCELERATOR=cpu`; DeepSpeed runs only one process on a CPU through Accelerate): it trains,
saves DeepSpeed checkpoints (the discriminator's in `discriminator/`), resumes to exactly the weights of
an uninterrupted run, and exports a generator file that loads the GPT-SoVITS way."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest
import torch

from .conftest import REPO, S2Run, assert_same_weights

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is an optional extra (pip install 'gsv_accel[deepspeed]')")

ZERO2 = REPO / "recipes" / "accelerate" / "deepspeed_zero2.yaml"
SETTINGS = ("checkpoint.every_n_steps=3",)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DeepSpeedS2Run(S2Run):
    """`accelerate launch --config_file deepspeed_zero2.yaml --num_processes 1` on the CPU."""

    def command(self, *extra: str, processes: int = 1) -> list[str]:
        assert processes == 1, "DeepSpeed on a CPU runs one process only"
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO2),
                    "--num_processes", "1", "--main_process_port", str(_free_port()), str(self.recipe)]
        return [*launcher, "--config", str(self.config), *self.overrides, *extra]

    def run(self, *extra: str, **kwargs):
        return super().run(*extra, env={"DS_ACCELERATOR": "cpu", **kwargs.pop("env", {})}, **kwargs)

    def final_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        from gsv_accel.deepspeed_support import consolidated_state_dict

        latest = self.checkpoints()[-1]
        return {"generator": consolidated_state_dict(latest),
                "discriminator": consolidated_state_dict(latest / "discriminator")}


def test_extra_accelerators_save_into_subfolders_listed_in_the_manifest(tmp_path: Path) -> None:
    """The hook the DeepSpeed path uses (no DeepSpeed needed): a second Accelerator's state goes into a
    subfolder of the same checkpoint, before the manifest, so it is verified like the rest."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from gsv_accel.checkpoint import CheckpointManager, verify_checkpoint

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        main, other = Accelerator(cpu=True), Accelerator(cpu=True)
        main.prepare(torch.nn.Linear(2, 2))
        other.prepare(torch.nn.Linear(2, 1))
        path = CheckpointManager(tmp_path).save(main, step=1, epoch=0, extra_states={"discriminator": other})
        files = verify_checkpoint(path).manifest["files"]
        assert "model.safetensors" in files and "discriminator/model.safetensors" in files
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


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

    # The export loads as GPT-SoVITS inference does: torch.load, config as attributes, only enc_q missing.
    from gsv_accel.models.sovits import SynthesizerTrn
    from gsv_accel.models.sovits.config import SoVITSConfig

    export = resumed.run_dir / "exports" / "demo_e0_s6.pth"
    assert export.is_file(), sorted(p.name for p in (resumed.run_dir / "exports").iterdir())
    raw = torch.load(export, map_location="cpu", weights_only=False)
    assert set(raw) == {"weight", "config", "info"} and raw["info"] == "0epoch_6iteration"
    model_cfg = dict(raw["config"]["model"])
    model_cfg["spec_channels"] = raw["config"]["data"]["filter_length"] // 2 + 1
    model_cfg["segment_size"] = raw["config"]["train"]["segment_size"] // raw["config"]["data"]["hop_length"]
    generator = SynthesizerTrn(SoVITSConfig.from_dict(model_cfg))
    missing, unexpected = generator.load_state_dict(raw["weight"], strict=False)
    assert not unexpected and missing and all(key.startswith("enc_q.") for key in missing)
    for key, tensor in raw["weight"].items():
        torch.testing.assert_close(tensor.float(), final["generator"][key].float(), atol=1e-2, rtol=1e-2)
