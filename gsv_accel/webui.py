"""Training from the GPT-SoVITS WebUI: `gsv-accel train-s2 --webui-config TEMP/tmp_s2.json` and
`gsv-accel train-s1 --webui-config TEMP/tmp_s1.yaml`, and the shim that makes the WebUI's own buttons
call them (`gsv-accel install-webui-shim PATH_TO_GPT_SOVITS`).

The WebUI writes a config per click and starts its trainer on the experiment folder `logs/<exp>/` that
its preparation steps filled. Here that folder is imported (cached) into `logs/<exp>/gsv_accel/dataset`,
the recipe for the version runs in this process (one process, no DDP) in
`logs/<exp>/gsv_accel/run_<stage>_<v>`
with `--resume auto` (a second click continues; a finished run says so), and its exports are linked
(or copied) into the folders the WebUI lists (`SoVITS_weights_<v>/`, `GPT_weights_<v>/`) with the
official names. Paths in the WebUI's config are relative to the GPT-SoVITS folder (the WebUI's working
directory), so run the commands from there. How each official key is used is `KEY_MAP` (printed at the
start of a run; the README's table is rendered from it).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from .data.fingerprint import stable_hash, tree_stamp
from .data.listfile import PrepareError

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
WORK_FOLDER = "gsv_accel"  # inside logs/<exp>/
SOVITS_VERSIONS = ("v1", "v2", "v2Pro", "v2ProPlus", "v3", "v4")
BASE_CONFIG = {"v1": "s2_v2.yaml", "v2": "s2_v2.yaml", "v2Pro": "s2_v2pro.yaml",
               "v2ProPlus": "s2_v2proplus.yaml", "v3": "s2_v3_lora.yaml", "v4": "s2_v3_lora.yaml"}
# What the import reads from logs/<exp>/ (what decides whether the cached dataset is still current).
OFFICIAL_INPUTS = ("2-name2text.txt", "3-bert", "4-cnhubert", "5-wav32k", "6-name2semantic.tsv", "7-sv_cn")

ARCH = "architecture: the recipe's config for the version (recipes/configs/), the official values; " \
       "change with model.<key>=... overrides"
PRECISION = "fp16 mixed precision on a GPU when true/16-mixed (ACCELERATE_MIXED_PRECISION, unless set)"
KEEP = "true: checkpoint.keep_last=1 (only the newest checkpoint is kept); false: the recipe's default"

# (stage, official key, gsv_accel setting or "-" when not used, what happens). A key ending in ".*"
# covers a whole section. Keys the table does not name are reported as unknown and ignored.
KEY_MAP: list[tuple[str, str, str, str]] = [
    ("s2", "version", "recipe", "v1/v2/v2Pro/v2ProPlus: recipes/s2.py, v3/v4: recipes/s2_cfm.py"),
    ("s2", "model.version", "model.version", "must equal `version`"),
    ("s2", "name", "run.exp_name", "export names <name>_e<E>_s<S>.pth as the WebUI's"),
    ("s2", "data.exp_dir", "data.dataset", "logs/<exp> imported into logs/<exp>/gsv_accel/dataset (cached)"),
    ("s2", "s2_ckpt_dir", "-", "the run folder is logs/<exp>/gsv_accel/run_s2_<v> (checkpoints, train.log)"),
    ("s2", "save_weight_dir", "exports", "exports are linked/copied there with the official names"),
    ("s2", "train.batch_size", "data.batch_size", ""),
    ("s2", "train.epochs", "train.epochs", ""),
    ("s2", "train.learning_rate", "train.learning_rate", ""),
    ("s2", "train.betas", "train.betas", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "train.eps", "train.eps", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "train.lr_decay", "train.lr_decay", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "train.segment_size", "train.segment_size", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "train.c_mel", "train.c_mel", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "train.c_kl", "train.c_kl", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "train.text_low_lr_rate", "train.text_low_lr_rate", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "train.seed", "run.seed", ""),
    ("s2", "train.log_interval", "train.log_every_n_steps", ""),
    ("s2", "train.pretrained_s2G", "train.pretrained_s2G", "empty: from scratch"),
    ("s2", "train.pretrained_s2D", "train.pretrained_s2D", "v1/v2/v2Pro/v2ProPlus; empty: from scratch"),
    ("s2", "train.save_every_epoch", "checkpoint.every_n_epochs", "also validation.every_n_epochs"),
    ("s2", "train.if_save_every_weights", "checkpoint.export_every_save",
     "false: exports of the final and the best weights only"),
    ("s2", "train.if_save_latest", "checkpoint.keep_last", KEEP),
    ("s2", "train.fp16_run", "precision", PRECISION),
    ("s2", "train.gpu_numbers", "CUDA_VISIBLE_DEVICES", "the first GPU listed (one process; no DDP/gloo)"),
    ("s2", "train.grad_ckpt", "train.grad_ckpt", "v3/v4 only (the official v1/v2 trainer ignores it too)"),
    ("s2", "train.lora_rank", "train.lora_rank", "v3/v4 only"),
    ("s2", "train.eval_interval", "-", "unused by the official trainer; validation runs every "
                                       "save_every_epoch epochs"),
    ("s2", "train.init_lr_ratio", "-", "no warm-up (the official v1/v2 trainer has none either)"),
    ("s2", "train.warmup_epochs", "-", "no warm-up (the official v1/v2 trainer has none either)"),
    ("s2", "data.sampling_rate", "data.sampling_rate", "v1/v2/v2Pro/v2ProPlus (v3/v4: fixed by the version)"),
    ("s2", "data.filter_length", "data.filter_length", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "data.hop_length", "data.hop_length", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "data.win_length", "data.win_length", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "data.n_mel_channels", "data.n_mel_channels", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "data.mel_fmin", "data.mel_fmin", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "data.mel_fmax", "data.mel_fmax", "v1/v2/v2Pro/v2ProPlus"),
    ("s2", "data.max_wav_value", "-", "the audio is stored normalised"),
    ("s2", "data.add_blank", "-", "unused by the official trainer"),
    ("s2", "data.n_speakers", "-", "stored but not used by the official model"),
    ("s2", "data.cleaned_text", "-", "unused by the official trainer"),
    ("s2", "data.training_files", "-", "the data is logs/<exp>"),
    ("s2", "data.validation_files", "-", "validation: 10% of logs/<exp>, held out (seed 1234)"),
    ("s2", "model.*", "-", ARCH),
    ("s2", "content_module", "-", "the HuBERT features are read from 4-cnhubert/"),
    ("s1", "train.exp_name", "run.exp_name", "export names <exp_name>-e<E>.ckpt as the WebUI's"),
    ("s1", "train_semantic_path", "data.dataset",
     "its folder logs/<exp> is imported (cached, shared with s2)"),
    ("s1", "train_phoneme_path", "data.dataset", "must be in the same logs/<exp>"),
    ("s1", "output_dir", "-", "the run folder is logs/<exp>/gsv_accel/run_s1_<v>"),
    ("s1", "train.half_weights_save_dir", "exports",
     "exports are linked/copied there; its name (GPT_weights_<v>) gives the version"),
    ("s1", "pretrained_s1", "train.pretrained_s1", "empty: from scratch"),
    ("s1", "train.batch_size", "data.batch_size", ""),
    ("s1", "train.epochs", "train.epochs", ""),
    ("s1", "train.seed", "run.seed", ""),
    ("s1", "train.save_every_n_epoch", "checkpoint.every_n_epochs", "also validation.every_n_epochs"),
    ("s1", "train.if_save_every_weights", "checkpoint.export_every_save",
     "false: exports of the final and the best weights only"),
    ("s1", "train.if_save_latest", "checkpoint.keep_last", KEEP),
    ("s1", "train.if_dpo", "train.dpo", ""),
    ("s1", "train.precision", "precision", PRECISION),
    ("s1", "train.gradient_clip", "train.grad_clip", ""),
    ("s1", "optimizer.*", "-", "gsv_accel's schedule: train.learning_rate, warmup_steps, min_lr_ratio "
                              "(recipes/configs/s1_v2.yaml); change with train.<key>=... overrides"),
    ("s1", "data.max_sec", "data.max_sec", ""),
    ("s1", "data.num_workers", "-", "recipes/configs/s1_v2.yaml's value; data.num_workers=... to change"),
    ("s1", "data.max_eval_sample", "-", "validation: 10% of logs/<exp>, held out (seed 1234)"),
    ("s1", "data.pad_val", "-", "fixed by the model's EOS"),
    ("s1", "model.*", "-", ARCH),
    ("s1", "inference.*", "-", "inference only"),
]


class WebUIConfigError(PrepareError):
    """A WebUI config gsv_accel cannot follow (exit 2, one line)."""


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def table_entry(stage: str, key: str) -> tuple[str, str] | None:
    for entry_stage, name, target, note in KEY_MAP:
        if entry_stage != stage:
            continue
        if name == key or (name.endswith(".*") and key.startswith(name[:-1])):
            return target, note
    return None


def mapping_report(stage: str, flat: dict[str, Any]) -> list[str]:
    """One line per key of the official config: where it went, or why it is not used."""
    lines = []
    for key in sorted(flat):
        entry = table_entry(stage, key)
        if entry is None:
            lines.append(f"  {key} = {flat[key]!r}: unknown to gsv_accel, ignored")
            continue
        target, note = entry
        where = "ignored" if target == "-" else f"-> {target}"
        lines.append(f"  {key} = {flat[key]!r}: {where}{f' ({note})' if note else ''}")
    return lines


def markdown_table() -> str:
    rows = ["| stage | official key | gsv_accel | notes |", "|---|---|---|---|"]
    for stage, key, target, note in KEY_MAP:
        rows.append(f"| {stage} | `{key}` | {'ignored' if target == '-' else f'`{target}`'} | {note} |")
    return "\n".join(rows)


def _value(value: Any) -> str:
    return json.dumps(value)


def _path_or_none(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


# ----------------------------------------------------------------------------------- dataset cache
def input_stamp(exp_dir: Path) -> str:
    parts = {name: tree_stamp(exp_dir / name) if (exp_dir / name).exists() else None
             for name in OFFICIAL_INPUTS}
    for pattern in ("2-name2text-*.txt", "6-name2semantic-*.tsv"):
        parts[pattern] = [tree_stamp(p) for p in sorted(exp_dir.glob(pattern))]
    return stable_hash(parts)


def cached_dataset(exp_dir: Path, version: str) -> Path:
    """`logs/<exp>` imported into `logs/<exp>/gsv_accel/dataset`, again only when the official inputs
    (the files `OFFICIAL_INPUTS` names) or the symbol table changed. The stamp is ours, not the
    import's: the import stamps the whole folder, which holds our run folders and the WebUI's logs."""
    from .data.import_gsv import import_gsv

    out = exp_dir / WORK_FOLDER / "dataset"
    symbols = "v1" if version == "v1" else "v2"
    stamp = stable_hash({"inputs": input_stamp(exp_dir), "symbols": symbols})
    stamp_file = exp_dir / WORK_FOLDER / "dataset.stamp"
    if out.is_dir() and stamp_file.is_file() and stamp_file.read_text(encoding="utf-8").strip() == stamp:
        print(f"gsv-accel: {out} is up to date with {exp_dir}; not imported again")
        return out
    print(f"gsv-accel: importing {exp_dir} into {out}")
    import_gsv(exp_dir, out, version=symbols, force=True)
    stamp_file.write_text(stamp + "\n", encoding="utf-8")
    return out


# ----------------------------------------------------------------------------------- configs
def read_webui_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WebUIConfigError(f"--webui-config {path}: not found; give the TEMP/tmp_s2.json or "
                               "TEMP/tmp_s1.yaml the WebUI wrote")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise WebUIConfigError(f"--webui-config {path}: not a mapping")
    return data


def _common(flat: dict[str, Any], every_key: str, overrides: list[str], env: dict[str, str],
            precision_key: str) -> None:
    if flat.get(every_key) not in (None, ""):
        every = int(flat[every_key])
        overrides += [f"checkpoint.every_n_epochs={every}", f"validation.every_n_epochs={every}"]
    if "train.if_save_every_weights" in flat:
        overrides.append(f"checkpoint.export_every_save={_value(bool(flat['train.if_save_every_weights']))}")
    if flat.get("train.if_save_latest"):
        overrides.append("checkpoint.keep_last=1")
    if "train.seed" in flat:
        overrides.append(f"run.seed={int(flat['train.seed'])}")
    if flat.get(precision_key) in (True, "16-mixed", "16"):
        env["fp16"] = "1"  # applied by `apply_env` once the GPU is chosen


def s2_plan(data: dict[str, Any]) -> dict[str, Any]:
    """The recipe, base config, overrides and folders for a WebUI `tmp_s2.json`."""
    flat = flatten(data)
    version = str(data.get("version") or flat.get("model.version") or "")
    if version not in SOVITS_VERSIONS:
        raise WebUIConfigError(f"version {version!r}: not a SoVITS version ({', '.join(SOVITS_VERSIONS)})")
    if flat.get("model.version") not in (None, version):
        raise WebUIConfigError(f"model.version {flat['model.version']!r} differs from version {version!r}")
    exp_dir = Path(str(flat.get("data.exp_dir") or data.get("s2_ckpt_dir") or ""))
    if not str(exp_dir) or str(exp_dir) == ".":
        raise WebUIConfigError("data.exp_dir is missing; give the config the WebUI wrote")
    cfm = version in ("v3", "v4")
    overrides = [f"model.version={version}", f"run.exp_name={_value(str(data.get('name') or exp_dir.name))}"]
    direct = ["train.epochs", "train.learning_rate"]
    if not cfm:
        direct += ["train.betas", "train.eps", "train.lr_decay", "train.segment_size", "train.c_mel",
                   "train.c_kl", "train.text_low_lr_rate"]
        direct += [f"data.{k}" for k in ("sampling_rate", "filter_length", "hop_length", "win_length",
                                         "n_mel_channels", "mel_fmin", "mel_fmax")]
    overrides += [f"{k}={_value(flat[k])}" for k in direct if k in flat]
    if "train.batch_size" in flat:
        overrides.append(f"data.batch_size={int(flat['train.batch_size'])}")
    if "train.log_interval" in flat:
        overrides.append(f"train.log_every_n_steps={int(flat['train.log_interval'])}")
    for key in ("train.pretrained_s2G",) + (() if cfm else ("train.pretrained_s2D",)):
        if key in flat:
            overrides.append(f"{key}={_value(_path_or_none(flat[key]))}")
    if cfm:
        if "train.lora_rank" in flat:
            rank = flat["train.lora_rank"]
            overrides.append(f"train.lora_rank={int(rank) if str(rank) not in ('', 'None') else 'null'}")
        if "train.grad_ckpt" in flat:
            overrides.append(f"train.grad_ckpt={_value(bool(flat['train.grad_ckpt']))}")
    env: dict[str, str] = {}
    _common(flat, "train.save_every_epoch", overrides, env, "train.fp16_run")
    gpus = str(flat.get("train.gpu_numbers") or "").replace(",", "-").split("-")
    if gpus[0].strip().isdigit() and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = gpus[0].strip()
    weights = Path(str(data.get("save_weight_dir") or f"SoVITS_weights_{version}"))
    return {"stage": "s2", "version": version, "recipe": "s2_cfm" if cfm else "s2",
            "config": RECIPES / "configs" / BASE_CONFIG[version], "exp_dir": exp_dir,
            "overrides": overrides, "env": env, "weight_dir": weights, "flat": flat,
            "run_dir": exp_dir / WORK_FOLDER / f"run_s2_{version}"}


def s1_plan(data: dict[str, Any]) -> dict[str, Any]:
    """The recipe, overrides and folders for a WebUI `tmp_s1.yaml`."""
    flat = flatten(data)
    semantic = flat.get("train_semantic_path")
    if not semantic:
        raise WebUIConfigError("train_semantic_path is missing; give the config the WebUI wrote")
    exp_dir = Path(str(semantic)).parent
    phoneme = flat.get("train_phoneme_path")
    if phoneme and Path(str(phoneme)).parent.resolve() != exp_dir.resolve():
        raise WebUIConfigError(f"train_phoneme_path {phoneme} is not in {exp_dir} (train_semantic_path's "
                               "folder); gsv_accel reads one experiment folder")
    weights = Path(str(flat.get("train.half_weights_save_dir") or "GPT_weights_v2"))
    version = weights.name.split("GPT_weights_", 1)[1] if weights.name.startswith("GPT_weights_") else (
        "v1" if weights.name == "GPT_weights" else "v2")
    name = str(flat.get("train.exp_name") or exp_dir.name)
    overrides = [f"run.exp_name={_value(name)}"]
    if "train.batch_size" in flat:
        overrides.append(f"data.batch_size={int(flat['train.batch_size'])}")
    for key, target in (("train.epochs", "train.epochs"), ("train.gradient_clip", "train.grad_clip"),
                        ("data.max_sec", "data.max_sec")):
        if key in flat:
            overrides.append(f"{target}={_value(flat[key])}")
    if "train.if_dpo" in flat:
        overrides.append(f"train.dpo={_value(bool(flat['train.if_dpo']))}")
    if "pretrained_s1" in flat:
        overrides.append(f"train.pretrained_s1={_value(_path_or_none(flat['pretrained_s1']))}")
    env: dict[str, str] = {}
    _common(flat, "train.save_every_n_epoch", overrides, env, "train.precision")
    gpus = os.environ.get("_CUDA_VISIBLE_DEVICES", "").split(",")
    if gpus[0].strip().isdigit() and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = gpus[0].strip()
    return {"stage": "s1", "version": version, "recipe": "s1", "config": RECIPES / "configs" / "s1_v2.yaml",
            "exp_dir": exp_dir, "overrides": overrides, "env": env, "weight_dir": weights, "flat": flat,
            "run_dir": exp_dir / WORK_FOLDER / f"run_s1_{version}"}


# ----------------------------------------------------------------------------------- running
def load_recipe(name: str) -> Any:
    path = RECIPES / f"{name}.py"
    if not path.is_file():
        raise WebUIConfigError(f"{path}: not found; the WebUI commands need the gsv_accel source checkout")
    spec = importlib.util.spec_from_file_location(f"gsv_accel_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _same_file(a: Path, b: Path) -> bool:
    if not b.exists():
        return False
    if os.path.samefile(a, b):
        return True
    if a.stat().st_size != b.stat().st_size:
        return False
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


def publish_exports(run_dir: Path, weight_dir: Path, prefix: str) -> list[Path]:
    """Hard-link (copy where linking fails) the run's exports into the WebUI's weight folder."""
    published = []
    for folder in sorted((run_dir / "exports").glob(f"{prefix}*")):
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            target = weight_dir / file.name
            if _same_file(file, target):
                published.append(target)
                continue
            weight_dir.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.unlink(missing_ok=True)
            try:
                os.link(file, partial)
            except OSError:
                shutil.copyfile(file, partial)
            os.replace(partial, target)
            published.append(target)
    return published


def apply_env(env: dict[str, str]) -> None:
    """The GPU first (CUDA_VISIBLE_DEVICES counts only before CUDA is first asked), then fp16 mixed
    precision where the config asks for it and a GPU is there (unless ACCELERATE_MIXED_PRECISION is set)."""
    os.environ.update({k: v for k, v in env.items() if k != "fp16"})
    if env.get("fp16") and "ACCELERATE_MIXED_PRECISION" not in os.environ:
        import torch

        if torch.cuda.is_available():
            os.environ["ACCELERATE_MIXED_PRECISION"] = "fp16"


def train_from_webui(stage: str, config_path: Path, extra: list[str]) -> int:
    data = read_webui_config(config_path)
    plan = s2_plan(data) if stage == "s2" else s1_plan(data)
    print(f"gsv-accel train-{stage}: {config_path} (version {plan['version']}, recipes/{plan['recipe']}.py, "
          "one process); the official keys:")
    print("\n".join(mapping_report(stage, plan["flat"])))
    dataset = cached_dataset(plan["exp_dir"], plan["version"])
    run_dir = plan["run_dir"]
    # Progress as plain lines, as the official trainers print them into the WebUI's console.
    argv = ["--config", str(plan["config"]), "--resume", "auto", f"run.output_dir={_value(str(run_dir))}",
            f"data.dataset={_value(str(dataset))}", "run.progress=lines", *plan["overrides"], *extra]
    print(f"gsv-accel train-{stage}: run folder {run_dir}; settings {' '.join(argv[4:])}")
    apply_env(plan["env"])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):  # one process, whatever the WebUI's environment says
        os.environ.pop(key, None)
    code = load_recipe(plan["recipe"]).main(argv)
    prefix = "SoVITS_weights" if stage == "s2" else "GPT_weights"
    published = publish_exports(run_dir, plan["weight_dir"], prefix)
    for path in published:
        print(f"gsv-accel train-{stage}: export {path}")
    if code == 0 and not published:
        print(f"gsv-accel train-{stage}: warning: the run wrote no export", file=sys.stderr)
    return code


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--webui-config", required=True, type=Path,
                        help="the config the WebUI wrote (TEMP/tmp_s2.json or TEMP/tmp_s1.yaml)")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value settings of the recipe")
    return parser


# ----------------------------------------------------------------------------------- the shim
# The WebUI runs `"<python>" -s GPT_SoVITS/<script> --config(_file) "<TEMP config>"` from the GPT-SoVITS
# folder. Each script is replaced by a two-line one that runs gsv_accel with that interpreter.
SHIM_SCRIPTS = {"s2_train.py": "train-s2", "s2_train_v3_lora.py": "train-s2", "s1_train.py": "train-s1"}
ORIG_SUFFIX = ".gsv_accel_orig"
SHIM_MARK = "# gsv_accel WebUI shim"


def shim_text(command: str) -> str:
    argv = f"['gsv-accel', '{command}', '--webui-config', sys.argv[-1]]"
    # sys.path[0] is GPT_SoVITS/, whose top-level modules (text, module, utils, ...) must not shadow any.
    return (f"import runpy, sys; sys.path.pop(0); sys.argv = {argv}  {SHIM_MARK}\n"
            "runpy.run_module('gsv_accel.cli', run_name='__main__')\n")


def install_shim(root: Path, uninstall: bool = False) -> list[str]:
    folder = root / "GPT_SoVITS"
    if not (root / "webui.py").is_file() or not folder.is_dir():
        raise WebUIConfigError(f"{root}: not a GPT-SoVITS folder (no webui.py and GPT_SoVITS/)")
    done = []
    present = {name: folder / name for name in SHIM_SCRIPTS if (folder / name).is_file()}
    if not present:
        raise WebUIConfigError(f"{folder}: none of {', '.join(SHIM_SCRIPTS)}")
    for name, path in present.items():
        orig = path.with_name(name + ORIG_SUFFIX)
        shimmed = SHIM_MARK in path.read_text(encoding="utf-8", errors="replace")
        if uninstall:
            if not orig.is_file():
                raise WebUIConfigError(f"{path}: no {orig.name}, so the shim is not installed")
            if path.read_text(encoding="utf-8") != shim_text(SHIM_SCRIPTS[name]):
                raise WebUIConfigError(f"{path} was changed since the shim was installed; not restoring "
                                       f"(the original is {orig.name})")
        elif shimmed or orig.exists():
            raise WebUIConfigError(f"{path}: the shim is installed already ({orig.name} exists); "
                                   "--uninstall first")
    for name, path in present.items():
        orig = path.with_name(name + ORIG_SUFFIX)
        if uninstall:
            os.replace(orig, path)
            done.append(f"restored {path}")
        else:
            os.replace(path, orig)
            path.write_text(shim_text(SHIM_SCRIPTS[name]), encoding="utf-8")
            shutil.copymode(orig, path)
            done.append(f"{path} -> gsv-accel {SHIM_SCRIPTS[name]} (original kept as {orig.name})")
    return done


def run_install_shim(args: argparse.Namespace) -> int:
    for line in install_shim(args.path, uninstall=args.uninstall):
        print(f"gsv-accel install-webui-shim: {line}")
    return 0
