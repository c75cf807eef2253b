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


class UnknownCharacterError(TextFrontendError):
    """Characters that the language's frontend cannot pronounce (letters or digits it has no reading for)."""

    def __init__(self, chars: Iterable[str], lang: str, text: str, note: str = ""):
        self.chars = tuple(dict.fromkeys(chars))
        self.lang = lang
        self.text = text
        shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in self.chars)
        super().__init__(f"the {lang} frontend cannot pronounce character(s) {shown} in {text!r}"
                         + (f" ({note})" if note else ""))


class MissingPackageError(TextFrontendError):
    """A language frontend needs a package that is not installed."""

    def __init__(self, package: str, lang: str, module: str):
        self.package = package
        super().__init__(f"the {lang} text frontend needs the PyPI package {package!r} (module {module!r} is "
                         f"not installed): pip install {package}  (or pip install 'gsv_accel[text]')")
