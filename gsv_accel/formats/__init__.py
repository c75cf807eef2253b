"""GPT-SoVITS weight files: safe loading, version detection, compatibility checks and exports.

One module per job; every name is re-exported here, so `from gsv_accel.formats import ...` is the
public way in:

* `errors`: `GSVFormatError` and its subclasses, `OfficialCompatibilityWarning`;
* `unpickle`: torch's weights-only unpickler with the HParams / AttributeDict / pathlib stand-ins,
  refusing any other pickled global (nothing pickled is ever executed);
* `files`: the file kinds the official tools write and `load_gsv_file`, which reads any of them into
  a `GSVFile` (kind, model role, version, config, epoch/step, ...);
* `versions`: the 2-byte export headers and `detect_version` (v1, v2, v2Pro, v2ProPlus, v3, v4);
* `compat`: `compatibility_problems`, `check_compatibility`, `describe_shape_mismatch`,
  `require_supported`: whether weights fit a `SoVITSConfig`, with messages naming the setting;
* `loading`: `load_weights_into` a model (key adaptation, checks) and its `LoadReport`;
* `exports`: `export_sovits`, `export_gpt`, their names, info strings and the WebUI's weight folders,
  `save_atomic`;
* `summary`: `summarize` and `parameters_by_module`, for `gsv-accel inspect`.
"""

from __future__ import annotations

import torch  # noqa: F401  (kept as `gsv_accel.formats.torch`, as the single module had it)

# Every public name of the former single module. Those outside its __all__ are imported `as`
# themselves: re-exported, without widening `from gsv_accel.formats import *`.
from .compat import check_compatibility, compatibility_problems, require_supported
from .compat import describe_shape_mismatch as describe_shape_mismatch
from .errors import (
    GSVFormatError,
    IncompatibleWeightsError,
    OfficialCompatibilityWarning,
    UnsafeFileError,
    UnsupportedModelError,
)
from .exports import (
    export_gpt,
    export_sovits,
    gpt_export_info,
    gpt_export_name,
    gpt_weight_dir,
    official_pretrained,
    save_atomic,
    sovits_export_info,
    sovits_export_name,
    sovits_inference_config,
    sovits_weight_dir,
)
from .files import KIND_DESCRIPTIONS as KIND_DESCRIPTIONS
from .files import KIND_EXPORT as KIND_EXPORT
from .files import KIND_LIGHTNING as KIND_LIGHTNING
from .files import KIND_PRETRAINED as KIND_PRETRAINED
from .files import KIND_STATE_DICT as KIND_STATE_DICT
from .files import KIND_TRAIN_CHECKPOINT as KIND_TRAIN_CHECKPOINT
from .files import MODEL_GPT as MODEL_GPT
from .files import MODEL_SOVITS_D as MODEL_SOVITS_D
from .files import MODEL_SOVITS_G as MODEL_SOVITS_G
from .files import MODEL_UNKNOWN as MODEL_UNKNOWN
from .files import GSVFile, load_gsv_file
from .loading import LoadReport, load_weights_into
from .summary import parameters_by_module as parameters_by_module
from .summary import summarize as summarize
from .versions import HEADER_VERSIONS, detect_version
from .versions import KNOWN_VERSIONS as KNOWN_VERSIONS
from .versions import UNSUPPORTED_VERSIONS as UNSUPPORTED_VERSIONS
from .versions import VERSION_HEADERS as VERSION_HEADERS

# The former single module's __all__, unchanged (what `from gsv_accel.formats import *` gives).
__all__ = [
    "GSVFormatError",
    "UnsafeFileError",
    "UnsupportedModelError",
    "IncompatibleWeightsError",
    "OfficialCompatibilityWarning",
    "GSVFile",
    "LoadReport",
    "load_gsv_file",
    "detect_version",
    "compatibility_problems",
    "check_compatibility",
    "require_supported",
    "load_weights_into",
    "sovits_inference_config",
    "export_sovits",
    "export_gpt",
    "sovits_export_name",
    "gpt_export_name",
    "sovits_weight_dir",
    "gpt_weight_dir",
    "official_pretrained",
    "sovits_export_info",
    "gpt_export_info",
    "save_atomic",
    "HEADER_VERSIONS",
]
