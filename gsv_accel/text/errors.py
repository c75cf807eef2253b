"""Errors raised by the text frontend. All derive from :class:`TextFrontendError` (a ValueError)."""

from __future__ import annotations

from collections.abc import Iterable


class TextFrontendError(ValueError):
    """Base class: the text cannot be turned into phones."""


class UnsupportedLanguageError(TextFrontendError):
    def __init__(self, lang: object, supported: Iterable[str], note: str = ""):
        self.lang = lang
        self.supported = tuple(supported)
        super().__init__(
            f"language {lang!r} is not supported by the gsv_accel text frontend"
            + (f" ({note})" if note else "")
            + f"; supported language codes: {', '.join(self.supported)} (any letter case)"
        )


class UnknownPhoneError(TextFrontendError):
    def __init__(self, phones: Iterable[str], version: str):
        self.phones = tuple(phones)
        self.version = version
        super().__init__(
            f"phone(s) not in the GPT-SoVITS {version} symbol table: "
            + ", ".join(repr(p) for p in self.phones)
        )


class UnknownWordError(TextFrontendError):
    """An English word not in the pronunciation dictionary (raised only when asked to, oov="error")."""

    def __init__(self, word: str):
        self.word = word
        super().__init__(f"English word {word!r} is not in the CMU pronouncing dictionary")


class MixedLanguageError(TextFrontendError):
    """Latin-script words inside a Chinese line (see ``english_in_zh`` of ``clean_text``)."""

    def __init__(self, words: Iterable[str], text: str):
        self.words = tuple(words)
        self.text = text
        super().__init__(
            "Chinese (zh) text contains Latin-script word(s) "
            + ", ".join(repr(w) for w in self.words)
            + f" in {text!r}. Pass english_in_zh='phonemize' to read them with the English "
            "frontend (the default), or english_in_zh='drop' to delete them as the official "
            "GPT-SoVITS training pipeline does."
        )
