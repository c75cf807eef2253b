"""The v3/v4 (flow-matching) recipe as a user runs it: a v3 LoRA run killed and resumed exactly, its
LoRA export merged into the base model the official way; a v4 full fine-tuning run that stops early
on a plateau; both exports read by `gsv-accel inspect`."""

from __future__ import annotations

import io
import json
import signal

import pytest
import torch

from gsv_accel.cli import main as cli_main
from gsv_accel.models.sovits.config import SoVITSV3Config
from gsv_accel.models.sovits.generator_v3 import SynthesizerTrnV3
from gsv_accel.models.sovits.lora import merge_lora_export

from .conftest import REPO, CFMRun, assert_same_weights

SETTINGS = ("train.epochs=2", "checkpoint.every_n_steps=3", "checkpoint.keep_last=10",
            "validation.every_n_epochs=1", "export.merged_full=true")


def _load_export(path):
    """As official inference (`process_ckpt.load_sovits_new`): the 2-byte header back to `PK`."""
    data = path.read_bytes()
    return data[:2], torch.load(io.BytesIO(b"PK" + data[2:]), map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_v3_lora_resumes_exactly_and_its_export_merges_into_the_base_the_official_way(tmp_path, demo_dataset,
                                                                                      capsys):
    straight = CFMRun(tmp_path / "straight", demo_dataset, *SETTINGS)
    straight.run()
    killed = CFMRun(tmp_path / "killed", demo_dataset, *SETTINGS)
    process = killed.start()
    killed.wait_for_log("saved checkpoint step_00000003", process)
    assert killed.kill(process) == -signal.SIGKILL
    killed.run("--resume", "auto")
    assert_same_weights(killed.final_weights(), straight.final_weights())
    for metric in ("val/cfm_loss", "val/mel_loss"):
        assert metric in killed.log

    [lora] = killed.exports.glob("demo_e*_s*_l4.pth")
    header, raw = _load_export(lora)
    assert header == b"03" and raw["lora_rank"] == 4 and raw["config"]["model"]["version"] == "v3"
    assert all(v.dtype == torch.float16 for v in raw["weight"].values() if v.is_floating_point())
    assert any(".lora_A." in k for k in raw["weight"])
    assert not any(k.startswith("enc_p.") for k in raw["weight"])
    # Official inference: the base model (here the run's own random initial weights, kept frozen in
    # the checkpoint) with the LoRA export loaded on top and merged equals our merged full export.
    checkpoint = killed.final_weights()["model"]
    base = {k.replace("cfm.base_model.model.", "cfm.").replace(".base_layer.", "."): v
            for k, v in checkpoint.items() if ".lora_" not in k}
    config = SoVITSV3Config.from_dict(raw["config"]["model"])
    model = SynthesizerTrnV3(config)
    model.load_state_dict(base)
    merged = merge_lora_export(model, raw["weight"], raw["lora_rank"]).state_dict()
    [full] = killed.exports.glob(lora.name.replace("_l4.pth", ".pth").replace("demo_", "demo_merged_"))
    header, ours = _load_export(full)
    assert header == b"PK" and ours["weight"].keys() == merged.keys()
    for key, value in merged.items():
        assert torch.allclose(ours["weight"][key].float(), value.float(), atol=2e-3, rtol=1e-3), key

    assert cli_main(["inspect", str(lora), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["version"] == "v3" and summary["lora_rank"] == 4


@pytest.mark.slow
def test_v4_full_fine_tuning_stops_early_on_a_plateau_and_exports_the_best(tmp_path, demo_dataset, capsys):
    # min_delta far above any change: only the first evaluation is an improvement.
    run = CFMRun(tmp_path / "v4", demo_dataset, "model.version=v4", "train.lora_rank=null", "train.epochs=20",
                 "plateau.min_delta=100", "plateau.patience=2", "plateau.max_reductions=0")
    run.export_folder = "SoVITS_weights_v4"
    run.run()
    assert "training stopped: early_stop" in run.log
    [best] = run.exports.glob("demo_best_e*_s*.pth")
    assert best.name == "demo_best_e1_s11.pth"  # the first epoch's validation (11 steps per epoch)
    header, raw = _load_export(best)
    assert header == b"PK" and raw["config"]["model"]["version"] == "v4"
    assert not any(".lora_" in k or "base_model" in k for k in raw["weight"])
    assert cli_main(["inspect", str(best), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_tensors"] == len(raw["weight"])


def test_semantic_codes_from_a_v3_model_pair_the_gpt_with_v3(tmp_path):
    """`prepare --s2-pretrained` takes a full v3/v4 file (same SSL projection and quantizer as v2) and
    records the version, which decides the GPT export folder; a LoRA export (no quantizer) is refused."""
    from gsv_accel.cfm_export import export_cfm_full
    from gsv_accel.config import load_config
    from gsv_accel.data.dataset import META_FILE
    from gsv_accel.data.listfile import PrepareError
    from gsv_accel.data.prepare import prepare

    from .conftest import REPO, load_recipe_module

    cfg = load_config(load_recipe_module("s2_cfm").CFMConfig, CFMRun.config)
    torch.manual_seed(0)
    model = SynthesizerTrnV3(cfg.model)
    for name, buffer in model.quantizer.named_buffers():
        if name.endswith("inited"):
            buffer.fill_(1)
    export = export_cfm_full(model.state_dict(), cfg.official_dict(), tmp_path / "tiny_v3.pth", "demo", "v3")
    lines = (REPO / "demo" / "data" / "demo.list").read_text(encoding="utf-8").splitlines()[:6]
    (tmp_path / "wavs").symlink_to(REPO / "demo" / "data" / "wavs")
    (tmp_path / "six.list").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(tmp_path / "six.list", tmp_path / "dataset", REPO / "demo" / "tiny_hubert",
            s2_pretrained=export, val_fraction=0.2)
    meta = json.loads((tmp_path / "dataset" / META_FILE).read_text(encoding="utf-8"))
    assert meta["semantic"]["s2_version"] == "v3"
    assert meta["semantic"]["codebook_size"] == cfg.model.codebook_size
    run = CFMRun(tmp_path / "run", tmp_path / "dataset", "train.max_steps=1")
    run.run()
    [lora] = run.exports.glob("*_l4.pth")
    with pytest.raises(PrepareError, match="LoRA export"):
        prepare(tmp_path / "six.list", tmp_path / "dataset2", REPO / "demo" / "tiny_hubert",
                s2_pretrained=lora)


@pytest.mark.slow
def test_v4_lora_with_the_vocoder_logs_speaker_similarity_and_saves_decodable_audio(tmp_path, demo_dataset):
    import soundfile

    run = CFMRun(tmp_path / "v4_audio", demo_dataset, "model.version=v4", "train.epochs=1",
                 f"sampling.vocoder={REPO / 'demo' / 'tiny_vocoder_v4' / 'vocoder.pth'}",
                 f"validation.speaker_model={REPO / 'demo' / 'tiny_sv' / 'eres2netv2_tiny.safetensors'}")
    run.export_folder = "SoVITS_weights_v4"
    run.run()
    assert "val/speaker_sim" in run.log and "v4 vocoder" in run.log
    [folder] = sorted((run.run_dir / "samples").glob("step_*"))
    wavs = sorted(folder.rglob("*.wav"))
    assert wavs, f"no WAV in {folder}"
    for wav in wavs:
        audio, rate = soundfile.read(wav)
        assert rate == 32000 and audio.ndim == 1 and len(audio) > 0
