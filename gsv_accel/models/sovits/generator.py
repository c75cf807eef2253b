"""The SoVITS generator (`SynthesizerTrn` of GPT-SoVITS, versions v1, v2, v2Pro and v2ProPlus).

Data flow, training (`SynthesizerTrn.forward`):

    ssl (B, 768, Ts) --ssl_proj--> quantizer --> quantized (25 Hz) --x2 nearest--> (B, 768, T)
    spec y (B, F, T) --ref_enc--> ge (B, gin, 1)              global speaker/style embedding
        (v2Pro/v2ProPlus: ge = prelu(ge + sv_emb(sv)), sv = speaker-verification embedding (B, 20480))
    quantized, phones, ge --enc_p--> prior (m_p, logs_p)      (Pro: enc_p gets ge_to512(ge))
    y, ge --enc_q--> posterior z ~ N(m_q, exp(logs_q)) --flow--> z_p   (KL against the prior)
    random window of z, ge --dec--> waveform segment                  (GAN + mel losses)

Inference (`decode`) samples z_p from the prior built from semantic codes, runs the flow backwards
and decodes the whole latent. Module and parameter names follow the official code so released
checkpoints (`s2G2333k.pth`, `s2Gv2Pro.pth`, `SoVITS_weights*/*.pth`) load key for key.

The versions differ in how the speaker is conditioned on, and nowhere else in the forward passes:
that difference is one component, `ReferenceConditioning` (v1/v2) or `SVConditioning` (v2Pro and
v2ProPlus, which differ only in their config), chosen once when the model is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..grad_ckpt import checkpointed
from .attentions import MRTE, AttentionEncoder
from .commons import rand_slice_segments, sequence_mask
from .config import SoVITSConfig
from .modules import HiFiGANGenerator, MelStyleEncoder, PosteriorEncoder, ResidualCouplingBlock
from .quantize import ResidualVectorQuantizer

# v2 models compute the reference (style) embedding from the lowest 704 of the 1025 linear
# spectrogram bins (0 .. ~11 kHz at 32 kHz); v1 models use every bin.
_V2_REFERENCE_BINS = 704


def _length_mask(lengths: torch.Tensor, max_length: int, dtype: torch.dtype) -> torch.Tensor:
    """(B,) lengths -> float mask (B, 1, max_length)."""
    return sequence_mask(lengths, max_length).unsqueeze(1).to(dtype)


class TextEncoder(nn.Module):
    """Prior encoder `enc_p`: semantic features + phones + speaker embedding -> (m_p, logs_p).

    The (already quantized) SSL features go through a transformer (`encoder_ssl`), the phone ids
    through an embedding and another transformer (`encoder_text`); MRTE lets each content frame
    attend to the phones and adds the speaker embedding; a last transformer (`encoder2`) and a 1x1
    projection give the mean and log-std of the prior, one frame per content frame.

    With `grad_ckpt` the three transformers and MRTE are checkpointed (their attention maps grow with
    the square of the length).
    """

    grad_ckpt = False

    def __init__(self, out_channels: int, hidden_channels: int, filter_channels: int, n_heads: int,
                 n_layers: int, kernel_size: int, p_dropout: float, n_symbols: int, ssl_dim: int = 768,
                 mrte_hidden_channels: int = 512) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.ssl_proj = nn.Conv1d(ssl_dim, hidden_channels, 1)
        self.encoder_ssl = AttentionEncoder(
            hidden_channels, filter_channels, n_heads, n_layers // 2, kernel_size, p_dropout)
        self.encoder_text = AttentionEncoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout)
        self.text_embedding = nn.Embedding(n_symbols, hidden_channels)
        self.mrte = MRTE(hidden_channels, mrte_hidden_channels, hidden_channels)
        self.encoder2 = AttentionEncoder(
            hidden_channels, filter_channels, n_heads, n_layers // 2, kernel_size, p_dropout)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(self, y: torch.Tensor, y_lengths: torch.Tensor, text: torch.Tensor,
                text_lengths: torch.Tensor, ge: torch.Tensor | None, speed: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """y: SSL features (B, ssl_dim, T); text: phone ids (B, Tt); ge: (B, mrte_hidden, 1).

        `speed` != 1 resamples the encoded frames in time (inference only: >1 speaks faster).
        Returns (hidden (B, H, T'), m_p, logs_p (B, out_channels, T'), y_mask (B, 1, T')).
        """
        ckpt = self.grad_ckpt
        y_mask = _length_mask(y_lengths, y.size(2), y.dtype)
        y = self.ssl_proj(y * y_mask) * y_mask
        y = checkpointed(self.encoder_ssl, y * y_mask, y_mask, enabled=ckpt)

        text_mask = _length_mask(text_lengths, text.size(1), y.dtype)
        text = self.text_embedding(text).transpose(1, 2)
        text = checkpointed(self.encoder_text, text * text_mask, text_mask, enabled=ckpt)

        y = checkpointed(self.mrte, y, y_mask, text, text_mask, ge, enabled=ckpt)
        y = checkpointed(self.encoder2, y * y_mask, y_mask, enabled=ckpt)
        if speed != 1:
            new_length = int(y.shape[-1] / speed) + 1
            y = F.interpolate(y, size=new_length, mode="linear")
            y_mask = F.interpolate(y_mask, size=new_length, mode="nearest")
        stats = self.proj(y) * y_mask
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return y, m, logs, y_mask


class ReferenceConditioning:
    """Speaker conditioning of v1/v2 models: the reference encoder's embedding is used as it is.

    A conditioning component says how the generator turns the reference encoder's output `ge_ref`
    (and, for Pro versions, a speaker-verification embedding) into its conditioning:
    `combine(model, ge_ref, sv_emb)` gives the gin-wide `ge` that the flow, the decoder and the
    posterior encoder get, `text_condition(model, ge)` what the text encoder's MRTE gets (here the
    same tensor, so MRTE's width must equal gin_channels). `takes_sv_emb` tells whether `sv_emb` is
    needed.

    The components hold no weights: `add_layers` puts their layers on the generator under the
    official top-level key names (`sv_emb.*`, `ge_to512.*`, `prelu.*`), and `combine` looks them up
    there at each call, so replacing or wrapping one of those layers (LoRA, FSDP, ...) is seen.
    """

    takes_sv_emb = False

    def __init__(self, config: SoVITSConfig) -> None:
        if config.gin_channels != config.mrte_hidden_channels:
            # MRTE adds the speaker embedding to its hidden state, so the widths must agree.
            raise ValueError(
                f"gin_channels ({config.gin_channels}) must equal mrte_hidden_channels "
                f"({config.mrte_hidden_channels}) for {config.version} models (only v2Pro/v2ProPlus "
                "project the speaker embedding to MRTE's width)")
        self.version = config.version

    def add_layers(self, model: nn.Module) -> None:
        """No layers of its own."""

    def combine(self, model: nn.Module, ge_ref: torch.Tensor | None,
                sv_emb: torch.Tensor | None = None) -> torch.Tensor | None:
        if sv_emb is not None:
            raise ValueError(
                f"sv_emb was given, but {self.version} models take no speaker-verification embedding "
                "(only v2Pro and v2ProPlus do); leave it out or set model.version")
        return ge_ref

    def text_condition(self, model: nn.Module, ge: torch.Tensor | None) -> torch.Tensor | None:
        return ge


class SVConditioning:
    """Speaker conditioning of v2Pro/v2ProPlus: the reference embedding plus a speaker-verification one.

    `sv_emb` is the ERes2NetV2 `forward3` embedding of the reference audio (B, sv_dim), which the
    official pipeline stores as `7-sv_cn/<wav>.pt` for training and computes from the reference at
    inference. It is projected to gin (`sv_emb` layer), added to the reference encoder's output and
    passed through a PReLU (`prelu`): that `ge` goes to the flow, decoder and posterior encoder.
    MRTE's width is fixed (512 in the official code) whatever gin is, so the text encoder gets
    `ge_to512(ge)`. See `ReferenceConditioning` for the component interface.
    """

    takes_sv_emb = True

    def __init__(self, config: SoVITSConfig) -> None:
        self.version = config.version
        self.sv_dim = config.sv_dim
        self.gin_channels = config.gin_channels
        self.text_channels = config.mrte_hidden_channels

    def add_layers(self, model: nn.Module) -> None:
        # In the official order, which is the key order of the official state dicts.
        model.sv_emb = nn.Linear(self.sv_dim, self.gin_channels)
        model.ge_to512 = nn.Linear(self.gin_channels, self.text_channels)
        model.prelu = nn.PReLU(num_parameters=self.gin_channels, init=0.25)

    def combine(self, model: nn.Module, ge_ref: torch.Tensor | None,
                sv_emb: torch.Tensor | None = None) -> torch.Tensor:
        if ge_ref is None:
            raise ValueError(f"{self.version} models need a reference spectrogram (refer) for the speaker "
                             "embedding; there is no unconditioned mode")
        if sv_emb is None:
            raise ValueError(
                f"{self.version} models need sv_emb: the (batch, {self.sv_dim}) speaker-verification "
                "embedding of the reference audio (ERes2NetV2 forward3; 7-sv_cn/*.pt in official datasets)")
        if sv_emb.dim() != 2 or sv_emb.size(1) != self.sv_dim or sv_emb.size(0) != ge_ref.size(0):
            raise ValueError(
                f"sv_emb must have shape (batch={ge_ref.size(0)}, sv_dim={self.sv_dim}), got "
                f"{tuple(sv_emb.shape)} (model.sv_dim sets the width)")
        projected = model.sv_emb(sv_emb.to(ge_ref.dtype)).unsqueeze(-1)
        return model.prelu(ge_ref + projected)

    def text_condition(self, model: nn.Module, ge: torch.Tensor) -> torch.Tensor:
        return model.ge_to512(ge.transpose(1, 2)).transpose(1, 2)


def build_speaker_conditioning(config: SoVITSConfig) -> ReferenceConditioning | SVConditioning:
    """The speaker-conditioning component of `config.version`."""
    return SVConditioning(config) if config.is_pro else ReferenceConditioning(config)


class LatentStats(NamedTuple):
    z: torch.Tensor        # posterior sample (B, inter, T)
    z_p: torch.Tensor      # z mapped through the flow into the prior's space
    m_p: torch.Tensor      # prior mean / log-std (B, inter, T)
    logs_p: torch.Tensor
    m_q: torch.Tensor      # posterior mean / log-std
    logs_q: torch.Tensor


class TrainOutput(NamedTuple):
    """What the training forward returns; unpacks like the official 7-tuple."""
    wav: torch.Tensor            # generated segment (B, 1, segment_size * hop_length)
    commit_loss: torch.Tensor    # quantizer commitment loss (0 when the quantizer is frozen)
    slice_starts: torch.Tensor   # (B,) first latent frame of each generated segment
    x_mask: torch.Tensor         # (B, 1, T) valid spectrogram frames (prior side)
    z_mask: torch.Tensor         # (B, 1, T) the same frames (posterior side)
    latents: LatentStats
    quantized: torch.Tensor      # quantized SSL features at spectrogram frame rate (B, 768, T)


class SynthesizerTrn(nn.Module):
    """SoVITS generator built from a `SoVITSConfig` (v1, v2, v2Pro or v2ProPlus).

    Pro models take a speaker-verification embedding `sv_emb` (B, config.sv_dim) in `forward`,
    `speaker_embedding` and `decode`; for them it is required, for v1/v2 it must be left out.
    """

    def __init__(self, config: SoVITSConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else SoVITSConfig()
        conditioning = build_speaker_conditioning(config)
        if config.version != "v1" and config.spec_channels < _V2_REFERENCE_BINS:
            raise ValueError(
                f"spec_channels ({config.spec_channels}) must be at least {_V2_REFERENCE_BINS}: "
                f"{config.version} models read the reference embedding from the lowest "
                f"{_V2_REFERENCE_BINS} spectrogram bins")
        self.config = config
        self.segment_size = config.segment_size
        self.freeze_quantizer = config.freeze_quantizer
        # 25 Hz semantic tokens cover two spectrogram frames each; 50 Hz ones cover one.
        self.semantic_upsample = 2 if config.semantic_frame_rate == "25hz" else 1
        self.reference_bins = config.spec_channels if config.version == "v1" else _V2_REFERENCE_BINS
        gin = config.gin_channels

        self.enc_p = TextEncoder(
            config.inter_channels, config.hidden_channels, config.filter_channels, config.n_heads,
            config.n_layers, config.kernel_size, config.p_dropout, n_symbols=config.n_symbols,
            ssl_dim=config.ssl_dim, mrte_hidden_channels=config.mrte_hidden_channels)
        self.dec = HiFiGANGenerator(
            config.inter_channels, config.resblock, config.resblock_kernel_sizes,
            config.resblock_dilation_sizes, config.upsample_rates, config.upsample_initial_channel,
            config.upsample_kernel_sizes, gin_channels=gin)
        self.enc_q = PosteriorEncoder(
            config.spec_channels, config.inter_channels, config.hidden_channels,
            config.posterior_kernel_size, 1, config.posterior_layers, gin_channels=gin)
        self.flow = ResidualCouplingBlock(
            config.inter_channels, config.hidden_channels, config.flow_kernel_size, 1,
            config.flow_wn_layers, n_flows=config.flow_layers, gin_channels=gin)
        self.ref_enc = MelStyleEncoder(
            self.reference_bins, style_hidden=config.ref_enc_hidden, style_vector_dim=gin)

        # Semantic path: HuBERT features (50 Hz) -> projection (stride 2 for 25 Hz tokens) -> codes.
        self.ssl_proj = nn.Conv1d(config.ssl_dim, config.ssl_dim, self.semantic_upsample,
                                  stride=self.semantic_upsample)
        self.quantizer = ResidualVectorQuantizer(dimension=config.ssl_dim, n_q=1, bins=config.codebook_size)

        # The conditioning's own layers (Pro: sv_emb, ge_to512, prelu) come last, as in the official
        # state dicts.
        self.speaker_conditioning = conditioning
        conditioning.add_layers(self)
        self.train()  # puts a frozen quantizer in eval mode from the start

    # ------------------------------------------------------------------ helpers

    @property
    def takes_sv_emb(self) -> bool:
        """Whether `forward`/`decode` need a speaker-verification embedding (v2Pro, v2ProPlus)."""
        return self.speaker_conditioning.takes_sv_emb

    def reference_embedding(self, spec: torch.Tensor, spec_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The reference encoder's style embedding (B, gin_channels, 1) of a linear spectrogram
        (B, spec_channels, T), before any speaker-verification term. Without a mask every frame counts."""
        if spec_mask is None:
            spec_mask = spec.new_ones(spec.size(0), 1, spec.size(2))
        return self.ref_enc(spec[:, : self.reference_bins] * spec_mask, spec_mask)

    def speaker_embedding(self, spec: torch.Tensor, spec_mask: torch.Tensor | None = None,
                          sv_emb: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning `ge` (B, gin_channels, 1) that the flow, decoder and posterior encoder get.

        v1/v2: the reference embedding. v2Pro/v2ProPlus: prelu(reference embedding + sv_emb projected),
        with `sv_emb` (B, sv_dim) required. The text encoder gets `text_condition(ge)`.
        """
        return self.speaker_conditioning.combine(self, self.reference_embedding(spec, spec_mask), sv_emb)

    def text_condition(self, ge: torch.Tensor | None) -> torch.Tensor | None:
        """What the text encoder's MRTE gets for a conditioning `ge`: `ge` itself (v1/v2), or its
        projection to MRTE's width (v2Pro/v2ProPlus: `ge_to512`)."""
        return self.speaker_conditioning.text_condition(self, ge)

    def set_grad_checkpointing(self, enabled: bool = True) -> SynthesizerTrn:
        """Gradient checkpointing (`train.grad_ckpt`) of the training pass's big activations: the text
        encoder's transformers and MRTE, the posterior encoder's WaveNet, each flow coupling and each
        decoder upsampling stage with its residual blocks (the decoder holds most of them). The same
        losses and gradients, one more forward pass of those parts; the state dict does not change."""
        for module in (self.enc_p, self.enc_q, self.flow, self.dec):
            module.grad_ckpt = enabled
        return self

    def train(self, mode: bool = True) -> SynthesizerTrn:
        """As nn.Module.train, except that a frozen quantizer (and its SSL projection) stays in
        eval mode, so its codebook is never updated by k-means/EMA."""
        super().train(mode)
        if self.freeze_quantizer:
            self.ssl_proj.eval()
            self.quantizer.eval()
        return self

    def _quantize_ssl(self, ssl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ssl_proj + quantizer, at full precision (autocast off, as the official trainer does).

        With `freeze_quantizer` they run in eval mode (see `train`) without autograd: the output
        is the codebook vectors themselves, the codebook is not updated and the commitment loss is
        zero, so no gradient reaches `ssl_proj`.
        """
        grad_context = torch.no_grad() if self.freeze_quantizer else nullcontext()
        with torch.autocast(device_type=ssl.device.type, enabled=False), grad_context:
            projected = self.ssl_proj(ssl.to(self.ssl_proj.weight.dtype))
            return self.quantizer(projected)

    def _upsample_semantic(self, quantized: torch.Tensor) -> torch.Tensor:
        if self.semantic_upsample == 1:
            return quantized
        return F.interpolate(quantized, size=quantized.shape[-1] * self.semantic_upsample, mode="nearest")

    # ------------------------------------------------------------------ training

    def forward(self, ssl: torch.Tensor, y: torch.Tensor, y_lengths: torch.Tensor, text: torch.Tensor,
                text_lengths: torch.Tensor, sv_emb: torch.Tensor | None = None) -> TrainOutput:
        """Training pass.

        ssl: HuBERT features (B, ssl_dim, T) at 50 Hz, one per spectrogram frame; y: linear spectrogram
        (B, spec_channels, T); y_lengths: (B,) valid frames; text: phone ids (B, Tt); text_lengths: (B,);
        sv_emb: v2Pro/v2ProPlus only, and required there: the speaker-verification embedding of each
        item's audio (B, sv_dim), float (the official collate stacks `7-sv_cn/<wav>.pt`).

        Random draws, in this order, from the global generator (as the official trainer): the
        posterior sample's noise, then the segment starts (`torch.rand([B])`). The speaker embedding
        comes from the item's own spectrogram, as in the official trainer.
        """
        y_mask = _length_mask(y_lengths, y.size(2), y.dtype)
        ge = self.speaker_embedding(y, y_mask, sv_emb)

        quantized, _, commit_loss = self._quantize_ssl(ssl)
        quantized = self._upsample_semantic(quantized)

        _, m_p, logs_p, x_mask = self.enc_p(quantized, y_lengths, text, text_lengths, self.text_condition(ge))
        z, m_q, logs_q, z_mask = self.enc_q(y, y_lengths, g=ge)
        z_p = self.flow(z, z_mask, g=ge)

        z_slice, slice_starts = rand_slice_segments(z, y_lengths, self.segment_size)
        wav = self.dec(z_slice, g=ge)
        return TrainOutput(wav, commit_loss, slice_starts, x_mask, z_mask,
                           LatentStats(z, z_p, m_p, logs_p, m_q, logs_q), quantized)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def extract_latent(self, ssl: torch.Tensor) -> torch.Tensor:
        """Semantic codes (B, n_q, T/2 for 25 Hz) of HuBERT features (B, ssl_dim, T).

        Uses the quantizer's pure encoding path, so the codebook is never updated here even if the
        model is in training mode.
        """
        codes = self.quantizer.encode(self.ssl_proj(ssl))
        return codes.transpose(0, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, text: torch.Tensor,
               refer: torch.Tensor | Sequence[torch.Tensor] | None, noise_scale: float = 0.5,
               speed: float = 1.0, sv_emb: torch.Tensor | Sequence[torch.Tensor] | None = None
               ) -> torch.Tensor:
        """Synthesize a waveform (B, 1, samples).

        codes: semantic codes laid out (n_q, B, T) (the GPT stage's output with a leading 1);
        text: phone ids (B, Tt), all valid; refer: reference linear spectrogram (B, spec_channels,
        Tr), or a list of them whose embeddings are averaged, or None for no speaker conditioning
        (v1/v2 only); noise_scale: std multiplier of the prior sample (0 = the prior mean); speed: >1
        is faster; sv_emb: v2Pro/v2ProPlus only, and required there: the speaker-verification
        embedding (B, sv_dim) of the reference audio, or, with a list of references, a list of them in
        the same order (each reference's `ge` is computed with its own, then the `ge`s are averaged).
        """
        if refer is None:
            ge = self.speaker_conditioning.combine(self, None, sv_emb)
        elif isinstance(refer, (list, tuple)):
            if sv_emb is None:
                per_reference: Sequence[torch.Tensor | None] = [None] * len(refer)
            elif isinstance(sv_emb, (list, tuple)) and len(sv_emb) == len(refer):
                per_reference = sv_emb
            else:
                raise ValueError(f"with {len(refer)} references, sv_emb must be a list of as many "
                                 "(B, sv_dim) embeddings, one per reference")
            ge = torch.stack([self.speaker_embedding(r, sv_emb=s)
                              for r, s in zip(refer, per_reference, strict=True)], 0).mean(0)
        else:
            if isinstance(sv_emb, (list, tuple)):
                raise ValueError("sv_emb is a list but there is a single reference: pass one (B, sv_dim) "
                                 "tensor")
            ge = self.speaker_embedding(refer, sv_emb=sv_emb)

        quantized = self._upsample_semantic(self.quantizer.decode(codes))
        batch = quantized.size(0)
        y_lengths = torch.full((batch,), quantized.size(2), dtype=torch.long, device=quantized.device)
        text_lengths = torch.full((batch,), text.size(-1), dtype=torch.long, device=text.device)

        _, m_p, logs_p, y_mask = self.enc_p(quantized, y_lengths, text, text_lengths, self.text_condition(ge),
                                            speed)
        z_p = m_p + torch.randn_like(m_p) * torch.exp(logs_p) * noise_scale
        z = self.flow(z_p, y_mask, g=ge, reverse=True)
        return self.dec(z * y_mask, g=ge)
