"""Mandarin frontend: normalised text -> initials/finals with tone digits (opencpop-strict notation).

Pipeline (as the official ``chinese2`` frontend, see the notes on differences below):

1. :func:`text_normalize` (``zh_normalize``): numbers to characters, punctuation mapped onto
   ``! ? … , . -``, every other non-CJK character removed.
2. :func:`g2p`: the text is cut into clauses after each punctuation mark; each clause is segmented
   by jieba (with part-of-speech tags), re-grouped and tone-sandhi'd (``tone_sandhi``); each
   character's pinyin (pypinyin, read word by word so that its phrase dictionary picks the reading
   of polyphones) is split into an initial and a toned final and mapped to the phone set:

   * syllables with an initial keep it; the final is written as in the opencpop-strict table:
     uei -> ui, iou -> iu, uen -> un; after zh ch sh r the vowel i is ``ir`` (zhi -> zh ir), after
     z c s it is ``i0`` (zi -> z i0); ü is ``v`` (ju -> j v, lüe -> l ve);
   * syllables without an initial get a pseudo-initial: ``AA`` / ``EE`` / ``OO`` before a, e, o
     (an -> AA an, er -> EE er), ``y`` for i- and ü- finals (yi -> y i, you -> y ou, yan -> y En,
     ye -> y E, yu -> y v, yuan -> y van), ``w`` for u- finals (wu -> w u, wo -> w o, wei -> w ei).

   ``word2ph`` gives the number of phones of each character of the normalised text: 2 for a
   character (initial + final), 1 for a punctuation mark, so ``len(word2ph) == len(norm_text)`` and
   ``sum(word2ph) == len(phones)``.

Erhua (v2 only, as in the official v2 frontend): a word-final 儿 read er1 becomes er2, and in words
that are not on the "real 儿" list it takes the tone of the preceding syllable.

Differences from the official frontend:

* polyphones: the official v2 frontend runs the g2pW neural model on the whole sentence; this one
  uses pypinyin's word/phrase dictionary on jieba words (the official v1 behaviour). Expect a
  different reading for some polyphonic characters (e.g. 行, 还, 长 in rare contexts);
* the neutral-tone word list and the "real 儿" list are subsets of the official ones;
* jieba instead of jieba_fast (same dictionary, same algorithm);
* Latin letters: see ``english_in_zh`` in :func:`text_normalize`. (Mixed lines are split into
  Chinese and English runs before this module, by ``clean_text_segments``; see ``mixed``.)
"""

from __future__ import annotations

import re

from .errors import MixedLanguageError, TextFrontendError
from .symbols import ZH_FINALS
from .tone_sandhi import apply_sandhi, merge_for_sandhi
from .zh_normalize import LATIN_WORD, PUNCTUATION, map_punctuation, pre_normalize

ENGLISH_IN_ZH_POLICIES = ("error", "drop")

# Words ending in 儿 where 儿 is a full syllable (not the erhua suffix).
REAL_ER_WORDS = frozenset(
    """女儿 男儿 婴儿 幼儿 婴幼儿 孤儿 患儿 少儿 孙儿 侄儿 侄孙儿 妻儿 乞儿 聋儿 拐儿 混血儿 流浪儿
    体弱儿 脑瘫儿 连体儿 红孩儿 花儿 鸟儿 马儿 狗儿 猫儿 虫儿 猪儿 我儿 俺儿 一儿 有儿""".split()
)
ERHUA_WORDS = frozenset("小院儿 胡同儿 范儿 老汉儿 撒欢儿 寻老礼儿 妥妥儿 媳妇儿".split())

_CLAUSE_END = re.compile(r"(?<=[" + re.escape(PUNCTUATION) + r"])")


def text_normalize(text: str, english_in_zh: str = "error") -> str:
    """Normalise Chinese text.

    ``english_in_zh`` says what to do with Latin-script words left after normalisation:
    ``"error"`` raises :class:`MixedLanguageError` naming them; ``"drop"`` deletes them silently,
    as the official training pipeline (``1-get-text.py`` with language "zh") does.
    """
    if english_in_zh not in ENGLISH_IN_ZH_POLICIES:
        raise ValueError(f"english_in_zh must be one of {ENGLISH_IN_ZH_POLICIES}, not {english_in_zh!r}")
    text = pre_normalize(text)
    if english_in_zh == "error":
        words = LATIN_WORD.findall(text)
        if words:
            raise MixedLanguageError(list(dict.fromkeys(words)), text)
    return map_punctuation(text)


# ---------------------------------------------------------------------------------------------
# pinyin -> phones

_RETROFLEX = {"zh", "ch", "sh", "r"}
_DENTAL_SIBILANTS = {"z", "c", "s"}
_FINAL_SPELLING = {"uei": "ui", "iou": "iu", "uen": "un"}
# finals of y- syllables whose vowel is written differently in the phone set
_Y_FINALS = {"ian": "En", "ie": "E"}
_Y_KEEP_I = {"i", "in", "ing"}


def pinyin_to_phones(initial: str, final: str) -> tuple[str, str]:
    """Map a pypinyin (strict) initial and toneless final to the two phones of the syllable.

    >>> pinyin_to_phones("zh", "i"), pinyin_to_phones("", "ian"), pinyin_to_phones("j", "v")
    (('zh', 'ir'), ('y', 'En'), ('j', 'v'))
    """
    if initial:
        if final == "i" and initial in _RETROFLEX:
            return initial, "ir"
        if final == "i" and initial in _DENTAL_SIBILANTS:
            return initial, "i0"
        return initial, _FINAL_SPELLING.get(final, final)
    if not final:
        raise ValueError("empty syllable")
    head = final[0]
    if head == "a":
        return "AA", final
    if head == "e":
        return "EE", final
    if head == "o":
        return "OO", final
    if head == "v":
        return "y", final
    if head == "i":
        if final in _Y_KEEP_I:
            return "y", final
        return "y", _Y_FINALS.get(final, final[1:])
    if head == "u":
        return "w", final if final == "u" else final[1:]
    raise ValueError(f"no phone mapping for the final {final!r}")


def _syllables(word: str) -> list[str]:
    """pypinyin TONE3 syllables (neutral tone = 5) of a word of Chinese characters."""
    from pypinyin import Style, lazy_pinyin

    out = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True, errors=lambda s: [None] * len(s))
    if len(out) != len(word):
        raise TextFrontendError(f"pypinyin returned {len(out)} syllables for {word!r}")
    for char, syl in zip(word, out, strict=True):
        if not syl or not syl[-1].isdigit():
            raise TextFrontendError(f"no pinyin reading for the character {char!r} (in {word!r})")
    return out


def _split_syllable(syl: str) -> tuple[str, str]:
    from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

    return to_initials(syl, strict=True), to_finals_tone3(syl, strict=True, neutral_tone_with_five=True)


def _finals_of(word: str) -> list[str]:
    return [_split_syllable(s)[1] for s in _syllables(word)]


def _segment(clause: str) -> list[tuple[str, str]]:
    import jieba.posseg

    return [(p.word, p.flag) for p in jieba.posseg.lcut(clause)]


def _apply_erhua(word: str, pos: str, finals: list[str]) -> list[str]:
    finals = list(finals)
    if not word.endswith("儿") or len(finals) != len(word):
        return finals
    if finals[-1] == "er1":
        finals[-1] = "er2"
    if word not in ERHUA_WORDS and (word in REAL_ER_WORDS or pos in {"a", "j", "nr"}):
        return finals
    if len(word) >= 2 and finals[-1] in {"er2", "er5"} and word[-2:] not in REAL_ER_WORDS:
        finals[-1] = "er" + finals[-2][-1]
    return finals


def _clause_g2p(hanzi: str, version: str) -> list[tuple[str, str]]:
    """(initial, toned final) for each character of a run of Chinese characters."""
    out: list[tuple[str, str]] = []
    words = merge_for_sandhi(_segment(hanzi), _finals_of)
    for word, pos in words:
        pairs = [_split_syllable(s) for s in _syllables(word)]
        finals = apply_sandhi(word, pos, [f for _, f in pairs])
        if version != "v1":
            finals = _apply_erhua(word, pos, finals)
        out.extend((initial, final) for (initial, _), final in zip(pairs, finals, strict=True))
    if len(out) != len(hanzi):
        raise TextFrontendError(f"segmentation lost characters of {hanzi!r}")
    return out


def g2p(norm_text: str, version: str = "v2") -> tuple[list[str], list[int]]:
    """Phones and word2ph (phones per character) of text already passed through :func:`text_normalize`."""
    valid = frozenset(ZH_FINALS)
    phones: list[str] = []
    word2ph: list[int] = []
    for clause in _CLAUSE_END.split(norm_text):
        if not clause:
            continue
        hanzi = clause.rstrip(PUNCTUATION)
        marks = clause[len(hanzi) :]
        bad = [c for c in hanzi if not "\u4e00" <= c <= "\u9fa5"]
        if bad:
            raise TextFrontendError(f"characters {bad!r} in {norm_text!r} are not normalised Chinese text")
        if hanzi:
            for char, (initial, final) in zip(hanzi, _clause_g2p(hanzi, version), strict=True):
                if len(final) < 2:  # syllabic nasals (hm, hng, ng) have no final in pinyin
                    msg = f"the pinyin of {char!r} (initial {initial!r}, no final) is not in the phone set"
                    raise TextFrontendError(msg)
                tone = final[-1]
                try:
                    ph_initial, ph_final = pinyin_to_phones(initial, final[:-1])
                except ValueError as exc:
                    msg = f"cannot map the pinyin of {char!r} ({initial}{final}): {exc}"
                    raise TextFrontendError(msg) from exc
                if tone not in "12345" or ph_final not in valid:
                    raise TextFrontendError(f"pinyin of {char!r} ({initial}{final}) is not in the phone set")
                phones += [ph_initial, ph_final + tone]
                word2ph.append(2)
        for mark in marks:
            phones.append(mark)
            word2ph.append(1)
    return phones, word2ph


def clean(text: str, version: str = "v2", english_in_zh: str = "error") -> tuple[list[str], list[int], str]:
    norm_text = text_normalize(text, english_in_zh=english_in_zh)
    phones, word2ph = g2p(norm_text, version)
    return phones, word2ph, norm_text
