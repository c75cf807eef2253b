"""`gsv_accel.atomic`: the complete new file or the old one, never a partial one or a stray temp file."""

from __future__ import annotations

import json

import pytest

from gsv_accel.atomic import atomic_write, write_json_atomic, write_text_atomic


def test_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "meta.json"
    write_json_atomic(path, {"name": "é", "n": 1}, ensure_ascii=False)
    assert json.loads(path.read_text(encoding="utf-8")) == {"name": "é", "n": 1}
    assert "é" in path.read_text(encoding="utf-8")
    write_text_atomic(path, "line\r\n")
    assert path.read_bytes() == b"line\r\n"
    atomic_write(path, lambda f: f.write(b"\x00\x01"), binary=True)
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "rejected.tsv"
    path.write_text("old\n", encoding="utf-8")

    def fail(f):
        f.write("half of the new content")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, fail)
    assert path.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rejected.tsv"]
