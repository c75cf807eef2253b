"""Cantonese frontend (``yue``, v2 symbol table): Jyutping initials and toned finals, as the official one.

Pipeline (the official ``text/cantonese.py``):

1. :func:`text_normalize`: the Mandarin number and symbol rules (``zh_normalize.pre_normalize``:
   ``3000`` -> 三零零零, dates, percentages, ...), then punctuation onto ``! ? … , . - '``
   (``：；，、·`` -> ``,``, ``。`` -> ``.``, quotes and brackets -> ``'``, ``～`` -> ``-``, ...),
   and every character that is neither a CJK ideograph (U+4E00-U+9FA5) nor one of ``! ? … , . -``
   is deleted (the ``'`` too);
2. :func:`g2p`: ToJyutping gives each character's Jyutping; each syllable is split into an
   initial and a final with its tone digit, both prefixed ``Y`` to keep them apart from the
   Mandarin phones (``keoi5`` -> ``Yk Yeoi5``; a syllable without an initial repeats its first
   letter as initial: ``aa3`` -> ``Yaa Ya3``; ``ng`` + vowel keeps ``ng``: ``ngo5`` -> ``Yng Yo5``).
   Punctuation marks are phones of their own. ``word2ph``: 2 per character, 1 per mark.

Unknown characters: a character without a Jyutping reading (the official code raises and the
training script skips the line), or a letter/digit that step 1 deletes (kana, Hangul, CJK
extension ideographs such as 𠮩; the official code drops them silently and trains on phones that
miss a spoken word) raises :class:`UnknownCharacterError` naming it. Latin letters are not
deleted here: ``yue`` lines are split into Chinese and English runs like ``zh`` lines (see
``english_in_zh`` in :mod:`gsv_accel.text`), before this module.

Difference: the official normaliser converts traditional characters to simplified ones before
ToJyutping; here the text keeps its characters (ToJyutping reads both, with the same Jyutping for
the test sentences; ``norm_text`` keeps the traditional forms). BERT features of ``yue`` text are
zeros, officially too, so ``norm_text`` feeds nothing else.

Package: ``ToJyutping`` (its dictionary is in the wheel).
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from typing import Any

from ._packages import require
from .errors import MixedLanguageError, UnknownCharacterError
from .zh_normalize import LATIN_WORD, pre_normalize

PUNCTUATION = "!?…,.-"
# Initials (and whole syllables without one) in the order the official splitter tries them:
# the first that starts the syllable wins.
INITIALS = ("aa aai aak aap aat aau ai au ap at ak a p b e ts t dz d kw k gw g f h l m ng n s y w c z j "
            "ong on ou oi ok o uk ung sp spl spn sil").split()
_MARK_MAP = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",", "、": ",",
    "...": "…", "$": ".", "—": "-", "～": "-", "~": "-",
    **dict.fromkeys("“”\"‘’（）()《》【】[]「」", "'"),
}
_MARK_RE = re.compile("|".join(re.escape(k) for k in _MARK_MAP))
_NOT_KEPT = re.compile(r"[^\u4e00-\u9fa5" + re.escape(PUNCTUATION) + r"]+")
_JYUTPING = re.compile(r"^([a-z]+[1-6]+ ?)+$")


@cache
def _tojyutping() -> Any:
    return require("ToJyutping", "ToJyutping", "Cantonese")


def text_normalize(text: str, english_in_zh: str = "drop") -> str:
    """Normalise ``text``; Latin words are deleted (``english_in_zh="drop"``, official) or raise
    :class:`MixedLanguageError` (``"error"``)."""
    text = _MARK_RE.sub(lambda m: _MARK_MAP[m.group()], pre_normalize(text))
    words = LATIN_WORD.findall(text)
    if words and english_in_zh == "error":
        raise MixedLanguageError(list(dict.fromkeys(words)), text)
    text = LATIN_WORD.sub("", text)
    deleted = "".join(_NOT_KEPT.findall(text))
    dropped = [ch for ch in deleted if unicodedata.category(ch)[0] in "LN"]  # letters/digits, not marks
    if dropped:
        raise UnknownCharacterError(dropped, "yue", text, "the official frontend deletes it")
    return _NOT_KEPT.sub("", text)


def _syllable_phones(syllable: str) -> list[str]:
    tone, base = syllable[-1], syllable[:-1]
    for initial in INITIALS:
        if base.startswith(initial):
            if base.startswith("nga"):
                initial = base[:2]
            final = base[len(initial):] or initial[-1]
            return ["Y" + initial, "Y" + final + tone]
    raise UnknownCharacterError([syllable], "yue", syllable, "a Jyutping syllable without a known initial")


def g2p(norm_text: str) -> tuple[list[str], list[int]]:
    phones: list[str] = []
    word2ph: list[int] = []
    unknown = []
    for char, jyutping in _tojyutping().get_jyutping_list(norm_text):
        if all(ch in PUNCTUATION for ch in char):
            phones += list(char)
            word2ph += [1] * len(char)
        elif jyutping is None or not _JYUTPING.match(jyutping):
            unknown.append(char)
        else:
            syllables = jyutping.split()
            for syllable in syllables:
                phones += _syllable_phones(syllable)
            word2ph.append(2 * len(syllables))  # one entry per character of norm_text
    if unknown:
        raise UnknownCharacterError(unknown, "yue", norm_text, "no Jyutping reading")
    return phones, word2ph


def clean(text: str, english_in_zh: str = "drop") -> tuple[list[str], list[int], str]:
    """``(phones, word2ph, norm_text)`` as official ``clean_text(text, "yue")``."""
    norm_text = text_normalize(text, english_in_zh)
    phones, word2ph = g2p(norm_text)
    return phones, word2ph, norm_text
