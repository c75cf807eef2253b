"""Japanese frontend (``ja``): OpenJTalk phones with accent/prosody marks, as the official v2 frontend.

Pipeline (the official ``text/japanese.py`` with ``with_prosody=True``):

1. :func:`text_normalize`: a run of the marks ``! ? … , . -`` keeps only its first one.
2. :func:`g2p`: ``％`` is read パーセント and Latin letters are lower-cased; the text is cut at every
   character that is not "Japanese" (ASCII letters and digits, 々, kana, CJK ideographs, full-width
   digits １-９ and letters, half-width katakana). Each Japanese run goes through OpenJTalk
   (``pyopenjtalk.run_frontend`` + ``make_label``); its full-context labels give the phones (unvoiced
   vowels written as voiced ones, ``cl`` for the geminate stop, ``N`` for the moraic nasal), a pause
   ``_`` between accent phrases, and the prosody marks ``#`` (accent-phrase boundary), ``[`` (pitch
   rise) and ``]`` (pitch fall); the run's leading/trailing silences are dropped. Each cut
   character is kept as a phone of its own (spaces are dropped): ``、`` ``，`` ``：`` ``；`` ``·`` ->
   ``,``, ``。`` -> ``.``, ``！`` -> ``!``, ``？`` -> ``?``.
3. A phone outside the symbol table becomes ``UNK``, as official ``clean_text`` does: the pause ``_``
   (not in the table, so every accent-phrase pause is ``UNK`` in official training data too) and
   marks such as ``「`` ``」``.

Unknown characters: a cut character that is a letter or a digit (Hangul, Cyrillic, ``０``, ...)
has no reading here; the official frontend turns it into ``UNK`` and trains on a phone sequence
that misses a spoken word. Here it raises :class:`UnknownCharacterError` naming it (a reject in
``prepare``).

Package: ``pyopenjtalk-plus``, whose wheel ships the OpenJTalk dictionary (the plain ``pyopenjtalk``
the official requirements name downloads its dictionary on first use, which gsv_accel never does).
It imports as ``pyopenjtalk``; its optional ONNX reading model for 何 is not used (onnxruntime is
not required; the expected phones of the tests were made without it). Its dictionary and reading
rules are an extended version of the plain one's, so a word may be read differently from an
official install with plain pyopenjtalk.
The official user dictionary (``text/ja_userdic/userdict.csv``, empty in the official release)
is not supported.
"""

from __future__ import annotations

import contextlib
import io
import re
import unicodedata
from functools import cache
from typing import Any

from ._packages import require
from .errors import UnknownCharacterError
from .symbols import symbols

_PUNCTUATION = "!?…,.-"
_JAPANESE = r"A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d"
_JAPANESE_CHAR = re.compile(f"[{_JAPANESE}]")
_MARK = re.compile(f"[^{_JAPANESE}]")
_REPEATED_PUNCT = re.compile(f"([{re.escape(_PUNCTUATION)}])[{re.escape(_PUNCTUATION)}]+")
_MARK_TO_PHONE = {"：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?", "\n": ".", "·": ",",
                  "、": ","}


@cache
def _openjtalk() -> Any:
    # pyopenjtalk-plus prints a notice on stdout at import when onnxruntime (its optional reading
    # model for 何) is absent; the official reference phones were made without it too.
    with contextlib.redirect_stdout(io.StringIO()):
        return require("pyopenjtalk", "pyopenjtalk-plus", "Japanese")


def text_normalize(text: str) -> str:
    """Collapse runs of punctuation marks to their first mark (the only official ja normalisation)."""
    return _REPEATED_PUNCT.sub(r"\1", text)


def _feature(regex: str, label: str) -> int:
    m = re.search(regex, label)
    return -50 if m is None else int(m.group(1))


def prosody_phones(text: str) -> list[str]:
    """Phones and prosody marks of one run of Japanese characters, from OpenJTalk's full-context
    labels (the ESPnet ``pyopenjtalk_g2p_prosody`` rules), without the leading ``^`` and final ``$``/``?``."""
    jtalk = _openjtalk()
    labels = jtalk.make_label(jtalk.run_frontend(text))
    phones: list[str] = []
    for n, label in enumerate(labels):
        p3 = re.search(r"\-(.*?)\+", label).group(1)
        if p3 in "AEIOU":  # unvoiced vowels are written as voiced ones
            p3 = p3.lower()
        if p3 == "sil":  # the utterance's start/end silences (dropped by the caller)
            continue
        if p3 == "pau":
            phones.append("_")
            continue
        phones.append(p3)
        a1 = _feature(r"/A:([0-9\-]+)\+", label)  # mora position relative to the accent nucleus
        a2 = _feature(r"\+(\d+)\+", label)  # mora position in the accent phrase, forward
        a3 = _feature(r"\+(\d+)/", label)  # ... backward
        f1 = _feature(r"/F:(\d+)_", label)  # morae in the accent phrase
        a2_next = _feature(r"\+(\d+)\+", labels[n + 1])
        if a3 == 1 and a2_next == 1 and p3 in "aeiouAEIOUNcl":
            phones.append("#")  # accent-phrase boundary
        elif a1 == 0 and a2_next == a2 + 1 and a2 != f1:
            phones.append("]")  # pitch falls after the accent nucleus
        elif a2 == 1 and a2_next == 2:
            phones.append("[")  # pitch rises after the first mora
    return phones


def g2p(norm_text: str) -> list[str]:
    """Phones of normalised text (marks mapped; not yet checked against the symbol table)."""
    text = norm_text.replace("％", "パーセント").lower()
    runs = _MARK.split(text)
    marks = _MARK.findall(text)
    unknown = [m for m in marks if unicodedata.category(m)[0] in "LN"]
    if unknown:
        raise UnknownCharacterError(unknown, "ja", norm_text, "the official frontend writes UNK for it")
    phones: list[str] = []
    for i, run in enumerate(runs):
        if _JAPANESE_CHAR.match(run):
            phones += prosody_phones(run)
        if i < len(marks) and marks[i] != " ":
            phones.append(_MARK_TO_PHONE.get(marks[i], marks[i]))
    return phones


def clean(text: str, version: str) -> tuple[list[str], None, str]:
    """``(phones, None, norm_text)`` as official ``clean_text(text, "ja")``: phones outside the
    ``version`` symbol table become ``UNK``."""
    norm_text = text_normalize(text)
    table = set(symbols(version))
    phones = [p if p in table else "UNK" for p in g2p(norm_text)]
    return phones, None, norm_text
