"""The errors and the warning of `gsv_accel.formats`; every message is meant for the user, as is."""

from __future__ import annotations

__all__ = [
    "GSVFormatError",
    "UnsafeFileError",
    "UnsupportedModelError",
    "IncompatibleWeightsError",
    "OfficialCompatibilityWarning",
]

class GSVFormatError(ValueError):
    """A file gsv_accel cannot use; the message is meant for the user, as is."""


class UnsafeFileError(GSVFormatError):
    """The file pickles a reference to something that could run code; nothing was executed."""


class UnsupportedModelError(GSVFormatError):
    """A real GPT-SoVITS model of a variant gsv_accel does not train yet (v3, v4)."""


class IncompatibleWeightsError(GSVFormatError):
    """The weights do not fit the model/config (version or shape mismatch)."""


class OfficialCompatibilityWarning(UserWarning):
    """An export that the official GPT-SoVITS inference code would not be able to load as is."""
