"""The v3/v4 SoVITS generator (`SynthesizerTrnV3` of GPT-SoVITS): content features -> mel by flow matching.

Data flow, training (`SynthesizerTrnV3.forward`):

    spec y (B, 1025, T) --ref_enc (lowest 704 bins)--> ge (B, gin, 1)        speaker/style embedding
    ssl (B, 768, T) --ssl_proj--> quantizer --x2 nearest--> enc_p(+ phones, ge) --> x (B, 192, T)
          (frozen with freeze_quantizer: no gradient, eval mode; run in fp32 like ref_enc)
    x --bridge--> (B, inter_channels2, T) --nearest x1.875 (v3) / x2 (v4)--> wns1(ge) --> mu (mel rate)
    mel (B, 100, Tm), mu --cfm--> flow-matching loss (prompt = a random first part of each mel)

Inference: `decode_encp(codes, text, refer)` gives mu and ge for semantic codes, and
`cfm.inference(mu^T, lengths, prompt_mel, n_steps)` samples the normalised mel (a vocoder, outside
this model, turns it into audio). `linear_mel` is part of the released weights but unused.

v3 and v4 differ only in the frame rate of the mel (see `CFMFrameRates`), which is data here.
Parameter names follow the official code so `s2Gv3.pth`/`s2Gv4.pth` and v3/v4 exports load key for key.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .cfm import CFM
from .commons import sequence_mask
from .config import SoVITSV3Config
from .dit import DiT
from .generator import TextEncoder
from .modules import WN, MelStyleEncoder
from .quantize import ResidualVectorQuantizer

# The reference embedding reads the lowest 704 of the 1025 linear-spectrogram bins (as v2).
REFERENCE_BINS = 704


def _length_mask(lengths: torch.Tensor, max_length: int, dtype: torch.dtype) -> torch.Tensor:
    return sequence_mask(lengths, max_length).unsqueeze(1).to(dtype)


class FeatureEncoder(nn.Module):
    """`wns1`: 1x1 conv, a conditioned WaveNet stack, 1x1 conv; masked (official `models.Encoder`).

    The conditioning `g` is detached: the reference encoder gets no gradient through this path.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, kernel_size: int,
                 dilation_rate: int, n_layers: int, gin_channels: int = 0) -> None:
        super().__init__()
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WN(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, x_lengths: torch.Tensor, g: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if g is not None:
            g = g.detach()
        x_mask = _length_mask(x_lengths, x.size(2), x.dtype)
        x = self.enc(self.pre(x) * x_mask, x_mask, g=g)
        return self.proj(x) * x_mask, x_mask


class V3TrainOutput(NamedTuple):
    """What the training forward returns; `loss` is what is optimised."""

    loss: torch.Tensor               # CFM loss (scalar)
    prompt_lens: torch.Tensor        # (B,) prompt frames of each item (not in the loss)
    t: torch.Tensor                  # (B,) flow times
    x0: torch.Tensor                 # (B, mel, T) noise
    dt: torch.Tensor                 # (B,) step size given to the estimator (0 without the shortcut)
    n_estimator_calls: int
    mu: torch.Tensor                 # (B, inter_channels2, T) content features given to the CFM


class SynthesizerTrnV3(nn.Module):
    """v3/v4 SoVITS generator built from a `SoVITSV3Config`."""

    def __init__(self, config: SoVITSV3Config | None = None) -> None:
        super().__init__()
        config = config if config is not None else SoVITSV3Config()
        if config.gin_channels != config.mrte_hidden_channels:
            raise ValueError(f"gin_channels ({config.gin_channels}) must equal mrte_hidden_channels "
                             f"({config.mrte_hidden_channels}): MRTE adds the speaker embedding")
        if config.spec_channels < REFERENCE_BINS:
            raise ValueError(f"spec_channels ({config.spec_channels}) must be at least {REFERENCE_BINS}: "
                             f"the reference embedding reads the lowest {REFERENCE_BINS} bins")
        self.config = config
        self.version = config.version
        self.frame_rates = config.frame_rates
        self.freeze_quantizer = config.freeze_quantizer
        self.semantic_upsample = 2 if config.semantic_frame_rate == "25hz" else 1
        gin = config.gin_channels
        width = config.inter_channels2

        # In the official order, which is the key order of the released state dicts.
        self.enc_p = TextEncoder(
            config.inter_channels, config.hidden_channels, config.filter_channels, config.n_heads,
            config.n_layers, config.kernel_size, config.p_dropout, n_symbols=config.n_symbols,
            ssl_dim=config.ssl_dim, mrte_hidden_channels=config.mrte_hidden_channels)
        self.ref_enc = MelStyleEncoder(REFERENCE_BINS, style_hidden=config.ref_enc_hidden,
                                       style_vector_dim=gin)
        self.ssl_proj = nn.Conv1d(config.ssl_dim, config.ssl_dim, self.semantic_upsample,
                                  stride=self.semantic_upsample)
        self.quantizer = ResidualVectorQuantizer(dimension=config.ssl_dim, n_q=1, bins=config.codebook_size)
        self.bridge = nn.Sequential(nn.Conv1d(config.inter_channels, width, 1), nn.LeakyReLU())
        self.wns1 = FeatureEncoder(width, width, width, config.wns1_kernel_size, 1, config.wns1_n_layers,
                                   gin_channels=gin)
        self.linear_mel = nn.Conv1d(width, config.mel_channels, 1)
        self.cfm = CFM(config.mel_channels, DiT(
            dim=config.dit_dim, depth=config.dit_depth, heads=config.dit_heads, dim_head=config.dit_dim_head,
            dropout=config.dit_dropout, ff_mult=config.dit_ff_mult, mel_dim=config.mel_channels,
            text_dim=width, conv_layers=config.dit_conv_layers))

        if self.freeze_quantizer:
            for module in self.frozen_modules():
                module.requires_grad_(False)
        self.train()

    # ------------------------------------------------------------------ helpers

    def frozen_modules(self) -> list[nn.Module]:
        """The modules `freeze_quantizer` freezes (no gradient, always in eval mode)."""
        return [self.ssl_proj, self.quantizer, self.enc_p] if self.freeze_quantizer else []

    def train(self, mode: bool = True) -> SynthesizerTrnV3:
        """As nn.Module.train, except that frozen modules stay in eval mode (no dropout in enc_p, no
        codebook update), as the official forward switches them to eval at every step."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def reference_embedding(self, spec: torch.Tensor, spec_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ge (B, gin, 1) of a linear spectrogram (B, spec_channels, T); no mask: every frame counts."""
        if spec_mask is None:
            spec_mask = spec.new_ones(spec.size(0), 1, spec.size(2))
        return self.ref_enc(spec[:, :REFERENCE_BINS] * spec_mask, spec_mask)

    def _upsample_semantic(self, quantized: torch.Tensor) -> torch.Tensor:
        if self.semantic_upsample == 1:
            return quantized
        return F.interpolate(quantized, scale_factor=self.semantic_upsample, mode="nearest")

    def _to_mel_rate(self, x: torch.Tensor) -> torch.Tensor:
        """Bridge the text encoder's output and resample it (nearest) from 50 Hz to the mel rate."""
        fea = self.bridge(x)
        return F.interpolate(fea, scale_factor=self.frame_rates.feature_upsample, mode="nearest")

    # ------------------------------------------------------------------ training

    def forward(self, ssl: torch.Tensor, y: torch.Tensor, mel: torch.Tensor, ssl_lengths: torch.Tensor,
                y_lengths: torch.Tensor, text: torch.Tensor, text_lengths: torch.Tensor,
                mel_lengths: torch.Tensor, use_grad_ckpt: bool = False,
                rng: random.Random | None = None) -> V3TrainOutput:
        """Training pass; the arguments are the official collate's outputs, in its order.

        ssl: HuBERT features (B, 768, T) at 50 Hz; y: linear spectrogram (B, 1025, T) and y_lengths;
        mel: normalised target mel (B, 100, Tm) and mel_lengths; text: phone ids (B, Tt), text_lengths.
        ssl_lengths is unused (as in the official code). `use_grad_ckpt` checkpoints each DiT block.

        Random draws, in this order: torch.rand(B) for the prompt lengths (floor(u * mel_len * 2/3)),
        then those of `CFM.forward` (torch.rand, torch.randn_like, `rng` or Python's `random.random()`,
        and torch.randint only in the shortcut branch). Dropout (ref_enc, DiT) draws in between in
        training mode.
        """
        # ref_enc and the frozen part run in fp32 even under autocast, as in the official trainer.
        # With the text side frozen, ge reaches the loss only detached (wns1 detaches it), so ref_enc
        # gets no gradient (as officially) and runs without building a graph.
        with torch.autocast(device_type=y.device.type, enabled=False), \
                torch.no_grad() if self.freeze_quantizer else nullcontext():
            y_mask = _length_mask(y_lengths, y.size(2), y.dtype)
            ge = self.ref_enc(y[:, :REFERENCE_BINS] * y_mask, y_mask)
            quantized, _, _ = self.quantizer(self.ssl_proj(ssl))
            quantized = self._upsample_semantic(quantized)
            x, _, _, _ = self.enc_p(quantized, y_lengths, text, text_lengths, ge)
        fea = self._to_mel_rate(x)
        fea, _ = self.wns1(fea, mel_lengths, ge)

        prompt_len_max = mel_lengths * 2 / 3
        prompt_lens = (torch.rand([ssl.shape[0]], device=fea.device) * prompt_len_max).floor().long()
        frames = min(mel.shape[-1], fea.shape[-1])
        mel = mel[:, :, :frames]
        fea = fea[:, :, :frames]
        out = self.cfm(mel, mel_lengths, prompt_lens, fea, use_grad_ckpt, rng=rng)
        return V3TrainOutput(out.loss, prompt_lens, out.t, out.x0, out.dt, out.n_estimator_calls, fea)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """Semantic codes (B, n_q, T/2 for 25 Hz) of HuBERT features (B, 768, T); no codebook update."""
        return self.quantizer.encode(self.ssl_proj(ssl)).transpose(0, 1)

    @torch.no_grad()
    def decode_encp(self, codes: torch.Tensor, text: torch.Tensor, refer: torch.Tensor | None = None,
                    ge: torch.Tensor | None = None, speed: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Content features mu (B, inter_channels2, T_mel) and ge (B, gin, 1) for semantic codes.

        codes: (n_q, B, Tc) (the GPT stage's output with a leading 1); text: phone ids (B, Tt), all
        valid; refer: reference linear spectrogram (B, spec_channels, Tr), all frames valid (unused
        when `ge` is given); speed > 1 is faster (enc_p resamples its output linearly).
        """
        if ge is None:
            if refer is None:
                raise ValueError("decode_encp needs a reference spectrogram (refer) or its embedding (ge)")
            ge = self.reference_embedding(refer)
        batch, n_codes = codes.size(1), codes.size(2)
        device = codes.device
        y_lengths = torch.full((batch,), n_codes * self.semantic_upsample, dtype=torch.long, device=device)
        mel_frames = n_codes * self.frame_rates.decode_length_factor
        mel_frames = int(mel_frames) if speed == 1 else int(mel_frames / speed) + 1
        mel_lengths = torch.full((batch,), mel_frames, dtype=torch.long, device=device)
        text_lengths = torch.full((batch,), text.size(-1), dtype=torch.long, device=text.device)

        quantized = self._upsample_semantic(self.quantizer.decode(codes))
        x, _, _, _ = self.enc_p(quantized, y_lengths, text, text_lengths, ge, speed)
        fea, _ = self.wns1(self._to_mel_rate(x), mel_lengths, ge)
        return fea, ge

    @torch.no_grad()
    def synthesize_mel(self, codes: torch.Tensor, text: torch.Tensor, refer: torch.Tensor,
                       prompt_codes: torch.Tensor, prompt_text: torch.Tensor, prompt_mel: torch.Tensor,
                       sample_steps: int = 32, speed: float = 1.0, max_prompt_frames: int | None = None
                       ) -> torch.Tensor:
        """Normalised mel (B, mel, T) of `codes`/`text`, continuing a reference utterance (one chunk of
        official inference, `TTS.using_vocoder_synthesis`, without its chunking of long outputs).

        prompt_codes/prompt_text: the reference's semantic codes (n_q, B, Tp) and phones; prompt_mel: its
        normalised mel (`gsv_accel.audio.CFMMelExtractor`); refer: its linear spectrogram. The prompt
        is trimmed to the frames both it and its features have (and to the last `max_prompt_frames`,
        the official T_ref, if given); the output excludes it. Draws torch.randn once (the noise).
        """
        prompt_fea, ge = self.decode_encp(prompt_codes, prompt_text, refer)
        frames = min(prompt_mel.shape[-1], prompt_fea.shape[-1])
        prompt_mel, prompt_fea = prompt_mel[:, :, :frames], prompt_fea[:, :, :frames]
        if max_prompt_frames is not None and frames > max_prompt_frames:
            frames = max_prompt_frames
            prompt_mel, prompt_fea = prompt_mel[:, :, -frames:], prompt_fea[:, :, -frames:]
        fea, _ = self.decode_encp(codes, text, None, ge=ge, speed=speed)
        mu = torch.cat([prompt_fea, fea], dim=2).transpose(2, 1)
        lengths = torch.full((mu.size(0),), mu.size(1), dtype=torch.long, device=mu.device)
        out = self.cfm.inference(mu, lengths, prompt_mel.to(mu.dtype), sample_steps)
        return out[:, :, frames:]
