"""`gsv-accel inspect`: analysis (a dict), printing, exit codes, and the console entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from gsv_accel.cli import inspect_path, main
from gsv_accel.formats import load_gsv_file

S2_EXPORT = "s2_small_v2_export.pth"
S1_EXPORT = "s1_small_v2_export.ckpt"


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture
def unsafe_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save({"weight": {"enc_p.proj.weight": torch.zeros(2)}, "config": _RunsShell(f"touch {marker}"),
                "info": "x"}, path)
    return path, marker


def _expected_counts(path):
    state_dict = load_gsv_file(path).state_dict
    total = sum(t.numel() for t in state_dict.values())
    by_module: dict[str, int] = {}
    for key, tensor in state_dict.items():
        top = key.split(".", 1)[0]
        by_module[top] = by_module.get(top, 0) + tensor.numel()
    return total, by_module


def test_inspect_summary_of_sovits_export(reference_file):
    path = reference_file(S2_EXPORT)
    summary = inspect_path(str(path))
    total, by_module = _expected_counts(path)
    assert summary["kind"] == "export"
    assert summary["model"] == "sovits_generator"
    assert summary["version"] == "v2" and summary["supported"]
    assert summary["header"] is None
    assert summary["info"] == load_gsv_file(path).info
    assert summary["num_parameters"] == total
    assert summary["parameters_by_module"] == by_module
    assert sum(summary["parameters_by_module"].values()) == total
    assert summary["dtypes"] == {"float16": total}
    assert summary["config"]["model.version"] == "v2"
    json.dumps(summary)  # plain data


def test_inspect_prints_version_info_and_counts(reference_file, capsys):
    path = reference_file(S2_EXPORT)
    total, by_module = _expected_counts(path)
    info = load_gsv_file(path).info

    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^version:\s+v2\b", out, re.MULTILINE)
    assert info in out
    assert re.search(rf"^parameters:\s+{total}\b", out, re.MULTILINE)
    for name, count in by_module.items():
        assert re.search(rf"^\s+{re.escape(name)}\s+{count}\b", out, re.MULTILINE), name
    assert "float16" in out


def test_inspect_json_output(reference_file, capsys):
    path = reference_file(S1_EXPORT)
    total, _ = _expected_counts(path)
    assert main(["inspect", "--json", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "gpt"
    assert summary["num_parameters"] == total
    assert summary["info"] == load_gsv_file(path).info


def test_inspect_as_a_module_subprocess(reference_file):
    path = reference_file(S2_EXPORT)
    total, _ = _expected_counts(path)
    result = subprocess.run([sys.executable, "-m", "gsv_accel.cli", "inspect", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^version:\s+v2\b", result.stdout, re.MULTILINE)
    assert load_gsv_file(path).info in result.stdout
    assert str(total) in result.stdout


def test_inspect_refuses_unsafe_file_without_traceback(unsafe_file, capsys):
    path, marker = unsafe_file
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert "refusing to load model.pth" in captured.err
    assert "os.system" in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not marker.exists()


def test_inspect_unsafe_file_subprocess(unsafe_file):
    path, marker = unsafe_file
    result = subprocess.run([sys.executable, "-m", "gsv_accel.cli", "inspect", str(path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "os.system" in result.stderr and "could run code" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_inspect_flags_unsupported_header_variant(tmp_path, reference_file, capsys):
    copy = tmp_path / "v3.pth"
    copy.write_bytes(b"03" + reference_file(S2_EXPORT).read_bytes()[2:])
    assert main(["inspect", str(copy)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^version:\s+v3 \(flow matching: train it with recipes/s2_cfm.py", out, re.MULTILINE)
    assert re.search(r"^header:\s+03", out, re.MULTILINE)
    assert copy.read_bytes()[:2] == b"03"


@pytest.mark.parametrize("name, version, header", [
    ("s2_small_v2pro_export.pth", "v2Pro", "05"), ("s2_small_v2proplus_export.pth", "v2ProPlus", "06"),
])
def test_inspect_shows_the_version_of_pro_exports(reference_file, capsys, name, version, header):
    path = reference_file(name)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^version:\s+{version}$", out, re.MULTILINE)
    assert re.search(rf"^header:\s+{header}$", out, re.MULTILINE)
    assert re.search(r"^\s+sv_emb\s+\d+", out, re.MULTILINE)


def test_inspect_missing_and_broken_files(tmp_path, capsys):
    # Bad input: EXIT_CODE_USER_ERROR (see tests/test_cli_errors.py for every case).
    assert main(["inspect", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err
    assert "nope.pth" in err and "Traceback" not in err
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["inspect", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "broken.pth" in err and "Traceback" not in err


def test_cli_requires_a_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code != 0
