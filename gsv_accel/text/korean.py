"""Korean frontend (``ko``, v2 symbol table): Hangul compatibility jamo as phones, as the official one.

Pipeline (the official ``text/korean.py`` ``g2p``; there is no other normalisation, so the
normalised text is the input):

1. Latin letters are spelled out in Hangul, letter by letter (``mp`` -> 엠피);
2. g2pk2 applies the Korean pronunciation rules (numbers spelled out, liaison, tensification,
   nasalisation, ... using the mecab-ko part-of-speech tags);
3. the result is split into compatibility jamo, and the compound vowels into two (ㅘ -> ㅗㅏ,
   ㅑ -> ㅣㅏ, ...); a g2pk2 slip (ㄹ after 을/를 and a space read ㄹ instead of ㄴ) is undone;
4. a line that ends on a jamo gets a final ``.``; then each character is a phone: a space is
   ``空``, ``：；，、·`` -> ``,``, ``。`` -> ``.``, ``！`` -> ``!``, ``？`` -> ``?``, and any other
   character outside the symbol table is ``停``.

Unknown characters: a letter or digit outside the table at step 4 (Chinese characters, kana, ...)
would be ``停`` officially, a pause where a word is spoken; here it raises
:class:`UnknownCharacterError` naming it. Other marks (``~``, quotes) stay ``停`` as officially.

Packages: ``g2pk2`` (0.0.3, the official one), ``python-mecab-ko`` with its bundled dictionary
(``python-mecab-ko-dic``), ``jamo``. g2pk2 downloads NLTK's CMU dictionary when it is imported
and that is missing; it needs it only to read English words, which step 1 has already spelled
out, so here the download is refused and the English dictionary left empty (nothing is fetched).
"""

from __future__ import annotations

import os
import re
import unicodedata
from functools import cache
from typing import Any

from ._packages import require
from .errors import UnknownCharacterError
from .symbols import symbols

_LATIN_TO_HANGUL = dict(zip(
    "abcdefghijklmnopqrstuvwxyz",
    ("에이 비 시 디 이 에프 지 에이치 아이 제이 케이 엘 엠 "
     "엔 오 피 큐 아르 에스 티 유 브이 더블유 엑스 와이 제트").split(),
    strict=True,
))
# Compound vowels -> two simple ones (the symbol table has only simple jamo).
_DIVIDED_VOWELS = dict(zip("ㅘㅙㅚㅝㅞㅟㅢㅑㅒㅕㅖㅛㅠ",
                           "ㅗㅏ ㅗㅐ ㅗㅣ ㅜㅓ ㅜㅔ ㅜㅣ ㅡㅣ ㅣㅏ ㅣㅐ ㅣㅓ ㅣㅔ ㅣㅗ ㅣㅜ".split(),
                           strict=True))
_MARK_TO_PHONE = {"：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
                  "、": ",", " ": "空"}
_PAUSE = "停"
_LATIN = re.compile("[A-Za-z]")
_FINAL_JAMO = re.compile(r"([\u3131-\u3163])$")


def _no_download(*args: Any, **kwargs: Any) -> bool:
    return False


@cache
def _g2pk2() -> Any:
    """A g2pk2 ``G2p`` built without its import-time NLTK download and its English dictionary."""
    nltk = require("nltk", "g2pk2", "Korean")
    download = nltk.download
    nltk.download = _no_download  # g2pk2 calls it at import when NLTK's cmudict is missing
    try:
        g2pk2 = require("g2pk2", "g2pk2", "Korean")
    finally:
        nltk.download = download
    mecab = require("mecab", "python-mecab-ko", "Korean")
    from g2pk2.utils import get_rule_id2text, parse_table

    # G2p.__init__ would load the CMU dictionary (and try `pip install` when mecab is missing):
    # set its attributes directly. `cmu` is only read for Latin words, which never reach it.
    g2p = g2pk2.G2p.__new__(g2pk2.G2p)
    g2p.use_konlpy, g2p.mecab_path = False, None
    g2p.mecab = mecab.MeCab()
    g2p.table = parse_table()
    g2p.cmu = {}
    g2p.rule2text = get_rule_id2text()
    g2p.idioms_path = os.path.join(os.path.dirname(os.path.abspath(g2pk2.__file__)), "idioms.txt")
    return g2p


def latin_to_hangul(text: str) -> str:
    return _LATIN.sub(lambda m: _LATIN_TO_HANGUL[m.group().lower()], text)


def divide_hangul(text: str) -> str:
    jamo = require("jamo", "jamo", "Korean")
    text = jamo.j2hcj(jamo.h2j(text))
    return "".join(_DIVIDED_VOWELS.get(ch, ch) for ch in text)


def fix_g2pk2_error(text: str) -> str:
    """``ㅇㅡㄹ ㄹ`` / ``ㄹㅡㄹ ㄹ`` -> ``... ㄴ`` (the official correction of g2pk2's 을/를 + ㄹ reading)."""
    out, i = "", 0
    while i < len(text) - 4:
        if text[i:i + 3] in ("ㅇㅡㄹ", "ㄹㅡㄹ") and text[i + 3] == " " and text[i + 4] == "ㄹ":
            out += text[i:i + 3] + " ㄴ"
            i += 5
        else:
            out += text[i]
            i += 1
    return out + text[i:]


def g2p(text: str, version: str = "v2") -> list[str]:
    table = set(symbols(version))
    jamo_text = fix_g2pk2_error(divide_hangul(_g2pk2()(latin_to_hangul(text))))
    jamo_text = _FINAL_JAMO.sub(r"\1.", jamo_text)
    phones = [_MARK_TO_PHONE.get(ch, ch) for ch in jamo_text]
    unknown = [ch for ch in phones if ch not in table and unicodedata.category(ch)[0] in "LN"]
    if unknown:
        raise UnknownCharacterError(unknown, "ko", text, f"the official frontend writes {_PAUSE} for it")
    return [p if p in table else _PAUSE for p in phones]


def clean(text: str, version: str) -> tuple[list[str], None, str]:
    """``(phones, None, text)`` as official ``clean_text(text, "ko")`` (no normalisation step)."""
    return g2p(text, version), None, text
