"""Speaker-verification embedding for GPT-SoVITS v2Pro/v2ProPlus (ERes2NetV2 `forward3`).

Public API (other modules code against these names):

- `SV_SAMPLE_RATE` (16000): the rate the encoder's features are computed at.
- `SpeakerEncoder.from_pretrained(path, device="cpu")`: load `pretrained_eres2netv2w24s4ep4.ckpt` (or any
  plain ERes2NetV2 state dict, .ckpt/.pt/.pth/.safetensors); `SpeakerCheckpointError` (a ValueError) if not.
- `SpeakerEncoder.embedding_dim` (20480 for the released model), `embed_32k(waves)` (32 kHz audio in
  [-1, 1] -> (B, embedding_dim), the official 2-get-sv.py pipeline), `embed_fbank(fbank)` ((B, T, 80) ->
  (B, embedding_dim)).
- `resample_32k_to_16k(wave)` and `kaldi_fbank(wave_16k)`: the pipeline's two feature steps.
"""

from .encoder import SpeakerCheckpointError, SpeakerEncoder, infer_constructor_kwargs
from .eres2netv2 import ERes2NetV2
from .features import SV_SAMPLE_RATE, kaldi_fbank, resample_32k_to_16k, sinc_resample

__all__ = [
    "SV_SAMPLE_RATE",
    "ERes2NetV2",
    "SpeakerCheckpointError",
    "SpeakerEncoder",
    "infer_constructor_kwargs",
    "kaldi_fbank",
    "resample_32k_to_16k",
    "sinc_resample",
]
