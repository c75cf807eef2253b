"""Bad input to `gsv-accel` never ends in a traceback: exit code 2 (`EXIT_CODE_USER_ERROR`), exactly
one line on stderr naming the file (or option) and what to do, and nothing new written.

One table row per bad input, run in-process through `gsv_accel.cli.main` (a few again as a
subprocess, so that everything the process prints is seen). Inputs are tiny: the demo list and tiny
models under demo/, and a handful of small files made here. Also: `inspect` of a checkpoint folder
(exit 0, or 1 with its report when broken; labels keep a space after long keys) and empty audio files
rejected as "empty".
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from gsv_accel.cli import EXIT_CHECKPOINT_BROKEN, EXIT_USER_ERROR, main
from gsv_accel.lifecycle import EXIT_CODE_USER_ERROR

REPO = Path(__file__).resolve().parents[1]
DEMO_LIST = REPO / "demo" / "data" / "demo.list"
TINY_HUBERT = REPO / "demo" / "tiny_hubert"
TINY_BERT = REPO / "demo" / "tiny_bert"
TINY_SV = REPO / "demo" / "tiny_sv" / "eres2netv2_tiny.safetensors"


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Small bad inputs, made once (outside the folder each test writes into)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    a: dict[str, Path] = {"root": root}

    def file(name: str, data: bytes) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    a["plain"] = file("plain.txt", b"not a torch file\n")
    a["folder"] = root / "some_folder"
    a["folder"].mkdir()
    a["empty_list"] = file("empty.list", b"")
    a["malformed_list"] = file("malformed.list", b"just words\nno|pipes\n")
    a["no_audio_list"] = file("no_audio.list", b"nowhere/a.wav|spk|en|Hello there.\n"
                                               b"nowhere/b.wav|spk|en|Good morning.\n")
    a["val_unknown"] = file("val_unknown.txt", b"not_in_the_list.wav\n")
    a["marker"] = root / "pwned"
    a["unsafe"] = root / "unsafe.pth"
    torch.save({"weight": {"enc_p.proj.weight": torch.zeros(2)}, "config": _RunsShell(f"touch {a['marker']}"),
                "info": "x"}, a["unsafe"])
    a["unsafe_sv"] = root / "unsafe_sv.ckpt"
    torch.save({"conv1.weight": _RunsShell(f"touch {a['marker']}")}, a["unsafe_sv"])
    whole = root / "whole.pth"
    torch.save({"weight": {"x": torch.zeros(1000)}, "config": {}, "info": "x"}, whole)
    a["truncated"] = file("truncated.pth", whole.read_bytes()[: whole.stat().st_size // 2])
    a["not_checkpoint"] = root / "not_a_checkpoint"
    a["not_checkpoint"].mkdir()
    (a["not_checkpoint"] / "notes.txt").write_text("hello")
    a["bad_manifest"] = root / "bad_manifest"
    a["bad_manifest"].mkdir()
    (a["bad_manifest"] / "manifest.json").write_text("{not json")
    a["number_manifest"] = root / "number_manifest"
    a["number_manifest"].mkdir()
    (a["number_manifest"] / "manifest.json").write_text("5")
    # Model folders of the wrong kind.
    a["hubert_no_config"] = root / "hubert_no_config"
    shutil.copytree(TINY_HUBERT, a["hubert_no_config"])
    (a["hubert_no_config"] / "config.json").unlink()
    a["hubert_no_weights"] = root / "hubert_no_weights"
    a["hubert_no_weights"].mkdir()
    shutil.copy(TINY_HUBERT / "config.json", a["hubert_no_weights"])
    a["hubert_bad_weights"] = root / "hubert_bad_weights"
    a["hubert_bad_weights"].mkdir()
    shutil.copy(TINY_HUBERT / "config.json", a["hubert_bad_weights"])
    (a["hubert_bad_weights"] / "model.safetensors").write_bytes(b"garbage")
    a["bert_no_tokenizer"] = root / "bert_no_tokenizer"
    a["bert_no_tokenizer"].mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(TINY_BERT / name, a["bert_no_tokenizer"])
    # Official experiment folders that are not (quite) one.
    line = "a.wav\tn i3 h ao3\t[2, 2]\t你好\n"
    a["exp_no_features"] = root / "exp_no_features"
    a["exp_no_features"].mkdir()
    (a["exp_no_features"] / "2-name2text.txt").write_text(line, encoding="utf-8")

    def official(name: str, text: bytes) -> Path:
        folder = root / name
        for sub in ("4-cnhubert", "5-wav32k"):
            (folder / sub).mkdir(parents=True)
        (folder / "2-name2text.txt").write_bytes(text)
        return folder

    a["exp"] = official("exp", line.encode())
    a["exp_latin1"] = official("exp_latin1", "a.wav\tn i3\t[1]\tcaf\xe9\n".encode("latin-1"))
    a["exp_malformed"] = official("exp_malformed", b"only two\tfields\nthree\tfields\there\n")
    return a


@dataclass
class Case:
    id: str
    argv: Callable[[dict[str, Path], Path], list[str]]  # (assets, out) -> arguments
    expect: Callable[[dict[str, Path], Path], list[str]]  # substrings of the one stderr line
    setup: Callable[[dict[str, Path], Path], None] | None = None  # makes what --out points at
    patch: Callable[[pytest.MonkeyPatch, dict[str, Path]], None] | None = None
    marks: list = field(default_factory=list)


def _resolve(a: dict[str, Path], item: str | Path) -> str:
    """"@key" is an asset's path; anything else is used as it is."""
    return str(a[item[1:]]) if isinstance(item, str) and item.startswith("@") else str(item)


def _prepare(*extra: str, list_path: str | Path = DEMO_LIST, hubert: str | Path = TINY_HUBERT):
    def argv(a, out):
        return ["prepare", "--list", _resolve(a, list_path), "--out", str(out),
                "--hubert", _resolve(a, hubert), *[_resolve(a, x) for x in extra]]
    return argv


def _import(exp: str, *extra: str):
    def argv(a, out):
        return ["import-gsv", "--exp-dir", _resolve(a, exp), "--out", str(out),
                *[_resolve(a, x) for x in extra]]
    return argv


def _inspect(target: str):
    return lambda a, out: ["inspect", _resolve(a, target)]


def _names(*items: str):
    """Expected substrings: "@key" is the asset's path, "$out" the output path, others literal."""
    def expect(a, out):
        return [str(out) if x == "$out" else str(a[x[1:]]) if x.startswith("@") else x for x in items]
    return expect


def _foreign_out(a, out):
    out.mkdir()
    (out / "thesis.tex").write_text("precious")


def _file_out(a, out):
    out.write_text("a file")


def _unreadable_list(monkeypatch, a):
    original = pathlib.Path.read_bytes

    def read_bytes(self):
        if self == DEMO_LIST:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self)

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

CASES = [
    # ---------------------------------------------------------------- inspect
    Case("inspect-missing", _inspect("/nonexistent/nope.pth"), _names("/nonexistent/nope.pth", "not found",
                                                                        ".pth/.ckpt")),
    Case("inspect-not-torch", _inspect("@plain"), _names("plain.txt", "not a PyTorch checkpoint")),
    Case("inspect-truncated-zip", _inspect("@truncated"),
         _names("truncated.pth", "not a readable PyTorch file")),
    Case("inspect-unsafe-pickle", _inspect("@unsafe"), _names("refusing to load unsafe.pth", "os.system")),
    Case("inspect-folder-not-checkpoint", _inspect("@not_checkpoint"),
         _names("@not_checkpoint", "manifest.json", "not a gsv_accel checkpoint")),
    Case("inspect-unreadable-manifest", _inspect("@bad_manifest"),
         _names("manifest.json", "unreadable manifest")),
    Case("inspect-manifest-not-an-object", _inspect("@number_manifest"),
         _names("@number_manifest", "malformed manifest")),
    # ---------------------------------------------------------------- prepare: the list
    Case("list-missing", _prepare(list_path=REPO / "no_such.list"),
         _names("--list", "no_such.list", "not found")),
    Case("list-folder", _prepare(list_path="@folder"), _names("--list", "@folder", "is a folder", ".list")),
    Case("list-unreadable", _prepare(), _names("--list", str(DEMO_LIST), "Permission denied"),
         patch=_unreadable_list),
    Case("list-empty", _prepare(list_path="@empty_list"), _names("--list", "@empty_list", "no lines")),
    Case("list-no-usable-line", _prepare(list_path="@malformed_list"),
         _names("--list", "@malformed_list", "no usable line", "line 1", "wav_path|speaker|lang|text")),
    Case("list-audio-all-missing", _prepare(list_path="@no_audio_list"),
         _names("--list", "line 1", "nowhere/a.wav", "fix the paths")),
    # ---------------------------------------------------------------- prepare: models
    Case("hubert-missing", _prepare(hubert="/nonexistent/hubert"), _names("--hubert /nonexistent/hubert",
                                                                         "not found")),
    Case("hubert-file", _prepare(hubert="@plain"), _names("--hubert", "@plain", "is a file")),
    Case("hubert-no-config", _prepare(hubert="@hubert_no_config"),
         _names("--hubert", "@hubert_no_config", "no config.json")),
    Case("hubert-is-bert", _prepare(hubert=str(TINY_BERT)),
         _names("--hubert", str(TINY_BERT), "not a HuBERT")),
    Case("hubert-no-weights", _prepare(hubert="@hubert_no_weights"),
         _names("--hubert", "@hubert_no_weights", "no weights")),
    Case("hubert-corrupt-weights", _prepare(hubert="@hubert_bad_weights"),
         _names("--hubert", "@hubert_bad_weights", "cannot load the HuBERT model")),
    Case("bert-missing", _prepare("--bert", "/nonexistent/bert"),
         _names("--bert /nonexistent/bert", "not found")),
    Case("bert-no-tokenizer", _prepare("--bert", "@bert_no_tokenizer"),
         _names("--bert", "@bert_no_tokenizer", "no tokenizer")),
    Case("bert-is-hubert", _prepare("--bert", str(TINY_HUBERT)), _names("--bert", "audio model", "not BERT")),
    Case("sv-missing", _prepare("--sv", "/nonexistent/sv.ckpt"),
         _names("--sv /nonexistent/sv.ckpt", "not found")),
    Case("sv-folder", _prepare("--sv", str(TINY_SV.parent)),
         _names("--sv", str(TINY_SV.parent), "is a folder")),
    Case("sv-not-a-model", _prepare("--sv", "@plain"),
         _names("--sv", "@plain", "speaker-verification model")),
    Case("sv-unsafe-pickle", _prepare("--sv", "@unsafe_sv"), _names("--sv", "@unsafe_sv", "system")),
    Case("s2-missing", _prepare("--s2-pretrained", "/nonexistent/s2.pth"),
         _names("--s2-pretrained /nonexistent/s2.pth", "not found")),
    Case("s2-folder", _prepare("--s2-pretrained", "@folder"),
         _names("--s2-pretrained", "@folder", "is a folder")),
    Case("s2-not-torch", _prepare("--s2-pretrained", "@plain"),
         _names("--s2-pretrained", "@plain", "not a PyTorch checkpoint")),
    Case("s2-unsafe-pickle", _prepare("--s2-pretrained", "@unsafe"),
         _names("--s2-pretrained", "@unsafe", "os.system")),
    # ---------------------------------------------------------------- prepare: output and settings
    Case("out-foreign-folder", _prepare(), _names("--out", "$out", "not a prepared gsv_accel dataset"),
         setup=_foreign_out),
    Case("out-is-a-file", _prepare(), _names("--out", "$out", "is a file"), setup=_file_out),
    Case("out-under-a-file", lambda a, out: _prepare()(a, out / "sub"), _names("--out", "is a file"),
         setup=_file_out),
    Case("val-list-missing", _prepare("--val-list", "/nonexistent/val.txt"),
         _names("--val-list /nonexistent/val.txt", "not found")),
    Case("val-list-folder", _prepare("--val-list", "@folder"),
         _names("--val-list", "@folder", "is a folder")),
    Case("val-list-unknown-names", _prepare("--val-list", "@val_unknown"),
         _names("--val-list", "@val_unknown", "not_in_the_list.wav")),
    Case("val-fraction-out-of-range", _prepare("--val-fraction", "1.5"), _names("--val-fraction", "1.5")),
    Case("batch-size-zero", _prepare("--batch-size", "0"), _names("--batch-size")),
    Case("device-cuda-without-cuda", _prepare("--device", "cuda"), _names("--device cuda", "--device cpu"),
         marks=[NO_CUDA]),
    # ---------------------------------------------------------------- import-gsv
    Case("exp-dir-missing", _import("/nonexistent/logs/exp"), _names("--exp-dir /nonexistent/logs/exp",
                                                                       "not found")),
    Case("exp-dir-file", _import("@plain"), _names("--exp-dir", "@plain", "is a file")),
    Case("exp-dir-not-official", _import("@folder"), _names("--exp-dir", "@folder", "2-name2text.txt")),
    Case("exp-dir-no-features", _import("@exp_no_features"),
         _names("--exp-dir", "@exp_no_features", "4-cnhubert", "missing")),
    Case("exp-dir-not-utf8", _import("@exp_latin1"), _names("2-name2text.txt", "not UTF-8")),
    Case("exp-dir-no-usable-line", _import("@exp_malformed"),
         _names("--exp-dir", "@exp_malformed", "no usable line", "line 1")),
    Case("import-list-missing", _import("@exp", "--list", "/nonexistent/x.list"),
         _names("--list /nonexistent/x.list", "not found")),
    Case("import-val-list-missing", _import("@exp", "--val-list", "/nonexistent/val.txt"),
         _names("--val-list /nonexistent/val.txt", "not found")),
    Case("import-out-foreign-folder", _import("@exp"), _names("--out", "$out", "not a prepared"),
         setup=_foreign_out),
]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _check_one_line(err: str, command: str, expected: list[str]) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"gsv-accel {command}: error: "), line
    for text in expected:
        assert text in line, (text, line)
    return line


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case: Case, assets, tmp_path, capsys,
                                                            monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    if case.setup is not None:
        case.setup(assets, out)
    if case.patch is not None:
        case.patch(monkeypatch, assets)
    argv = case.argv(assets, out)
    before, assets_before = _snapshot(work), _snapshot(assets["root"])

    assert main(argv) == EXIT_USER_ERROR == EXIT_CODE_USER_ERROR == 2

    captured = capsys.readouterr()
    _check_one_line(captured.err, argv[0], case.expect(assets, out))
    assert "Traceback" not in captured.out
    assert _snapshot(work) == before  # --out absent or untouched, no temporary folder left
    assert _snapshot(assets["root"]) == assets_before
    assert not assets["marker"].exists()  # nothing pickled ran


SUBPROCESS_CASES = ["inspect-unsafe-pickle", "sv-not-a-model", "out-is-a-file", "exp-dir-not-utf8"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_as_a_process_prints_one_line(case_id: str, assets, tmp_path) -> None:
    """Everything the process writes is seen here (library loggers and progress bars included)."""
    case = next(c for c in CASES if c.id == case_id)
    out = tmp_path / "out"
    if case.setup is not None:
        case.setup(assets, out)
    argv = case.argv(assets, out)
    before = _snapshot(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "gsv_accel.cli", *argv], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    _check_one_line(result.stderr, argv[0], case.expect(assets, out))
    assert _snapshot(tmp_path) == before
    assert not assets["marker"].exists()


def test_no_usable_audio_is_a_user_error_found_after_the_audio_stage(assets, tmp_path, capsys) -> None:
    """Corrupt audio is found only by reading it, after the text and audio stages have shown their
    progress bars: the error is then the last line, and nothing is written."""
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20)
    (tmp_path / "bad.list").write_text("corrupt.wav|spk|en|Hello there.\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    assert main(["prepare", "--list", str(tmp_path / "bad.list"), "--out", str(work / "out"),
                 "--hubert", str(TINY_HUBERT)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("gsv-accel prepare: error: --list ") and "bad.list" in last
    assert "unreadable" in last and "corrupt.wav" in last
    assert list(work.iterdir()) == []


def test_argparse_usage_errors_also_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--out", "x"])
    assert info.value.code == 2
    assert "--list" in capsys.readouterr().err


# --------------------------------------------------------------------------- inspect of checkpoints


def _checkpoint(folder: Path) -> Path:
    from gsv_accel.checkpoint import MANIFEST_NAME, build_manifest

    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    manifest = build_manifest(folder, step=30, epoch=2, metrics={"val_loss": 0.25}, config_fingerprint="abc",
                              world_size=1, extra={"wandb_run_id": "run42", "a_much_longer_extra_key": 7})
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def test_inspect_checkpoint_labels_keep_a_space_after_long_keys(tmp_path, capsys) -> None:
    folder = _checkpoint(tmp_path / "step-30")
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith("wandb_run_id:") and line.split(":", 1)[1].startswith(" ")
               and line.endswith("run42") for line in lines), out
    assert any(line.startswith("a_much_longer_extra_key: ") for line in lines), out
    # One column for every label: values start at the same offset.
    labelled = [line for line in lines if not line.startswith(" ")]
    starts = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in labelled}
    assert len(starts) == 1, labelled


def test_inspect_broken_checkpoint_prints_its_report_and_exits_1(tmp_path, capsys) -> None:
    folder = _checkpoint(tmp_path / "step-30")
    (folder / "model.safetensors").write_bytes(b"\1" * 64)
    assert main(["inspect", str(folder)]) == EXIT_CHECKPOINT_BROKEN == 1
    captured = capsys.readouterr()
    assert "BROKEN" in captured.out and "model.safetensors" in captured.out
    assert captured.err == ""


# --------------------------------------------------------------------------- empty audio files


def test_empty_audio_files_are_rejected_as_empty(tmp_path) -> None:
    from gsv_accel.audio import SpectrogramConfig
    from gsv_accel.data.features import audio_features
    from gsv_accel.data.import_gsv import official_row_features
    from gsv_accel.data.listfile import REJECT_CODES

    spec = SpectrogramConfig().__dict__
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    no_samples = tmp_path / "no_samples.wav"
    soundfile.write(no_samples, np.zeros(0, np.float32), 32000)
    for line, file in enumerate((zero_bytes, no_samples), start=1):
        row = {"line": line, "file": str(file), "reject_code": "", "reject_reason": ""}
        result = audio_features(row, spec)
        assert result["reject_code"] == "empty", result["reject_reason"]
        assert "empty" in result["reject_reason"] and str(file) in result["reject_reason"]
    assert "empty" in REJECT_CODES["empty"]

    exp = tmp_path / "exp"
    (exp / "5-wav32k").mkdir(parents=True)
    (exp / "5-wav32k" / "a.wav").write_bytes(b"")
    row = {"line": 1, "name": "a.wav", "phone_ids": [1, 2]}
    result = official_row_features(row, str(exp), spec, None)
    assert result["reject_code"] == "empty" and "empty" in result["reject_reason"]
