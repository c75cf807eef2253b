"""Text frontend: transcript lines -> GPT-SoVITS phones and phone ids.

``clean_text(text, lang, version)`` returns ``(phones, word2ph, norm_text)`` like the official
``text.cleaner.clean_text``:

* ``phones``: phone strings of the ``version`` symbol table ("v1" or "v2");
* ``word2ph``: for Chinese, the number of phones of each character of ``norm_text`` (2 per
  character, 1 per punctuation mark; ``len(word2ph) == len(norm_text)``, ``sum(word2ph) ==
  len(phones)``), used to spread BERT features over phones; ``None`` for English, as officially;
* ``norm_text``: the normalised text (numbers spelled out, punctuation mapped).

``text_to_phone_ids`` goes on to ids (the index of each phone in the symbol table).

Language codes are those of GPT-SoVITS ``.list`` files: ``zh`` / ``ZH`` and ``en`` / ``EN`` /
``En`` (any case). Japanese, Korean and Cantonese (``ja``/``jp``, ``ko``, ``yue``) exist in the
official frontend but are not implemented here: they raise :class:`UnsupportedLanguageError`,
as does any other code (the official frontend would silently turn an unknown code into a blank
English line).

Mixed Chinese/English lines (``zh`` lines with Latin-script words), option ``english_in_zh``:

* ``"phonemize"`` (default): the line is split into Chinese and English runs
  (:func:`gsv_accel.text.mixed.split_zh_en`), each run goes through its own frontend and the phones
  are concatenated, as the official v2 inference does for language ``zh`` ("中英混合").
  :func:`clean_text_segments` returns the runs (:class:`Segment`), so that BERT features can be
  computed for the Chinese ones and zeros used for the English ones, as officially. On such a line
  ``clean_text`` returns the joined phones and normalised texts, and ``word2ph=None`` (it only
  describes Chinese text; use the segments). Each English run is an official English ``clean_text``
  call of its own, so one of fewer than 4 phones gets the leading ``,`` pause too (``我用AI`` ->
  ``... , EY1 AY1``), as officially;
* ``"drop"``: Latin letters are deleted (the official training pipeline, ``1-get-text.py``);
* ``"error"``: :class:`MixedLanguageError` naming the words.

A ``zh`` line without Latin letters is one Chinese segment in every mode.

Chinese special pause marks (official behaviour): a line containing ``￥`` or ``^`` has that mark
read as a comma, and then every comma phone of the line becomes ``SP2`` (``￥``) or ``SP3`` (``^``)
(on a mixed line: in every segment, English ones included).
Note that the official ``1-get-text.py`` replaces ``￥`` by ``,`` and ``%`` by ``-`` before calling
``clean_text``; that is the caller's (dataset preparation's) business, not done here.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import (
    MixedLanguageError,
    TextFrontendError,
    UnknownPhoneError,
    UnknownWordError,
    UnsupportedLanguageError,
)
from .symbols import VERSIONS, phone_to_id, phones_to_ids, symbols

SUPPORTED_LANGUAGES = ("zh", "en")
# Official codes of languages that the official frontend has and this one does not.
KNOWN_UNSUPPORTED = ("ja", "jp", "ko", "yue")

_ZH_SPECIAL_PAUSES = (("￥", "SP2"), ("^", "SP3"))
ENGLISH_IN_ZH_POLICIES = ("phonemize", "drop", "error")

__all__ = [
    "SUPPORTED_LANGUAGES",
    "ENGLISH_IN_ZH_POLICIES",
    "MixedLanguageError",
    "Segment",
    "TextFrontendError",
    "UnknownPhoneError",
    "UnknownWordError",
    "UnsupportedLanguageError",
    "clean_text",
    "clean_text_segments",
    "normalize_language",
    "phone_to_id",
    "phones_to_ids",
    "symbols",
    "text_to_phone_ids",
]


def normalize_language(lang: str) -> str:
    """Map a ``.list`` language code to ``"zh"`` or ``"en"``; raise for anything else."""
    code = lang.strip().lower() if isinstance(lang, str) else None
    if code in SUPPORTED_LANGUAGES:
        return code
    note = ""
    if code in KNOWN_UNSUPPORTED:
        note = "the official GPT-SoVITS frontend has it, gsv_accel does not implement it"
    raise UnsupportedLanguageError(lang, SUPPORTED_LANGUAGES, note)


class Segment(NamedTuple):
    """One single-language run of a line, as cleaned by its language's frontend."""

    lang: str  # "zh" or "en"
    phones: list[str]
    word2ph: list[int] | None  # per character of norm_text for "zh"; None for "en"
    norm_text: str


def clean_text_segments(
    text: str,
    lang: str,
    version: str = "v2",
    *,
    english_in_zh: str = "phonemize",
    oov: str = "guess",
) -> list[Segment]:
    """Normalise ``text`` and convert it to phones, one :class:`Segment` per language run.

    An ``en`` line, and a ``zh`` line without Latin letters or with ``english_in_zh`` "drop" /
    "error", is a single segment. ``oov`` ("guess", "spell" or "error"): how English words missing
    from the CMU dictionary are handled (see :mod:`gsv_accel.text.english`).
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}; expected one of {VERSIONS}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    if english_in_zh not in ENGLISH_IN_ZH_POLICIES:
        raise ValueError(f"english_in_zh must be one of {ENGLISH_IN_ZH_POLICIES}, not {english_in_zh!r}")
    code = normalize_language(lang)
    if code == "en":
        from . import english

        segments = [Segment("en", *english.clean(text, oov))]
    else:
        from . import chinese, english
        from .mixed import split_zh_en

        pause = next((p for mark, p in _ZH_SPECIAL_PAUSES if mark in text), None)
        if pause is not None:
            for mark, _ in _ZH_SPECIAL_PAUSES:
                text = text.replace(mark, ",")
        if english_in_zh == "phonemize":
            runs = split_zh_en(text)
        else:
            runs = [("zh", text)]
        # split runs hold no Latin letters: "error" would only fire on a splitting bug
        zh_policy = "error" if english_in_zh == "phonemize" else english_in_zh
        segments = []
        for run_lang, run_text in runs:
            if run_lang == "zh":
                seg = Segment("zh", *chinese.clean(run_text, version, zh_policy))
            else:
                seg = Segment("en", *english.clean(run_text, oov))
            if pause is not None:
                seg = seg._replace(phones=[pause if p == "," else p for p in seg.phones])
            if seg.phones:
                segments.append(seg)
    if not segments:
        raise TextFrontendError(f"{text!r} ({code}) has no pronounceable content after normalisation")
    for seg in segments:  # every phone must exist in the table: raises naming the others
        phones_to_ids(seg.phones, version)
    return segments


def clean_text(
    text: str,
    lang: str,
    version: str = "v2",
    *,
    english_in_zh: str = "phonemize",
    oov: str = "guess",
) -> tuple[list[str], list[int] | None, str]:
    """Normalise ``text`` and convert it to phones: ``(phones, word2ph, norm_text)``.

    The segments of :func:`clean_text_segments` joined: ``word2ph`` is None unless every segment
    is Chinese (so a mixed line gives None). ``english_in_zh`` ("phonemize", "drop" or "error"):
    what to do with Latin-script words in a Chinese line (see the module doc).
    """
    segments = clean_text_segments(text, lang, version, english_in_zh=english_in_zh, oov=oov)
    phones = [p for seg in segments for p in seg.phones]
    norm_text = "".join(seg.norm_text for seg in segments)
    word2ph = None
    if all(seg.lang == "zh" for seg in segments):
        word2ph = [n for seg in segments for n in seg.word2ph]
    return phones, word2ph, norm_text


def text_to_phone_ids(text: str, lang: str, version: str = "v2", **options: str) -> list[int]:
    """``clean_text`` followed by :func:`phones_to_ids` (options as for ``clean_text``)."""
    phones, _, _ = clean_text(text, lang, version, **options)
    return phones_to_ids(phones, version)
