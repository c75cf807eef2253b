"""Reading GPT-SoVITS pickles without executing anything in them.

Loading goes through torch's weights-only unpickler with a small allowlist on top of torch's own
(tensors, storages, dtypes, OrderedDict, torch.Size, ...):

* any class named `HParams` (GPT-SoVITS' `utils.HParams`, whatever module path it was pickled under)
  is bound to a private record class that only stores the pickled attribute dict; it is converted to
  a plain nested dict right after loading (`_plain`), and the real class is never imported;
* Lightning's `AttributeDict` becomes a plain dict, and pickled `pathlib` paths become pure paths
  (then strings), which never touch the file system.

Any other global (for example `os.system`) makes the load fail with `UnsafeFileError`, naming it.
The 2-byte version headers are replaced by `PK` in memory only: the user's file is never written to.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from .errors import GSVFormatError, UnsafeFileError
from .versions import HEADER_VERSIONS

_ZIP_MAGIC = b"PK\x03\x04"


class _HParamsRecord:
    """Stand-in for GPT-SoVITS' `utils.HParams` during unpickling.

    HParams pickles as "create an empty instance, then set its attribute dict". torch's weights-only
    unpickler can create instances of allowlisted classes and hands the attribute dict to
    `__setstate__`, which is all this class does; `_plain` turns it into a dict afterwards.
    """

    __slots__ = ("state",)

    def __setstate__(self, state: Any) -> None:
        self.state = state


# Globals bound to harmless stand-ins (pickled name -> object the unpickler gets instead).
_REMAPPED_GLOBALS: dict[str, Any] = {
    "utils.HParams": _HParamsRecord,
    "GPT_SoVITS.utils.HParams": _HParamsRecord,
    "lightning.fabric.utilities.data.AttributeDict": dict,
    "lightning_fabric.utilities.data.AttributeDict": dict,
    "pytorch_lightning.utilities.parsing.AttributeDict": dict,
    "lightning.pytorch.utilities.parsing.AttributeDict": dict,
}
for _module in ("pathlib", "pathlib._local"):
    _REMAPPED_GLOBALS[f"{_module}.PosixPath"] = PurePosixPath
    _REMAPPED_GLOBALS[f"{_module}.PurePosixPath"] = PurePosixPath
    _REMAPPED_GLOBALS[f"{_module}.WindowsPath"] = PureWindowsPath
    _REMAPPED_GLOBALS[f"{_module}.PureWindowsPath"] = PureWindowsPath

# Modules whose names pickle records instead of the public one.
_MODULE_ALIASES = {"posix": "os", "nt": "os", "__builtin__": "builtins"}


def _is_hparams_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "HParams"


def _display_global(name: str) -> str:
    module, _, attr = name.rpartition(".")
    public = _MODULE_ALIASES.get(module)
    if public is not None:
        return f"{public}.{attr} (pickled as {name})"
    return name


def _unsafe_error(path: Path, names: Iterable[str]) -> UnsafeFileError:
    shown = sorted({_display_global(n) for n in names})
    what = "a pickled reference to " + shown[0] if len(shown) == 1 else (
        "pickled references to " + ", ".join(shown))
    return UnsafeFileError(
        f"refusing to load {path.name}: it contains {what}, which could run code; "
        "gsv_accel only loads tensors and plain data"
    )


def _require_safe_globals_api() -> None:
    if not hasattr(torch.serialization, "safe_globals") or not hasattr(
            torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise GSVFormatError(
            f"torch {torch.__version__} is too old to read GPT-SoVITS files safely; "
            "gsv_accel needs torch >= 2.6"
        )


def _open_source(path: Path) -> tuple[str | io.BytesIO, bytes | None, bool]:
    """Return what torch.load should read, the 2-byte version header if any, and whether it is a zip."""
    with open(path, "rb") as f:
        start = f.read(4)
        if len(start) < 4:
            raise GSVFormatError(f"{path.name} is not a PyTorch file: it is only {len(start)} bytes long")
        if start == _ZIP_MAGIC:
            return str(path), None, True
        if start[2:] == _ZIP_MAGIC[2:]:
            header = start[:2]
            if header not in HEADER_VERSIONS:
                raise GSVFormatError(
                    f"{path.name} starts with the unknown 2-byte version header {header!r}; known "
                    f"headers: {', '.join(h.decode() for h in HEADER_VERSIONS)}"
                )
            # Put the zip signature back in memory; the user's file is left as it is.
            data = bytearray(os.fstat(f.fileno()).st_size)
            f.seek(0)
            view = memoryview(data)
            filled = 0
            while filled < len(data):
                count = f.readinto(view[filled:])
                if not count:
                    break
                filled += count
            view.release()
            del data[filled:]
            data[:2] = b"PK"
            return io.BytesIO(data), header, True
    # Not a zip: maybe torch's legacy (pre-1.6) format, which torch.load also reads weights-only.
    return str(path), None, False


def _unpickle_safely(path: Path) -> tuple[Any, bytes | None]:
    _require_safe_globals_api()
    source, header, is_zip = _open_source(path)
    allow: dict[str, Any] = dict(_REMAPPED_GLOBALS)
    if is_zip:
        # Static scan of the pickle's GLOBAL opcodes (nothing is executed) to find every class or
        # function the file names, so that unknown ones can be refused by name up front.
        with torch.serialization.safe_globals([(obj, name) for name, obj in allow.items()]):
            try:
                unknown = torch.serialization.get_unsafe_globals_in_checkpoint(source)
            except (RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as err:
                raise _unreadable(path, err) from err
        if isinstance(source, io.BytesIO):
            source.seek(0)
        for name in unknown:
            if _is_hparams_name(name):
                allow[name] = _HParamsRecord
        refused = [name for name in unknown if name not in allow]
        if refused:
            raise _unsafe_error(path, refused)
    with torch.serialization.safe_globals([(obj, name) for name, obj in allow.items()]):
        try:
            obj = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            names = re.findall(r"GLOBAL (\S+)", str(err))
            if names:
                raise _unsafe_error(path, names[:1]) from None
            if not is_zip:
                raise GSVFormatError(
                    f"{path.name} is not a PyTorch checkpoint: it is not a zip file, and reading it as "
                    f"torch's legacy format failed ({_last_error_line(err)})"
                ) from None
            raise GSVFormatError(
                f"refusing to load {path.name}: it uses pickle features gsv_accel does not load "
                f"({_last_error_line(err)}); gsv_accel only loads tensors and plain data"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError,
                AttributeError) as err:
            # Malformed data that passed the allowlist (e.g. wrong argument types): unreadable.
            raise _unreadable(path, err) from err
    return obj, header


def _unreadable(path: Path, err: BaseException) -> GSVFormatError:
    return GSVFormatError(f"{path.name} is not a readable PyTorch file ({_first_line(err)})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _last_error_line(err: BaseException) -> str:
    """The unpickler's own reason inside torch's long weights-only error text."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:Check the documentation|$)", text, re.DOTALL)
    if match:
        text = match.group(1)
    text = " ".join(text.split())
    return text or type(err).__name__


def _plain(obj: Any) -> Any:
    """Recursively replace HParams records, mappings, tuples-of-data and paths by plain values.

    Tensors are left as they are; mappings become dicts (keeping their order).
    """
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, _HParamsRecord):
        state = getattr(obj, "state", None)
        if state is None:
            return {}
        if not isinstance(state, Mapping):
            raise GSVFormatError(f"a pickled HParams object holds {type(state).__name__}, not a dict")
        return {key: _plain(value) for key, value in state.items()}
    if isinstance(obj, Mapping):
        return {key: _plain(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_plain(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(value) for value in obj)
    if isinstance(obj, PurePath):
        return str(obj)
    return obj
