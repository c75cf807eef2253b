"""Text frontend: transcript lines -> GPT-SoVITS phones and phone ids.

``clean_text(text, lang, version)`` returns ``(phones, word2ph, norm_text)`` like the official
``text.cleaner.clean_text``:

* ``phones``: phone strings of the ``version`` symbol table ("v1" or "v2");
* ``word2ph``: for Chinese and Cantonese, the number of phones of each character of ``norm_text``
  (2 per character, 1 per punctuation mark; ``len(word2ph) == len(norm_text)``, ``sum(word2ph) ==
  len(phones)``), used to spread BERT features over Chinese phones; ``None`` for English, Japanese
  and Korean, as officially (and for a line mixing languages);
* ``norm_text``: the normalised text (numbers spelled out, punctuation mapped).

``text_to_phone_ids`` goes on to ids (the index of each phone in the symbol table).

Language codes are those of GPT-SoVITS ``.list`` files, in any letter case: ``zh``, ``en``, ``ja``
(also ``jp``), ``ko``, ``yue`` (the codes the official ``1-get-text.py`` accepts), and ``auto``
(a gsv_accel extension: the official training script refuses it, its inference reads it): the line
is split into Chinese, Japanese, Korean and English runs by script (:mod:`gsv_accel.text.lang_split`)
and each run goes through its own frontend. ``ko`` and ``yue`` need the v2 symbol table. Any other
code raises :class:`UnsupportedLanguageError` (the official frontend would silently turn it into a
blank English line). Frontends: :mod:`~gsv_accel.text.chinese`, :mod:`~gsv_accel.text.english`,
:mod:`~gsv_accel.text.japanese` (pyopenjtalk-plus), :mod:`~gsv_accel.text.korean` (g2pk2,
python-mecab-ko, jamo), :mod:`~gsv_accel.text.cantonese` (ToJyutping); the packages of the last
three are imported on first use, and a missing one raises :class:`MissingPackageError` naming it.
A character a frontend cannot pronounce (a letter or digit it has no reading for) raises
:class:`UnknownCharacterError` naming it, where the official frontend would write ``UNK`` or
``停``, or drop it.

Mixed Chinese/English lines (``zh`` and ``yue`` lines with Latin-script words), option ``english_in_zh``:

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

A ``zh`` line without Latin letters is one Chinese segment in every mode. ``yue`` lines follow the
same policy (the official ``1-get-text.py`` drops their Latin letters too). ``ja`` and ``ko`` lines
are one segment each, Latin letters included, as officially: OpenJTalk reads them, the Korean
frontend spells them out in Hangul.

Chinese special pause marks (official behaviour): a line containing ``￥`` or ``^`` has that mark
read as a comma, and then every comma phone of the line becomes ``SP2`` (``￥``) or ``SP3`` (``^``)
(on a mixed line: in every segment, English ones included).
Note that the official ``1-get-text.py`` replaces ``￥`` by ``,`` and ``%`` by ``-`` before calling
``clean_text``; that is the caller's (dataset preparation's) business, not done here.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import (
    MissingPackageError,
    MixedLanguageError,
    TextFrontendError,
    UnknownCharacterError,
    UnknownPhoneError,
    UnknownWordError,
    UnsupportedLanguageError,
)
from .symbols import VERSIONS, phone_to_id, phones_to_ids, symbols

SUPPORTED_LANGUAGES = ("zh", "en", "ja", "ko", "yue", "auto")
LANGUAGE_ALIASES = {"jp": "ja"}
# Languages whose phones only the v2 symbol table holds (the official v1 frontend lacks them too).
V2_ONLY_LANGUAGES = ("ko", "yue")

_ZH_SPECIAL_PAUSES = (("￥", "SP2"), ("^", "SP3"))
ENGLISH_IN_ZH_POLICIES = ("phonemize", "drop", "error")

__all__ = [
    "SUPPORTED_LANGUAGES",
    "ENGLISH_IN_ZH_POLICIES",
    "MissingPackageError",
    "MixedLanguageError",
    "Segment",
    "TextFrontendError",
    "UnknownCharacterError",
    "UnknownPhoneError",
    "UnknownWordError",
    "UnsupportedLanguageError",
    "clean_text",
    "clean_text_segments",
    "joined_word2ph",
    "normalize_language",
    "phone_to_id",
    "phones_to_ids",
    "symbols",
    "text_to_phone_ids",
]


def normalize_language(lang: str) -> str:
    """Map a ``.list`` language code to one of :data:`SUPPORTED_LANGUAGES`; raise for anything else."""
    code = lang.strip().lower() if isinstance(lang, str) else None
    code = LANGUAGE_ALIASES.get(code, code)
    if code in SUPPORTED_LANGUAGES:
        return code
    raise UnsupportedLanguageError(lang, SUPPORTED_LANGUAGES + tuple(LANGUAGE_ALIASES))


class Segment(NamedTuple):
    """One single-language run of a line, as cleaned by its language's frontend."""

    lang: str  # "zh", "en", "ja", "ko" or "yue"
    phones: list[str]
    word2ph: list[int] | None  # per character of norm_text for "zh" and "yue"; None for the others
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
    if code == "auto":
        from .lang_split import split_languages

        runs = split_languages(text)
        # the runs hold one script each, so "error" only fires on a splitting bug
        segments = [_clean_run(run_lang, run_text, version, "error", oov) for run_lang, run_text in runs]
    elif code in ("zh", "yue"):
        from .mixed import split_zh_en

        pause = next((p for mark, p in _ZH_SPECIAL_PAUSES if mark in text), None) if code == "zh" else None
        if pause is not None:
            for mark, _ in _ZH_SPECIAL_PAUSES:
                text = text.replace(mark, ",")
        if english_in_zh == "phonemize":
            runs = [(code if run_lang == "zh" else run_lang, run) for run_lang, run in split_zh_en(text)]
        else:
            runs = [(code, text)]
        # split runs hold no Latin letters: "error" would only fire on a splitting bug
        policy = "error" if english_in_zh == "phonemize" else english_in_zh
        segments = []
        for run_lang, run_text in runs:
            seg = _clean_run(run_lang, run_text, version, policy, oov)
            if pause is not None:
                seg = seg._replace(phones=[pause if p == "," else p for p in seg.phones])
            segments.append(seg)
    else:
        segments = [_clean_run(code, text, version, "error", oov)]
    segments = [seg for seg in segments if seg.phones]
    if not segments:
        raise TextFrontendError(f"{text!r} ({code}) has no pronounceable content after normalisation")
    for seg in segments:  # every phone must exist in the table: raises naming the others
        phones_to_ids(seg.phones, version)
    return segments


def _clean_run(lang: str, text: str, version: str, english_in_zh: str, oov: str) -> Segment:
    """One single-language run through its frontend."""
    if lang in V2_ONLY_LANGUAGES and version != "v2":
        raise UnsupportedLanguageError(lang, ("zh", "en", "ja", "auto"),
                                       f"its phones are not in the {version} symbol table")
    if lang == "en":
        from . import english

        return Segment("en", *english.clean(text, oov))
    if lang == "zh":
        from . import chinese

        return Segment("zh", *chinese.clean(text, version, english_in_zh))
    if lang == "ja":
        from . import japanese

        return Segment("ja", *japanese.clean(text, version))
    if lang == "ko":
        from . import korean

        return Segment("ko", *korean.clean(text, version))
    from . import cantonese

    return Segment("yue", *cantonese.clean(text, english_in_zh))


def joined_word2ph(segments: list[Segment]) -> list[int] | None:
    """word2ph of the whole line: defined only when every segment is Chinese, or every one Cantonese."""
    if len({seg.lang for seg in segments}) == 1 and segments[0].lang in ("zh", "yue"):
        return [n for seg in segments for n in seg.word2ph]
    return None


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
    word2ph = joined_word2ph(segments)
    return phones, word2ph, norm_text


def text_to_phone_ids(text: str, lang: str, version: str = "v2", **options: str) -> list[int]:
    """``clean_text`` followed by :func:`phones_to_ids` (options as for ``clean_text``)."""
    phones, _, _ = clean_text(text, lang, version, **options)
    return phones_to_ids(phones, version)
