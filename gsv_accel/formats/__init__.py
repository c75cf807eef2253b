"""GPT-SoVITS weight files (temporary shim while formats.py is split into a package: every name of
the former module, re-exported from the one module it currently lives in)."""

from . import exports as _exports

globals().update({k: v for k, v in vars(_exports).items() if not k.startswith("__")})
__all__ = list(_exports.__all__)
