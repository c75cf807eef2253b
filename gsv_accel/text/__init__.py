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

Chinese special pause marks (official behaviour): a line containing ``￥`` or ``^`` has that mark
read as a comma, and then every comma phone of the line becomes ``SP2`` (``￥``) or ``SP3`` (``^``).
Note that the official ``1-get-text.py`` replaces ``￥`` by ``,`` and ``%`` by ``-`` before calling
``clean_text``; that is the caller's (dataset preparation's) business, not done here.
"""

from __future__ import annotations

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

__all__ = [
    "SUPPORTED_LANGUAGES",
    "MixedLanguageError",
    "TextFrontendError",
    "UnknownPhoneError",
    "UnknownWordError",
    "UnsupportedLanguageError",
    "clean_text",
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


def clean_text(
    text: str,
    lang: str,
    version: str = "v2",
    *,
    english_in_zh: str = "error",
    oov: str = "guess",
) -> tuple[list[str], list[int] | None, str]:
    """Normalise ``text`` and convert it to phones.

    ``english_in_zh`` ("error" or "drop"): what to do with Latin-script words in a Chinese line;
    "drop" deletes them, as the official training pipeline does. ``oov`` ("guess", "spell" or
    "error"): how English words missing from the CMU dictionary are handled (see
    :mod:`gsv_accel.text.english`).
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown version {version!r}; expected one of {VERSIONS}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    code = normalize_language(lang)
    if code == "zh":
        from . import chinese

        pause = next((p for mark, p in _ZH_SPECIAL_PAUSES if mark in text), None)
        if pause is not None:
            for mark, _ in _ZH_SPECIAL_PAUSES:
                text = text.replace(mark, ",")
        phones, word2ph, norm_text = chinese.clean(text, version, english_in_zh)
        if pause is not None:
            phones = [pause if p == "," else p for p in phones]
    else:
        from . import english

        phones, word2ph, norm_text = english.clean(text, oov)
    if not phones:
        raise TextFrontendError(f"{text!r} ({code}) has no pronounceable content after normalisation")
    phones_to_ids(phones, version)  # every phone must exist in the table: raises naming the others
    return phones, word2ph, norm_text


def text_to_phone_ids(text: str, lang: str, version: str = "v2", **options: str) -> list[int]:
    """``clean_text`` followed by :func:`phones_to_ids` (options as for ``clean_text``)."""
    phones, _, _ = clean_text(text, lang, version, **options)
    return phones_to_ids(phones, version)
