"""`gsv-accel prepare` on a list with Japanese, Korean, Cantonese and `auto` lines (demo tiny HuBERT and
BERT): phones as the text frontend gives them, BERT features only for the Chinese runs, and a line
with characters the frontend cannot pronounce rejected with its line number and those characters."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import soundfile
import torch

from gsv_accel.data import prepare as prep
from gsv_accel.text import clean_text, clean_text_segments, text_to_phone_ids
from tests.data.test_prepare import speech_like, write_corpus

pytest.importorskip("pyopenjtalk", reason="pyopenjtalk-plus is not installed (pip install 'gsv_accel[text]')")
pytest.importorskip("g2pk2", reason="g2pk2 is not installed (pip install 'gsv_accel[text]')")
pytest.importorskip("ToJyutping", reason="ToJyutping is not installed (pip install 'gsv_accel[text]')")

DEMO = Path(__file__).resolve().parents[2] / "demo"
LINES = [  # (file, list language code, text, normalised language)
    ("ja.wav", "JP", "こんにちは、世界！", "ja"),
    ("ko.wav", "ko", "안녕하세요. 저는 학교에 갑니다!", "ko"),
    ("yue.wav", "yue", "我哋今日去飲茶，好唔好？", "yue"),
    ("auto.wav", "auto", "我是学生. Nice to meet you! 今日は晴れです。", "auto"),
]
BAD_TEXT = "안녕、元気？"  # Hangul in a Japanese line: line 5


def test_prepare_reads_ja_ko_yue_and_auto_lines(tmp_path):
    root = tmp_path / "corpus"
    (root / "wavs").mkdir(parents=True)
    for seed, (name, _, _, _) in enumerate([*LINES, ("bad.wav", "", "", "")], start=1):
        soundfile.write(root / "wavs" / name, speech_like(1.0 + 0.1 * seed, 32000, seed), 32000)
    lines = [f"wavs/{name}|spk|{code}|{text}" for name, code, text, _ in LINES]
    list_path = write_corpus(root, [*lines, f"wavs/bad.wav|spk|ja|{BAD_TEXT}"])
    out = tmp_path / "out"
    result = prep.prepare(list_path, out, DEMO / "tiny_hubert", bert_dir=DEMO / "tiny_bert",
                          val_fraction=0.25)

    assert [(r.line, r.path, r.code) for r in result.rejected] == [(5, "wavs/bad.wav", "text")]
    reason = result.rejected[0].reason
    assert reason.startswith("line 5:") and "'안'" in reason and "'녕'" in reason
    assert "line 5" in (out / "rejected.tsv").read_text(encoding="utf-8")

    rows = {}
    for split in datasets.load_from_disk(str(out)).values():
        rows.update({row["name"]: row for row in split})
    assert sorted(rows) == sorted(name for name, *_ in LINES)
    hidden = int(torch.tensor(rows["auto.wav"]["bert"]).numel() / len(rows["auto.wav"]["phone_ids"]))
    for name, code, text, lang in LINES:
        row = rows[name]
        phones, word2ph, norm_text = clean_text(text, code)
        assert row["lang"] == lang and row["phones"] == phones and row["text"] == norm_text
        assert row["phone_ids"] == text_to_phone_ids(text, code)
        assert row["word2ph"] == (word2ph or [])
        if lang != "auto":
            assert row["bert"] == []  # no Chinese run: zeros, as officially for ja/ko/yue
    assert rows["yue.wav"]["word2ph"] == [2, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 1]

    # auto: BERT features for the Chinese run only, zeros for the English and Japanese runs
    segments = clean_text_segments(LINES[3][2], "auto")
    assert [s.lang for s in segments] == ["zh", "en", "ja"]
    bert = torch.tensor(rows["auto.wav"]["bert"], dtype=torch.float32).view(hidden, -1)
    n_zh = len(segments[0].phones)
    assert bert[:, :n_zh].abs().sum(0).gt(0).all() and not bert[:, n_zh:].any()
