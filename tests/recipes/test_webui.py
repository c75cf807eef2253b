"""The WebUI drop-in: a fake GPT-SoVITS folder (logs/<exp> in the official layout, written from the demo
dataset; TEMP/tmp_s2.json and tmp_s1.yaml with the keys and values the WebUI writes for v2Pro) trained
through `gsv-accel train-s2/train-s1 --webui-config` to exports in SoVITS_weights_v2Pro/ and
GPT_weights_v2Pro/ named as the WebUI lists them; the shim leaves the tree byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import torch
import yaml

from gsv_accel import webui
from gsv_accel.formats import load_gsv_file

from .conftest import REPO, recipe_env

EXP = "myvoice"
BERT_DIM = 32  # the s1 demo model's


def write_official_exp(exp: Path, dataset: Path) -> None:
    """The files the official preparation steps (1A-1C and the v2Pro speaker step) write."""
    rng = np.random.default_rng(0)
    for sub in ("3-bert", "4-cnhubert", "5-wav32k", "7-sv_cn"):
        (exp / sub).mkdir(parents=True, exist_ok=True)
    texts, semantic = [], ["item_name\tsemantic_audio"]
    for split in datasets.load_from_disk(str(dataset)).values():
        for row in split:
            name = row["name"]
            word2ph = str(row["word2ph"]) if row["lang"] == "zh" else "None"
            texts.append(f"{name}\t{' '.join(row['phones'])}\t{word2ph}\t{row['text']}")
            soundfile.write(exp / "5-wav32k" / name, np.asarray(row["wav"], np.int16), 32000,
                            subtype="PCM_16")
            torch.save(torch.tensor(row["ssl"], dtype=torch.float32).view(1, 64, -1),
                       exp / "4-cnhubert" / f"{name}.pt")
            torch.save(torch.tensor(row["sv_emb"], dtype=torch.float32).view(1, -1),
                       exp / "7-sv_cn" / f"{name}.pt")
            if row["lang"] == "zh":
                torch.save(torch.randn(BERT_DIM, len(row["phone_ids"])).half(), exp / "3-bert" / f"{name}.pt")
            codes = rng.integers(0, 64, row["ssl_frames"] // 2).tolist()
            semantic.append(f"{name}\t{' '.join(map(str, codes))}")
    (exp / "2-name2text.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (exp / "6-name2semantic.tsv").write_text("\n".join(semantic), encoding="utf-8")


def webui_configs(root: Path) -> tuple[Path, Path]:
    """TEMP/tmp_s2.json and tmp_s1.yaml as the WebUI's buttons write them for v2Pro (its defaults, with
    a small number of epochs and no pretrained files)."""
    s2 = {
        "train": {"log_interval": 100, "eval_interval": 500, "seed": 1234, "epochs": 2,
                  "learning_rate": 0.0001,
                  "betas": [0.8, 0.99], "eps": 1e-09, "batch_size": 4, "fp16_run": True,
                  "lr_decay": 0.999875,
                  "segment_size": 10240, "init_lr_ratio": 1, "warmup_epochs": 0, "c_mel": 45, "c_kl": 1.0,
                  "text_low_lr_rate": 0.4, "grad_ckpt": False, "pretrained_s2G": "",
                  "pretrained_s2D": "",
                  "if_save_latest": True, "if_save_every_weights": True, "save_every_epoch": 1,
                  "gpu_numbers": "0", "lora_rank": "32"},
        "data": {"max_wav_value": 32768.0, "sampling_rate": 32000, "filter_length": 2048,
                 "hop_length": 640,
                 "win_length": 2048, "n_mel_channels": 128, "mel_fmin": 0.0, "mel_fmax": None,
                 "add_blank": True, "n_speakers": 300, "cleaned_text": True, "exp_dir": f"logs/{EXP}"},
        "model": {"inter_channels": 192, "hidden_channels": 192, "p_dropout": 0.0,
                  "gin_channels": 1024,
                  "semantic_frame_rate": "25hz", "freeze_quantizer": True, "version": "v2Pro"},
        "s2_ckpt_dir": f"logs/{EXP}", "content_module": "cnhubert",
        "save_weight_dir": "SoVITS_weights_v2Pro", "name": EXP, "version": "v2Pro",
    }
    s1 = {
        "train": {"seed": 1234, "epochs": 2, "batch_size": 6, "save_every_n_epoch": 1,
                  "precision": "16-mixed",
                  "gradient_clip": 1.0, "if_save_every_weights": True, "if_save_latest": True,
                  "if_dpo": False,
                  "half_weights_save_dir": "GPT_weights_v2Pro", "exp_name": EXP},
        "optimizer": {"lr": 0.01, "lr_init": 1e-05, "lr_end": 0.0001, "warmup_steps": 2000,
                      "decay_steps": 40000},
        "data": {"max_eval_sample": 8, "max_sec": 54, "num_workers": 4, "pad_val": 1024},
        "model": {"vocab_size": 1025, "phoneme_vocab_size": 732, "embedding_dim": 512, "EOS": 1024},
        "inference": {"top_k": 15},
        "pretrained_s1": "",
        "train_semantic_path": f"logs/{EXP}/6-name2semantic.tsv",
        "train_phoneme_path": f"logs/{EXP}/2-name2text.txt",
        "output_dir": f"logs/{EXP}/logs_s1_v2Pro",
    }
    (root / "TEMP").mkdir(parents=True, exist_ok=True)
    (root / "TEMP" / "tmp_s2.json").write_text(json.dumps(s2), encoding="utf-8")
    (root / "TEMP" / "tmp_s1.yaml").write_text(yaml.dump(s1, default_flow_style=False), encoding="utf-8")
    return Path("TEMP/tmp_s2.json"), Path("TEMP/tmp_s1.yaml")


def tiny(config: str, sections: tuple[str, ...]) -> list[str]:
    """The demo config's model sizes as overrides (the real architectures take too long here)."""
    data = yaml.safe_load((REPO / "recipes" / "configs" / config).read_text(encoding="utf-8"))
    flat = webui.flatten({k: data[k] for k in sections})
    return [f"{key}={json.dumps(value)}" for key, value in flat.items()]


def gsv_accel(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**recipe_env(), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "gsv_accel.cli", *args], cwd=root, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    return result


QUIET = ["tracking.wandb=false", "tracking.tensorboard=false", "run.cpu_threads=1",
         "validation.speaker_model=null"]


@pytest.mark.slow
def test_both_stages_from_the_webui_configs(demo_dataset, tmp_path):
    root = tmp_path / "GPT-SoVITS"
    write_official_exp(root / "logs" / EXP, demo_dataset)
    s2_config, s1_config = webui_configs(root)

    # A log row every 5 steps (the WebUI's log_interval of 100 is more than this run's 22 steps).
    s2 = gsv_accel(root, "train-s2", "--webui-config", str(s2_config), *QUIET,
                   *tiny("s2_demo.yaml", ("model", "discriminator")), "train.learning_rate=0.0002",
                   "train.log_every_n_steps=5")
    assert "train.fp16_run = True: -> precision" in s2.stdout
    assert "model.inter_channels = 192: ignored" in s2.stdout
    exports = sorted(p.name for p in (root / "SoVITS_weights_v2Pro").iterdir())
    assert f"{EXP}_e2_s" in " ".join(exports) and all(n.endswith(".pth") for n in exports), exports
    for name in exports:
        assert load_gsv_file(root / "SoVITS_weights_v2Pro" / name).version == "v2Pro"
    assert (root / "logs" / EXP / "gsv_accel" / "run_s2_v2Pro" / "train.log").is_file()

    # A second click: the finished run says so and exits 0; the dataset is not imported again.
    again = gsv_accel(root, "train-s2", "--webui-config", str(s2_config), *QUIET,
                      *tiny("s2_demo.yaml", ("model", "discriminator")), "train.learning_rate=0.0002",
                      "train.log_every_n_steps=5")
    assert "not imported again" in again.stdout
    assert "is finished" in again.stdout + again.stderr

    s1 = gsv_accel(root, "train-s1", "--webui-config", str(s1_config), *QUIET[:3],
                   *tiny("s1_demo.yaml", ("model",)), "train.learning_rate=0.001", "train.warmup_steps=2",
                   # logs/<exp> holds the released models' 1024 codes (the import records that size).
                   "model.vocab_size=1025", "model.EOS=1024")
    assert "not imported again" in s1.stdout
    gpts = sorted(p.name for p in (root / "GPT_weights_v2Pro").iterdir())
    assert f"{EXP}-e2.ckpt" in gpts, gpts
    assert "train.if_dpo = False: -> train.dpo" in s1.stdout
    for out in (s2, s1):  # progress as the official trainers print it into the WebUI's console
        assert re.search(r"^Train Epoch: 1 \[\d+%\] step \d+/\d+ ", out.stdout, re.M), out.stdout[-2000:]
        assert "\n====> Epoch: 2\n" in out.stdout
    for stage, out in (("s2", s2), ("s1", s1)):  # the log of what the command did, for the test report
        print(f"--- train-{stage}\n{out.stdout[-2500:]}")


def tree_hashes(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_shim_installs_and_uninstalls_byte_identically(tmp_path):
    root = tmp_path / "GPT-SoVITS"
    (root / "GPT_SoVITS").mkdir(parents=True)
    (root / "webui.py").write_text("# the WebUI\n", encoding="utf-8")
    for name in ("s2_train.py", "s2_train_v3_lora.py", "s1_train.py", "inference_webui.py"):
        (root / "GPT_SoVITS" / name).write_bytes(f"# official {name}\r\nprint('x')\n".encode())
    os.chmod(root / "GPT_SoVITS" / "s1_train.py", 0o755)
    before = tree_hashes(root)

    webui.install_shim(root)
    shim = (root / "GPT_SoVITS" / "s2_train.py").read_text(encoding="utf-8")
    assert len(shim.splitlines()) == 2 and "train-s2" in shim
    assert "train-s1" in (root / "GPT_SoVITS" / "s1_train.py").read_text(encoding="utf-8")
    with pytest.raises(webui.WebUIConfigError, match="installed already"):
        webui.install_shim(root)
    webui.install_shim(root, uninstall=True)
    assert tree_hashes(root) == before
    with pytest.raises(webui.WebUIConfigError, match="not installed"):
        webui.install_shim(root, uninstall=True)

    # A shim changed after installing (e.g. a GPT-SoVITS update) is not overwritten.
    webui.install_shim(root)
    (root / "GPT_SoVITS" / "s1_train.py").write_text("# updated\n", encoding="utf-8")
    with pytest.raises(webui.WebUIConfigError, match="was changed"):
        webui.install_shim(root, uninstall=True)


def test_the_shim_runs_the_webui_command_line(tmp_path, monkeypatch):
    """The shim, run as the WebUI runs the script, calls gsv-accel with the config path it was given."""
    calls = []
    monkeypatch.setattr(webui, "train_from_webui",
                        lambda stage, path, extra: calls.append((stage, path)) or 0)
    monkeypatch.setattr(sys, "argv", ["GPT_SoVITS/s1_train.py", "--config_file", "TEMP/tmp_s1.yaml"])
    monkeypatch.setattr(sys, "path", ["GPT_SoVITS", *sys.path])  # as Python sets it for the script
    code = compile(webui.shim_text("train-s1"), "s1_train.py", "exec")
    with pytest.raises(SystemExit) as exit_:
        exec(code, {"__name__": "__main__"})
    assert exit_.value.code == 0 and calls == [("s1", Path("TEMP/tmp_s1.yaml"))]
    assert "GPT_SoVITS" not in sys.path


def test_every_key_the_webui_writes_is_in_the_table(tmp_path):
    s2_config, s1_config = webui_configs(tmp_path)
    for stage, path in (("s2", s2_config), ("s1", s1_config)):
        flat = webui.flatten(webui.read_webui_config(tmp_path / path))
        assert not [line for line in webui.mapping_report(stage, flat) if "unknown" in line]


def test_the_readme_holds_the_table():
    assert webui.markdown_table() in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("version, recipe, base", [("v2", "s2", "s2_v2.yaml"),
                                                   ("v2ProPlus", "s2", "s2_v2proplus.yaml"),
                                                   ("v4", "s2_cfm", "s2_v3_lora.yaml")])
def test_the_version_chooses_the_recipe(tmp_path, monkeypatch, version, recipe, base):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    s2_config, _ = webui_configs(tmp_path)
    data = json.loads((tmp_path / s2_config).read_text(encoding="utf-8"))
    data["version"] = data["model"]["version"] = version
    data["save_weight_dir"] = f"SoVITS_weights_{version}"
    data["train"]["gpu_numbers"] = "1-2"
    plan = webui.s2_plan(data)
    assert (plan["recipe"], plan["config"].name, plan["version"]) == (recipe, base, version)
    assert plan["run_dir"] == Path(f"logs/{EXP}/gsv_accel/run_s2_{version}")
    assert plan["env"]["CUDA_VISIBLE_DEVICES"] == "1"  # one process on the first GPU listed
    assert ("train.lora_rank=32" in plan["overrides"]) == (recipe == "s2_cfm")
    assert ('train.pretrained_s2D=null' in plan["overrides"]) == (recipe == "s2")
    assert "checkpoint.keep_last=1" in plan["overrides"]
    assert "checkpoint.every_n_epochs=1" in plan["overrides"]


def test_bad_webui_configs_are_refused(tmp_path):
    s2_config, s1_config = webui_configs(tmp_path)
    data = json.loads((tmp_path / s2_config).read_text(encoding="utf-8"))
    with pytest.raises(webui.WebUIConfigError, match="differs"):
        webui.s2_plan({**data, "version": "v2"})
    with pytest.raises(webui.WebUIConfigError, match="not a SoVITS version"):
        webui.s2_plan({**data, "version": "v9", "model": {}})
    s1 = yaml.safe_load((tmp_path / s1_config).read_text(encoding="utf-8"))
    assert webui.s1_plan(s1)["version"] == "v2Pro"
    s1["train_phoneme_path"] = "logs/other/2-name2text.txt"
    with pytest.raises(webui.WebUIConfigError, match="same|one experiment"):
        webui.s1_plan(s1)
    with pytest.raises(webui.WebUIConfigError, match="not found"):
        webui.read_webui_config(tmp_path / "TEMP" / "missing.json")


@pytest.mark.slow
def test_a_v4_webui_config_trains_lora_with_the_flow_matching_recipe(demo_dataset, tmp_path):
    """`s2_train_v3_lora.py`'s button (v4, LoRA): the flow-matching recipe, exports in SoVITS_weights_v4."""
    root = tmp_path / "GPT-SoVITS"
    write_official_exp(root / "logs" / EXP, demo_dataset)
    s2_config, _ = webui_configs(root)
    data = json.loads((root / s2_config).read_text(encoding="utf-8"))
    data["version"] = data["model"]["version"] = "v4"
    data["save_weight_dir"] = "SoVITS_weights_v4"
    data["train"]["epochs"] = 1
    (root / s2_config).write_text(json.dumps(data), encoding="utf-8")
    tiny_cfm = [o for o in tiny("s2_cfm_demo.yaml", ("model", "sampling"))
                if not o.startswith("model.version")]
    result = gsv_accel(root, "train-s2", "--webui-config", str(s2_config), *QUIET, *tiny_cfm,
                       "train.lora_rank=4", "train.learning_rate=0.001")
    assert "recipes/s2_cfm.py" in result.stdout
    exports = sorted(p.name for p in (root / "SoVITS_weights_v4").iterdir())
    assert f"{EXP}_e1_s11_l4.pth" in exports, exports  # the official LoRA name: _l<rank>


def test_the_gpu_is_chosen_before_cuda_is_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available",
                        lambda: seen.append(os.environ.get("CUDA_VISIBLE_DEVICES")) or True)
    s2_config, _ = webui_configs(tmp_path)
    plan = webui.s2_plan(json.loads((tmp_path / s2_config).read_text(encoding="utf-8")))
    assert seen == []  # planning asks CUDA nothing
    try:
        webui.apply_env(plan["env"])
        assert seen == ["0"] and os.environ["ACCELERATE_MIXED_PRECISION"] == "fp16"
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)


def test_the_import_is_redone_only_when_the_official_files_change(tmp_path, monkeypatch):
    import gsv_accel.data.import_gsv as import_module

    calls = []

    def fake_import(exp_dir, out, version, force):
        calls.append(version)
        Path(out).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(import_module, "import_gsv", fake_import)
    exp = tmp_path / "logs" / EXP
    (exp / "4-cnhubert").mkdir(parents=True)
    (exp / "2-name2text.txt").write_text("a\n", encoding="utf-8")
    (exp / "4-cnhubert" / "a.pt").write_bytes(b"1")
    assert webui.cached_dataset(exp, "v2Pro") == exp / "gsv_accel" / "dataset"
    webui.cached_dataset(exp, "v2Pro")
    (exp / "gsv_accel" / "run_s2_v2Pro").mkdir()  # our runs and the WebUI's logs_s2_* do not count
    (exp / "gsv_accel" / "run_s2_v2Pro" / "train.log").write_text("x", encoding="utf-8")
    (exp / "logs_s2_v2Pro").mkdir()
    (exp / "logs_s2_v2Pro" / "G_1.pth").write_bytes(b"x")
    webui.cached_dataset(exp, "v2Pro")
    assert calls == ["v2"]
    (exp / "4-cnhubert" / "b.pt").write_bytes(b"2")
    webui.cached_dataset(exp, "v2Pro")
    webui.cached_dataset(exp, "v1")  # another symbol table
    assert calls == ["v2", "v2", "v1"]
