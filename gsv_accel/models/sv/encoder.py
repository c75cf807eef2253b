"""`SpeakerEncoder`: an ERes2NetV2 that loads the released file and runs the whole 2-get-sv.py pipeline."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from .eres2netv2 import ERes2NetV2
from .features import kaldi_fbank, resample_32k_to_16k

# The official constructor's argument names, as the reference fixtures store them, mapped to ours.
_OFFICIAL_KWARG_NAMES = {"baseWidth": "base_width"}
_OFFICIAL_ONLY_DEFAULTS = {"pooling_func": "TSTP", "two_emb_layer": False}
_CONSTRUCTOR_KWARGS = ("m_channels", "base_width", "scale", "expansion", "feat_dim", "embedding_size",
                       "num_blocks")


class SpeakerCheckpointError(ValueError):
    """The file is not a state dict of an ERes2NetV2 speaker encoder (or one we can load)."""


class SpeakerEncoder(ERes2NetV2):
    """GPT-SoVITS's speaker-verification embedding (ERes2NetV2 `forward3`) for v2Pro/v2ProPlus.

    It *is* an `ERes2NetV2` (not a wrapper), so its state dict is the released checkpoint's, key for key.
    `embed_32k` reproduces `prepare_datasets/2-get-sv.py` and inference's `SV.compute_embedding3`:
    32 kHz -> 16 kHz (torchaudio's resampler), 80-bin Kaldi fbank, `embed`. The official code runs one
    utterance at a time; different lengths are never padded together here, because zero padding would
    change both the convolutions at the edges and the time average.
    """

    #: At most this many equal-length utterances go through the network together (bounds memory).
    max_batch: int = 16

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SpeakerEncoder:
        """Load a plain ERes2NetV2 state dict (.ckpt/.pt/.pth or .safetensors); eval mode, no grad needed.

        The architecture is read from safetensors metadata `constructor_kwargs` (JSON; the official
        `baseWidth` spelling is accepted) when present, else inferred from the tensor shapes. Raises
        `SpeakerCheckpointError` (a ValueError) naming the file and the first missing/unexpected key.
        """
        path = Path(path)
        state, kwargs = _read_state_dict(path)
        try:
            if kwargs is None:
                kwargs = infer_constructor_kwargs(state)
            model = cls(**kwargs)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            # Name the first missing/unexpected key against the default architecture (built on the meta
            # device: no memory); if the keys look right, the shapes were inconsistent.
            with torch.device("meta"):
                _check_keys(path, ERes2NetV2().state_dict(), state, shapes=False)
            raise SpeakerCheckpointError(f"{path}: not a consistent ERes2NetV2 state dict ({exc!r})") from exc
        _check_keys(path, model.state_dict(), state)
        model.load_state_dict(state, strict=True)
        return model.to(device).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def embed_fbank(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, 80) equal-length Kaldi fbanks -> (B, embedding_dim) float32, in eval mode without grad."""
        if fbank.dim() == 2:
            fbank = fbank.unsqueeze(0)
        with _eval_no_grad(self):
            dtype = self.conv1.weight.dtype
            return self.embed(fbank.to(device=self.device, dtype=dtype)).float()

    def embed_32k(self, waves: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """32 kHz float waveforms in [-1, 1] -> (B, embedding_dim) float32, as 2-get-sv.py computes them.

        `waves`: a list of 1-D tensors of any lengths, a (B, N) tensor, or one 1-D tensor (B = 1).
        Waveforms of equal length are processed together; the result equals one-at-a-time embedding.
        """
        if isinstance(waves, torch.Tensor):
            if waves.dim() not in (1, 2):
                raise ValueError(f"expected a 1-D waveform or a (B, N) batch, got shape {tuple(waves.shape)}")
            waves = [waves] if waves.dim() == 1 else list(waves)
        waves = [torch.as_tensor(w) for w in waves]
        for i, w in enumerate(waves):
            if w.dim() != 1:
                raise ValueError(f"waveform {i} must be 1-D, got shape {tuple(w.shape)}")
            if math.ceil(w.shape[0] / 2) < 400:
                raise ValueError(f"waveform {i} has {w.shape[0]} samples: at least 799 (25 ms) are needed")
        out = torch.empty(len(waves), self.embedding_dim, dtype=torch.float32, device=self.device)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(waves):
            by_length.setdefault(w.shape[0], []).append(i)
        with _eval_no_grad(self):
            for same_length in by_length.values():
                for start in range(0, len(same_length), self.max_batch):
                    idx = same_length[start : start + self.max_batch]
                    batch = torch.stack([waves[i] for i in idx]).to(device=self.device, dtype=torch.float32)
                    out[idx] = self.embed_fbank(kaldi_fbank(resample_32k_to_16k(batch)))
        return out


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    if not path.is_file():
        raise FileNotFoundError(f"speaker encoder file not found: {path}")
    kwargs = None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
            if "constructor_kwargs" in metadata:
                kwargs = _constructor_kwargs_from_metadata(path, json.loads(metadata["constructor_kwargs"]))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except SpeakerCheckpointError:
        raise
    except Exception as exc:  # unreadable, or a pickle that weights_only refuses
        reason = f"{type(exc).__name__}: {exc}"
        raise SpeakerCheckpointError(f"{path}: cannot read a state dict ({reason})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpeakerCheckpointError(f"{path}: expected a plain state dict (name -> tensor), got "
                                     f"{type(state).__name__}")
    return dict(state), kwargs


def _constructor_kwargs_from_metadata(path: Path, raw: Mapping) -> dict:
    """Our constructor's arguments from metadata in our names or the official ones (e.g. `baseWidth`)."""
    kwargs = {}
    for name, value in raw.items():
        if name in _OFFICIAL_ONLY_DEFAULTS:  # official options we implement only at their defaults
            if value != _OFFICIAL_ONLY_DEFAULTS[name]:
                raise SpeakerCheckpointError(f"{path}: unsupported {name}={value!r}")
            continue
        name = _OFFICIAL_KWARG_NAMES.get(name, name)
        if name not in _CONSTRUCTOR_KWARGS:
            raise SpeakerCheckpointError(f"{path}: unknown constructor_kwargs entry {name!r}")
        kwargs[name] = value
    return kwargs


def _check_keys(path: Path, expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                shapes: bool = True) -> None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first {unexpected[0]!r}")
        raise SpeakerCheckpointError(f"{path} is not an ERes2NetV2 state dict: {'; '.join(parts)}")
    for k, v in expected.items() if shapes else ():
        if found[k].shape != v.shape:
            raise SpeakerCheckpointError(f"{path}: {k!r} has shape {tuple(found[k].shape)}, the model built "
                                         f"from it expects {tuple(v.shape)}")


def infer_constructor_kwargs(state: Mapping[str, torch.Tensor]) -> dict:
    """ERes2NetV2 constructor arguments that give `state`'s shapes (KeyError if a needed key is absent)."""
    m = state["conv1.weight"].shape[0]
    num_blocks = [sum(1 for k in state if k.startswith(f"layer{i}.") and k.endswith(".conv1.weight"))
                  for i in range(1, 5)]
    scale = sum(1 for k in state if k.startswith("layer1.0.convs.") and k.endswith(".weight"))
    expansion = state["layer1.0.conv3.weight"].shape[0] // m
    widths = [state[f"layer{i}.0.convs.0.weight"].shape[0] for i in range(1, 5)]
    # width = floor(planes * base_width / 64) with planes = m, 2m, 4m, 8m; only the widths matter, so take
    # the smallest base_width that gives all four.
    base_width = next((bw for bw in range(1, 64 * (widths[0] + 1) // m + 2)
                       if all(w == (m << i) * bw // 64 for i, w in enumerate(widths))), None)
    if base_width is None:
        raise ValueError(f"no base width gives the block widths {widths} for m_channels {m}")
    seg_in, embedding_size = state["seg_1.weight"].shape[1], state["seg_1.weight"].shape[0]
    # seg_1 takes mean and std of 8 * m * expansion channels x int(feat_dim / 8) rows.
    feat_dim = 8 * (seg_in // (16 * m * expansion))
    return {"m_channels": m, "base_width": base_width, "scale": scale, "expansion": expansion,
            "feat_dim": feat_dim, "embedding_size": embedding_size, "num_blocks": num_blocks}


@contextlib.contextmanager
def _eval_no_grad(module: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode without autograd, restoring the module's train/eval state afterwards."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)
