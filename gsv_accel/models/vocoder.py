"""The vocoders of GPT-SoVITS v3/v4: denormalised CFM mels (B, 100, T) -> waveforms (B, 1, T * hop).

`load_vocoder(version, path) -> (module, output_sampling_rate)`, the module in eval mode, weight norms
folded, gradients off:

* v3: NVIDIA BigVGAN v2 (`gsv_accel.models.bigvgan`), `path` the official folder
  (`pretrained_models/models--nvidia--bigvgan_v2_24khz_100band_256x`, holding `config.json` and
  `bigvgan_generator.pt`, a dict whose `generator` entry is the state dict, weight-normalised or
  folded) or that `.pt` file inside it; 24 kHz, hop 256.
* v4: the HiFi-GAN `Generator` of the official inference (`HiFiGANGenerator` with 100 input
  channels, upsampling 10-6-2-2-2 with kernels 20-12-4-4-4, residual blocks "1" with kernels 3/7/11 and
  dilations 1/3/5, a bias on the last convolution), `path` its weight-norm-folded state dict
  `gsv-v4-pretrained/vocoder.pth`; 48 kHz, hop 480. The input and first-stage widths are read from the
  file (`conv_pre.weight`: 100 and 512 in the official file), so a narrower random vocoder of the same
  layout (`demo/tiny_vocoder_v4`) loads too.

Both load strictly: a file that is not the vocoder raises `VocoderFileError` (a ValueError) naming the
file and the first missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from gsv_accel.models.bigvgan import BigVGAN, BigVGANConfig
from gsv_accel.models.sovits.modules import HiFiGANGenerator

V4_SAMPLING_RATE = 48000
BIGVGAN_WEIGHTS = "bigvgan_generator.pt"
BIGVGAN_CONFIG = "config.json"


class VocoderFileError(ValueError):
    """A vocoder file that cannot be loaded (missing, unreadable, or not the expected weights)."""


def v4_vocoder(initial_channel: int = 100, upsample_initial_channel: int = 512) -> HiFiGANGenerator:
    """The v4 vocoder's architecture (weight-normalised, as built before `remove_weight_norm()`)."""
    return HiFiGANGenerator(initial_channel, "1", [3, 7, 11], [[1, 3, 5]] * 3, [10, 6, 2, 2, 2],
                            upsample_initial_channel, [20, 12, 4, 4, 4], gin_channels=0, is_bias=True)


def _read(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise VocoderFileError(f"{path}: not a readable PyTorch file: {err}") from err


def _load_strict(module: nn.Module, state: object, path: Path) -> None:
    """`load_state_dict(strict=True)` with an error naming the file and the first bad key."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VocoderFileError(f"{path}: not a vocoder state dict (expected a dict of tensors)")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shaped = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    for kind, keys in (("missing key", missing), ("unexpected key", unexpected), ("mis-shaped key", shaped)):
        if keys:
            detail = (f" ({tuple(state[keys[0]].shape)} in the file, {tuple(expected[keys[0]].shape)} "
                      "expected)") if kind == "mis-shaped key" else ""
            raise VocoderFileError(f"{path}: not the vocoder this needs: {kind} {keys[0]!r}{detail} "
                                   f"({len(missing)} missing, {len(unexpected)} unexpected, "
                                   f"{len(shaped)} mis-shaped)")
    module.load_state_dict(state, strict=True)


def load_v4_vocoder(path: str | os.PathLike) -> HiFiGANGenerator:
    path = Path(path)
    if not path.is_file():
        raise VocoderFileError(f"{path}: no such file (the v4 vocoder is gsv-v4-pretrained/vocoder.pth)")
    state = _read(path)
    pre = state.get("conv_pre.weight") if isinstance(state, dict) else None
    if not isinstance(pre, torch.Tensor) or pre.dim() != 3:
        model = v4_vocoder()
    else:
        model = v4_vocoder(pre.size(1), pre.size(0))
    model.remove_weight_norm()
    _load_strict(model, state, path)
    return model


def load_v3_vocoder(path: str | os.PathLike) -> BigVGAN:
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = folder / BIGVGAN_WEIGHTS if path.is_dir() else path
    config_file = folder / BIGVGAN_CONFIG
    for needed in (weights, config_file):
        if not needed.is_file():
            raise VocoderFileError(f"{needed}: no such file (the v3 vocoder is the BigVGAN folder "
                                   "models--nvidia--bigvgan_v2_24khz_100band_256x)")
    try:
        cfg = BigVGANConfig.from_dict(json.loads(config_file.read_text()))
    except (ValueError, TypeError) as err:
        raise VocoderFileError(f"{config_file}: not a BigVGAN config: {err}") from err
    checkpoint = _read(weights)
    if not isinstance(checkpoint, dict) or "generator" not in checkpoint:
        raise VocoderFileError(f"{weights}: not a BigVGAN checkpoint (no 'generator' entry)")
    state = checkpoint["generator"]
    model = BigVGAN(cfg)
    # Released checkpoints keep the weight norms (weight_g / weight_v); a folded one has plain weights.
    if isinstance(state, dict) and not any(k.endswith(".weight_g") for k in state):
        model.remove_weight_norm()
    _load_strict(model, state, weights)
    model.remove_weight_norm()
    return model


def load_vocoder(version: str, path: str | os.PathLike) -> tuple[nn.Module, int]:
    """The `version`'s vocoder from `path` (see the module doc) and its output sampling rate. Built on
    a forked RNG (module construction draws initial weights), so loading it never changes a training
    run's random stream."""
    if version not in ("v3", "v4"):
        raise ValueError(f"vocoders exist for v3 and v4 only, got {version!r}")
    with torch.random.fork_rng():
        if version == "v3":
            model: nn.Module = load_v3_vocoder(path)
            rate = model.sampling_rate
        else:
            model = load_v4_vocoder(path)
            rate = V4_SAMPLING_RATE
    return model.eval().requires_grad_(False), rate
