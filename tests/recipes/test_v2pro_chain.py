"""v2Pro (the WebUI's default version) end to end, as a user runs it: a `.list` with broken entries,
`prepare --sv`, SoVITS v2Pro training that is killed and resumed exactly, its `05` export, semantic
codes from that export, GPT training, exports in the WebUI's v2Pro folders. Also the refusals that
keep v2 and v2Pro data, configs and checkpoints apart."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gsv_accel.data.dataset import META_FILE, load_prepared
from gsv_accel.data.prepare import prepare
from gsv_accel.formats import load_gsv_file
from gsv_accel.models.sv import SpeakerEncoder

from .conftest import DEMO_SV, REPO, S1Run, S2Run, assert_same_weights, load_sovits_export_the_official_way

DEMO = REPO / "demo"


@pytest.fixture(scope="module")
def broken_list(tmp_path_factory) -> Path:
    """Twelve demo utterances plus a missing file and a corrupt one."""
    folder = tmp_path_factory.mktemp("v2pro_list")
    lines = (DEMO / "data" / "demo.list").read_text(encoding="utf-8").splitlines()
    keep = [line.replace("wavs/", str(DEMO / "data" / "wavs") + "/", 1) for line in lines[:6] + lines[-6:]]
    (folder / "corrupt.flac").write_bytes(b"fLaC not really")
    keep += [f"{folder}/missing.flac|spk|en|Nobody recorded this.",
             f"{folder}/corrupt.flac|spk|en|Broken file."]
    path = folder / "voice.list"
    path.write_text("\n".join(keep) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
def test_v2pro_from_a_list_to_gpt_exports(broken_list, tmp_path):
    dataset = tmp_path / "dataset"
    result = prepare(broken_list, dataset, DEMO / "tiny_hubert", sv_model=DEMO_SV, val_fraction=0.2)
    assert sorted(reject.path.rsplit("/", 1)[-1] for reject in result.rejected) == ["corrupt.flac",
                                                                                  "missing.flac"]
    rejected = (dataset / "rejected.tsv").read_text(encoding="utf-8")
    assert "missing.flac" in rejected and "corrupt.flac" in rejected
    # The stored vectors are the speaker model's embeddings of the stored (normalised) audio.
    encoder = SpeakerEncoder.from_pretrained(DEMO_SV)
    view = load_prepared(dataset).view("train", ("wav", "sv_emb"))
    item = view[0]
    assert item["sv_emb"].shape == (encoder.embedding_dim,)
    expected = encoder.embed_32k([item["wav"].float().flatten()])[0]
    assert float((item["sv_emb"] - expected).abs().max()) < 1e-5

    # SoVITS v2Pro: killed after its first checkpoint, resumed, equal to an uninterrupted run.
    settings = ("train.epochs=3", "checkpoint.every_n_steps=2", "validation.every_n_epochs=1")
    straight = S2Run(tmp_path / "s2_straight", dataset, *settings)
    straight.run()
    killed = S2Run(tmp_path / "s2", dataset, *settings)
    process = killed.start()
    killed.wait_for_log("saved checkpoint step_00000002", process)
    assert killed.kill(process) == -signal.SIGKILL
    killed.run("--resume", "auto")
    assert_same_weights(killed.final_weights(), straight.final_weights())
    assert "val/mel_loss" in killed.log
    [best] = killed.exports.glob("demo_best_e*_s*.pth")
    assert best.read_bytes()[:2] == b"05"
    assert load_gsv_file(best).version == "v2Pro"
    step = int(best.stem.rsplit("_s", 1)[1])
    epoch = int(best.stem.split("_e")[1].split("_")[0])
    load_sovits_export_the_official_way(best, info=f"{epoch}epoch_{step}iteration")

    # Semantic codes from the v2Pro export, then the GPT, exported where the WebUI lists v2Pro GPTs.
    dataset_s1 = tmp_path / "dataset_s1"
    prepare(broken_list, dataset_s1, DEMO / "tiny_hubert", s2_pretrained=best, bert_dir=DEMO / "tiny_bert",
            val_fraction=0.2)
    meta = json.loads((dataset_s1 / META_FILE).read_text(encoding="utf-8"))
    assert meta["semantic"]["s2_version"] == "v2Pro"
    gpt = S1Run(tmp_path / "s1", dataset_s1, "train.epochs=2", "data.batch_size=2")
    gpt.run()
    assert gpt.exports == tmp_path / "s1" / "exports" / "GPT_weights_v2Pro"
    assert sorted(p.name for p in gpt.exports.glob("*.ckpt"))


def test_a_v2_dataset_is_refused_by_a_v2pro_config_naming_prepare_sv(demo_dataset, tmp_path):
    v2_dataset = tmp_path / "v2_dataset"
    shutil.copytree(demo_dataset, v2_dataset)
    meta_path = v2_dataset / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["sv"] = None  # as `prepare` writes it without --sv
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    run = S2Run(tmp_path / "run", v2_dataset)
    result = run.run(expect=2)
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("s2: error:") and "prepare --sv" in line
    assert not run.run_dir.exists()


def test_a_v2pro_checkpoint_is_not_resumed_with_a_v2_config(s2_run):
    run = s2_run("pro", "train.max_steps=1")
    run.run()
    before = {p.name: p.stat().st_mtime_ns for p in run.checkpoints()}
    result = run.run("--resume", "auto", "model.version=v2", "train.max_steps=2", expect=2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert "model.version (saved 'v2Pro', now 'v2')" in line
    assert {p.name: p.stat().st_mtime_ns for p in run.checkpoints()} == before
    weights = load_file(str(run.checkpoints()[-1] / "model.safetensors"))
    assert "sv_emb.weight" in weights
