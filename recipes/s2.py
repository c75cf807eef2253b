#!/usr/bin/env python
"""SoVITS (stage 2) fine-tuning on Accelerate.

    accelerate launch recipes/s2.py [--config FILE] [--resume auto|PATH] [section.key=value ...]
    python recipes/s2.py                      # the demo: a tiny model on the bundled demo data

Supports (chosen by the accelerate config, not by this file): CPU, one or many GPUs (DDP), bf16,
and fp16 with one loss scaler shared correctly by the two optimizers (stepped once per iteration,
as the official trainer does). Gradient clipping (`train.grad_clip`) and accumulation
(`train.grad_accum`); gradient checkpointing of the generator (`train.grad_ckpt`); a step that runs
out of memory is retried on half-size micro-batches (`gsv_accel.memory`). Exact resume from complete
checkpoints (`--resume auto` or a folder), also after moving the run or the dataset, on another
device type or another number of processes.
DeepSpeed ZeRO stage 1/2 (`recipes/accelerate/deepspeed_zero*.yaml`): one engine per model (two
Accelerators), DeepSpeed checkpoints (the discriminator's in `discriminator/`), consolidated fp32
weights for exports; DeepSpeed clips (`train.grad_clip`), accumulates (`train.grad_accum`), skips a
step whose gradient norm is not finite, and runs bf16 as `torch_autocast` (fp32 weights).
Refuses: changing model-shape settings on resume (names the keys); fp16 under DeepSpeed (see
`gsv_accel.deepspeed_support.FP16_UNSUPPORTED`).

The loop follows the official `s2_train.py`: per batch a discriminator step (LSGAN), then a generator
step (mel L1 x c_mel + KL x c_kl + feature matching + adversarial + commitment), AdamW (0.8, 0.99),
text embedding / text encoder / MRTE at `text_low_lr_rate`, ExponentialLR stepped per epoch, the
quantizer and SSL projection frozen. Validation generates every validation utterance through the
inference path (noise scale 0) and reports `val/mel_loss`, the L1 between log-mels of the real and
generated audio, averaged over all processes; the plateau controller (`plateau:` section) watches it.
With `validation.speaker_model` (an ERes2NetV2 file) it also reports `val/speaker_sim`, the cosine
similarity of the speaker embeddings of each generated utterance and its real recording, and with
`validation.asr_model` (a local transformers Whisper-like or CTC folder) `val/cer`, the character (zh) /
word (en) error rate of the recogniser's transcript of the generated audio against the utterance's
text (`gsv_accel.quality`). Both models are loaded once, on the training device; train.log gives the
seconds each part of a validation took.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gsv_accel.audio import SpectrogramConfig, SpectrogramExtractor
from gsv_accel.config import (
    CheckpointConfig,
    RunConfig,
    check_training_loop,
    require_path,
    to_dict,
)
from gsv_accel.data.dataset import S2Collate, load_prepared
from gsv_accel.data.sampler import DEFAULT_BOUNDARIES, LengthBucketBatchSampler
from gsv_accel.deepspeed_support import is_deepspeed
from gsv_accel.distributed import sum_over_processes
from gsv_accel.formats import (
    export_sovits,
    load_weights_into,
    sovits_export_info,
    sovits_export_name,
    sovits_weight_dir,
)
from gsv_accel.lifecycle import exit_process
from gsv_accel.losses import (
    discriminator_lsgan_loss,
    feature_matching_loss,
    generator_lsgan_loss,
    kl_divergence_loss,
)
from gsv_accel.models.sovits import MultiPeriodDiscriminator, SynthesizerTrn
from gsv_accel.models.sovits.commons import slice_segments
from gsv_accel.models.sovits.config import SoVITSConfig
from gsv_accel.models.sovits.discriminator import DEFAULT_PERIOD_CHANNELS, DEFAULT_SCALE_CHANNELS
from gsv_accel.plateau import PlateauConfig
from gsv_accel.quality import QualityValidationConfig, VoiceQuality
from gsv_accel.recipe import BATCH_SHARE, StepResult, ValidationResult
from gsv_accel.session import TrainingSession, run_recipe
from gsv_accel.stepper import adamw, make_stepper
from gsv_accel.tracking import TrackingConfig

logger = logging.getLogger("recipes.s2")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "recipes" / "configs" / "s2_demo.yaml"


# ----------------------------------------------------------------------------------------- config


@dataclass
class S2DataConfig:
    """The prepared dataset and the `data` section of GPT-SoVITS' s2.json (feature settings)."""

    dataset: str = "runs/demo_dataset"
    batch_size: int = 4
    num_workers: int = 0
    bucket_boundaries: list[int] = field(default_factory=lambda: list(DEFAULT_BOUNDARIES))
    sampling_rate: int = 32000
    filter_length: int = 2048
    hop_length: int = 640
    win_length: int = 2048
    n_mel_channels: int = 128
    mel_fmin: float = 0.0
    mel_fmax: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")

    def spectrogram(self) -> SpectrogramConfig:
        return SpectrogramConfig(self.sampling_rate, self.filter_length, self.hop_length, self.win_length,
                                 self.n_mel_channels, self.mel_fmin, self.mel_fmax)


# The shared `validation` section plus the voice-quality metrics' models (see gsv_accel.quality).
S2ValidationConfig = QualityValidationConfig


@dataclass
class S2TrainConfig:
    epochs: int = 8
    max_steps: int | None = None  # stop early after this many optimizer steps (benchmarks, tests)
    learning_rate: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    eps: float = 1e-9
    lr_decay: float = 0.999875
    text_low_lr_rate: float = 0.4
    segment_size: int = 20480  # samples of audio the decoder generates per item
    c_mel: float = 45.0
    c_kl: float = 1.0
    grad_clip: float | None = None  # max global grad norm per model; null = no clipping
    fused_adamw: bool = True  # PyTorch's fused AdamW kernel (false: the for-loop one the official uses)
    grad_accum: int = 1
    # Gradient checkpointing of the generator's big activations (decoder stages, text encoder,
    # posterior encoder, flows): less memory, the same gradients, about a third slower.
    grad_ckpt: bool = False
    log_every_n_steps: int = 1
    # A step whose loss (or, without fp16 loss scaling, gradient norm) is NaN/inf is skipped. After
    # this many in a row the run rolls back to its last complete checkpoint with the LR scale times
    # `rollback_lr_factor` ("rollback"), or stops ("stop").
    max_nonfinite_steps: int = 3
    on_nonfinite: str = "rollback"
    rollback_lr_factor: float = 0.5
    pretrained_s2G: str | None = None
    pretrained_s2D: str | None = None

    def __post_init__(self) -> None:
        check_training_loop(self)
        if len(self.betas) != 2:
            raise ValueError(f"train.betas must have two values, got {self.betas}")


@dataclass
class DiscriminatorConfig:
    """Multi-period discriminator widths (official defaults; smaller for tests and the demo).
    `periods`: null = the official periods of model.version."""

    periods: list[int] | None = None
    scale_channels: list[int] = field(default_factory=lambda: list(DEFAULT_SCALE_CHANNELS))
    period_channels: list[int] = field(default_factory=lambda: list(DEFAULT_PERIOD_CHANNELS))


@dataclass
class S2Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: S2DataConfig = field(default_factory=S2DataConfig)
    model: SoVITSConfig = field(default_factory=SoVITSConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    train: S2TrainConfig = field(default_factory=S2TrainConfig)
    validation: S2ValidationConfig = field(default_factory=S2ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    plateau: PlateauConfig = field(default_factory=PlateauConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if self.train.segment_size % self.data.hop_length:
            raise ValueError(f"train.segment_size ({self.train.segment_size}) must be a multiple of "
                             f"data.hop_length ({self.data.hop_length})")
        if self.model.hop_length != self.data.hop_length:
            raise ValueError(f"the decoder upsamples by {self.model.hop_length} (product of "
                             f"model.upsample_rates) but data.hop_length is {self.data.hop_length}")
        # Derived model fields follow the data/train sections, as in the official trainer.
        self.model.spec_channels = self.data.filter_length // 2 + 1
        self.model.segment_size = self.train.segment_size // self.data.hop_length

    def official_dict(self) -> dict:
        """The config in GPT-SoVITS' s2.json layout, stored inside exports. Local paths (the dataset,
        the pretrained files) stay out: an export is shared, and inference reads none of them."""
        data = {k: v for k, v in to_dict(self.data).items() if k != "dataset"}
        train = {k: v for k, v in to_dict(self.train).items() if not k.startswith("pretrained_")}
        return {"data": data, "model": to_dict(self.model), "train": train}


# ----------------------------------------------------------------------------------------- recipe


class S2Recipe:
    """Owns one training run: `setup()` wires the parts, `train()` runs the loop. The bookkeeping
    shared with the S1 recipe (resume, checkpoints, plateau decisions, exports' timing) is in
    `TrainingSession`; what is specific to SoVITS (two models, the GAN step, validation through the
    inference path, the export format) is here."""

    def __init__(self, cfg: S2Config, resume: str | None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.session = TrainingSession.from_config(cfg, shape_sections=("model", "discriminator"))

    # ------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        session = self.session
        self.accelerator = acc = session.start(self.resume, deepspeed_models=("generator", "discriminator"))
        self.deepspeed = is_deepspeed(acc)
        if self.deepspeed:
            from gsv_accel import deepspeed_support as ds

            ds.configure_plugins(acc, micro_batch_size=self.cfg.data.batch_size,
                                 grad_clip=self.cfg.train.grad_clip, grad_accum=self.cfg.train.grad_accum)
        self._setup_data()
        self._setup_quality()
        # Models before optimizers: the optimizer's param groups refer to the (frozen or not) params.
        self._setup_models()
        self._setup_optimizers()
        # One prepare per model keeps the G/D pairing explicit (and is what DeepSpeed needs).
        self.net_g, self.optim_g = acc.prepare(self.net_g, self.optim_g)
        extra_states = {}
        if self.deepspeed:
            # One DeepSpeed engine per Accelerator: D gets its own, saved in checkpoints' discriminator/.
            self.acc_d, self.net_d, self.optim_d = ds.prepare_on_own_engine(acc, "discriminator", self.net_d,
                                                                            self.optim_d)
            extra_states["discriminator"] = self.acc_d
            # G's adversarial pass calls D's module, not its engine: the engine's forward hooks would
            # run D's gradient epilogue inside G's backward (IndexError in ZeRO-2's reduce_ipg_grads).
            self.d_for_g = self.acc_d.unwrap_model(self.net_d)
            self.deepspeed_autocast = ds.autocast_dtype(self.net_g)
        else:
            self.net_d, self.optim_d = acc.prepare(self.net_d, self.optim_d)
            self.d_for_g = self.net_d
        self.stepper = make_stepper(acc, self.cfg.train.grad_clip)
        # The per-epoch schedulers are NOT passed to prepare (Accelerate would step them once per
        # process); the session checkpoints them with its own state.
        session.attach(self, models=[self.net_g, self.net_d], schedulers=[self.sched_g, self.sched_d],
                       sampler=self.sampler, extra_states=extra_states, export_model=0,
                       # ExponentialLR decays per epoch, as in the official trainer.
                       schedule_per_step=False)

    def _setup_data(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        spectrogram = cfg.data.spectrogram()
        require_path("data.dataset", cfg.data.dataset, "folder")
        prepared = load_prepared(cfg.data.dataset, model_config=cfg.model, spectrogram_config=spectrogram)
        self.train_set = prepared.view("train")
        self.val_set = prepared.view("validation", features=("ssl", "wav", "phones", "text"))
        self.sampler = LengthBucketBatchSampler(
            self.train_set.lengths, cfg.data.batch_size, cfg.data.bucket_boundaries,
            num_replicas=acc.num_processes, rank=acc.process_index, seed=cfg.run.seed)
        if self.sampler.dropped_indices and acc.is_main_process:
            logger.warning("%d training utterance(s) fall outside data.bucket_boundaries and are not used",
                           len(self.sampler.dropped_indices))
        # The loader gets its own generator so creating an iterator never draws from the global RNG
        # (a resumed run creates one mid-epoch; the uninterrupted run did not).
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=self.sampler, collate_fn=S2Collate(spectrogram),
            num_workers=cfg.data.num_workers, generator=torch.Generator(),
            pin_memory=acc.device.type == "cuda")
        self.features = SpectrogramExtractor(spectrogram).to(acc.device)
        self.val_collate = S2Collate(spectrogram)

    def _setup_quality(self) -> None:
        """The voice-quality models of validation (`validation.speaker_model`, `asr_model`), loaded
        once on the training device; bad paths or files are refused before anything is written."""
        self.quality = VoiceQuality.from_config(self.cfg.validation, self.accelerator.device)

    def _setup_models(self) -> None:
        cfg = self.cfg
        self.net_g = SynthesizerTrn(cfg.model)
        dc = cfg.discriminator
        self.net_d = MultiPeriodDiscriminator(cfg.model.use_spectral_norm, version=cfg.model.version,
                                              periods=dc.periods, scale_channels=dc.scale_channels,
                                              period_channels=dc.period_channels)
        if not self.session.resuming:
            for net, key, role in ((self.net_g, "train.pretrained_s2G", "generator"),
                                   (self.net_d, "train.pretrained_s2D", "discriminator")):
                path = getattr(cfg.train, key.split(".")[1])
                if path:
                    report = load_weights_into(net, require_path(key, path))
                    logger.info("pretrained %s from %s: %s", role, path, report)
        self.net_g.set_grad_checkpointing(cfg.train.grad_ckpt)
        if cfg.train.grad_ckpt:
            logger.info("gradient checkpointing of the generator (train.grad_ckpt): text encoder, posterior "
                        "encoder, flows and decoder stages are recomputed in the backward pass")
        if cfg.model.freeze_quantizer:
            # Frozen by requires_grad, so DDP never waits for gradients they will not get.
            for module in (self.net_g.ssl_proj, self.net_g.quantizer):
                module.requires_grad_(False)

    def _setup_optimizers(self) -> None:
        tc = self.cfg.train
        enc_p = self.net_g.enc_p
        low_lr_modules = (enc_p.text_embedding, enc_p.encoder_text, enc_p.mrte)
        low_ids = {id(p) for m in low_lr_modules for p in m.parameters()}
        base = [p for p in self.net_g.parameters() if p.requires_grad and id(p) not in low_ids]
        groups = [{"params": base, "lr": tc.learning_rate}]
        groups += [{"params": [p for p in m.parameters() if p.requires_grad],
                    "lr": tc.learning_rate * tc.text_low_lr_rate} for m in low_lr_modules]
        # DeepSpeed steps the optimizer on its own flat partitions: the for-loop kernel there.
        options = dict(betas=tuple(tc.betas), eps=tc.eps, device=self.accelerator.device,
                       fused=tc.fused_adamw and not self.deepspeed)
        self.optim_g = adamw(groups, tc.learning_rate, **options)
        self.optim_d = adamw(self.net_d.parameters(), tc.learning_rate, **options)
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.optim_g, gamma=tc.lr_decay)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.optim_d, gamma=tc.lr_decay)

    def autocast(self):
        """The mixed-precision context of forward passes: Accelerate's, or under DeepSpeed the dtype of
        the engines' `torch_autocast` (their own forward applies it; D's module in G's adversarial
        pass and the generator in validation run outside an engine and need it here)."""
        if self.deepspeed and self.deepspeed_autocast is not None:
            return torch.autocast(self.accelerator.device.type, dtype=self.deepspeed_autocast)
        return self.accelerator.autocast()

    # ------------------------------------------------------------------------------------ train
    def train(self) -> int:
        """Run to the end (or an early stop / signal). Returns the process exit code."""
        tc = self.cfg.train
        return self.session.run(
            self.loader, grad_accum=tc.grad_accum, log_every=tc.log_every_n_steps, desc="s2",
            postfix=lambda logs: {"mel": f"{logs['train/loss_mel']:.3f}",
                                  "d": f"{logs['train/loss_disc']:.3f}"})

    def reported_metrics(self) -> tuple[str, ...]:
        return ("val/mel_loss", *self.quality.metric_names)

    def train_step(self, micro_batches: list[dict]) -> StepResult:
        """One optimizer step of D then G over `grad_accum` micro-batches (the official order for
        one). Returns the losses to log and whether a non-finite value made it skip a step."""
        acc, tc, stepper = self.accelerator, self.cfg.train, self.stepper
        hop = self.cfg.data.hop_length
        n = len(micro_batches)
        self.optim_d.zero_grad(set_to_none=True)
        self.optim_g.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        bad_d = bad_g = False
        for index, batch in enumerate(micro_batches):
            last = index == n - 1
            # The losses are means over items: a micro-batch counts by its share of its batch's items
            # (1.0 unless an out-of-memory error cut the batch), so the step is that of whole batches.
            share = batch.get(BATCH_SHARE, 1.0)
            batch = {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            with stepper.no_sync(self.net_g, not last):
                with self.autocast():
                    out = self.net_g(batch["ssl"], batch["spec"], batch["spec_lengths"], batch["text"],
                                     batch["text_lengths"], sv_emb=self._sv_emb(batch))
            real = slice_segments(batch["wav"], out.slice_starts * hop, tc.segment_size)

            # Discriminator: real vs detached generated audio.
            with stepper.no_sync(self.net_d, not last):
                with self.autocast():
                    real_scores, fake_scores, _, _ = self.net_d(real, out.wav.detach())
                loss_disc = discriminator_lsgan_loss(real_scores, fake_scores)
                stepper.backward(self.net_d, loss_disc * share / tc.grad_accum, last)
            bad_d = bad_d or not bool(torch.isfinite(loss_disc))
            if last:
                # D steps as soon as its gradients are complete, before G's adversarial pass, as in
                # the official trainer; the shared fp16 scaler is updated only after G's step.
                grad_norm_d, skipped_d = stepper.step(self.optim_d, self.net_d, bad_loss=bad_d,
                                                      update_scaler=False)

            # Generator: D's parameters are frozen and its DDP sync skipped for this pass, so G's
            # backward neither computes nor all-reduces gradients that D would then throw away.
            self.net_d.requires_grad_(False)
            with stepper.no_sync(self.net_d, True), stepper.no_sync(self.net_g, not last):
                with self.autocast():
                    _, fake_scores, real_maps, fake_maps = self.d_for_g(real, out.wav)
                mel_real = slice_segments(self.features.linear_to_mel(batch["spec"].float()),
                                          out.slice_starts, self.cfg.model.segment_size)
                mel_fake = self.features.mel(out.wav.squeeze(1).float())
                loss_mel = torch.nn.functional.l1_loss(mel_real, mel_fake) * tc.c_mel
                z, z_p, m_p, logs_p, m_q, logs_q = out.latents
                loss_kl = kl_divergence_loss(z_p, logs_q, m_p, logs_p, out.z_mask) * tc.c_kl
                loss_fm = feature_matching_loss(real_maps, fake_maps)
                loss_adv = generator_lsgan_loss(fake_scores)
                loss_gen = loss_adv + loss_fm + loss_mel + out.commit_loss.float() + loss_kl
                stepper.backward(self.net_g, loss_gen * share / tc.grad_accum, last)
            self.net_d.requires_grad_(True)
            bad_g = bad_g or not bool(torch.isfinite(loss_gen))
            for key, value in (("loss_disc", loss_disc), ("loss_gen", loss_gen), ("loss_adv", loss_adv),
                               ("loss_fm", loss_fm), ("loss_mel", loss_mel), ("loss_kl", loss_kl),
                               ("loss_commit", out.commit_loss)):
                totals[f"train/{key}"] = (totals.get(f"train/{key}", 0.0)
                                          + float(value.detach()) * share / tc.grad_accum)
        grad_norm_g, skipped_g = stepper.step(self.optim_g, self.net_g, bad_loss=bad_g, update_scaler=True)
        if skipped_d or skipped_g:
            logger.warning("step %d: non-finite loss or gradient, optimizer step skipped (%s)",
                           self.session.progress.step + 1, ", ".join(
                               name for name, bad in (("discriminator", skipped_d), ("generator", skipped_g))
                               if bad))
        totals.update({"train/grad_norm_g": grad_norm_g, "train/grad_norm_d": grad_norm_d,
                       "train/lr_g": self.optim_g.param_groups[0]["lr"],
                       "train/lr_d": self.optim_d.param_groups[0]["lr"]})
        return StepResult(totals, skipped_d or skipped_g)

    def _sv_emb(self, batch: dict) -> torch.Tensor | None:
        """The speaker-verification embeddings (B, sv_dim) for v2Pro/v2ProPlus; None for v1/v2 (a
        dataset prepared with --sv also serves v2 models, which do not take them)."""
        return batch["sv_emb"] if self.cfg.model.is_pro else None

    # ------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> ValidationResult:
        """`val/mel_loss` over the validation split, generated through the inference path with noise
        scale 0, averaged over all processes (each takes every W-th utterance); `val/speaker_sim`
        (mean over utterances) and `val/cer` (edits / reference tokens, summed over utterances) when
        their models are set; and a few utterances for the trackers and the run folder (generated
        and real audio and mels, text, transcript, the utterance's own metrics)."""
        acc = self.accelerator
        generator = acc.unwrap_model(self.net_g)
        generator.eval()
        limit = self.cfg.validation.max_items or len(self.val_set)
        indices = list(range(min(limit, len(self.val_set))))[acc.process_index::acc.num_processes]
        # mel L1 sum, utterances, speaker similarity sum, ASR edits, reference tokens
        total = torch.zeros(5, device=acc.device)
        seconds = {"generation": 0.0, "speaker similarity": 0.0, "speech recognition": 0.0}
        samples = []
        for index in indices:
            started = time.perf_counter()
            item = self.val_set[index]
            batch = self.val_collate([item])
            ssl, spec, text, wav = (batch[k].to(acc.device) for k in ("ssl", "spec", "text", "wav"))
            frames = int(batch["spec_lengths"][0])
            with self.autocast():
                codes = generator.extract_latent(ssl[:, :, :frames])
                sv_emb = self._sv_emb(batch)
                fake = generator.decode(codes.transpose(0, 1), text, spec[:, :, :frames], noise_scale=0.0,
                                        sv_emb=None if sv_emb is None else sv_emb.to(acc.device))
            real = wav[0, 0, : int(batch["wav_lengths"][0])].float()
            generated = fake[0, 0].float()
            mel_real = self.features.mel(real[None])
            mel_fake = self.features.mel(generated[None])
            length = min(mel_real.size(-1), mel_fake.size(-1))
            mel_loss = torch.nn.functional.l1_loss(mel_fake[..., :length], mel_real[..., :length])
            total[0] += mel_loss
            total[1] += 1
            metrics = {"val/mel_loss": float(mel_loss)}
            seconds["generation"] += time.perf_counter() - started
            score = self.quality.score(generated, real, self.cfg.data.sampling_rate, key=item["name"],
                                       text=item["text"], lang=item["lang"])
            metrics.update(score.metrics)
            transcript = score.transcript
            for offset, value in enumerate(score.sums):
                total[2 + offset] += value
            for part, value in score.seconds.items():
                seconds[part] += value
            if acc.is_main_process and len(samples) < self.cfg.tracking.num_samples:
                samples.append({"name": batch["names"][0], "audio": generated.cpu().numpy(),
                                "mel": mel_fake[0].cpu().numpy(), "real_audio": real.cpu().numpy(),
                                "real_mel": mel_real[0].cpu().numpy(), "text": item["text"],
                                "transcript": transcript, "metrics": metrics})
        generator.train()
        total = sum_over_processes(acc, total)
        count = total[1].clamp(min=1)
        result = {"val/mel_loss": float(total[0] / count), **self.quality.summarise(total[2:], total[1])}
        logger.info("validation of %d utterance(s) on this process: %s", len(indices),
                    ", ".join(f"{part} {value:.2f} s" for part, value in seconds.items()
                              if value or part == "generation"))
        return ValidationResult(result, samples, self.cfg.data.sampling_rate)

    # --------------------------------------------------------------------------------- exports
    def write_export(self, state_dict: dict[str, torch.Tensor], name: str, epoch: int, step: int) -> Path:
        """GPT-SoVITS inference weights `exports/SoVITS_weights_<version>/<name>_e<E>_s<S>.pth`: the
        folder and name the inference WebUI lists (copy `exports/*` into a GPT-SoVITS checkout)."""
        version = self.cfg.model.version
        folder = self.session.run_dir / "exports" / sovits_weight_dir(version)
        path = folder / sovits_export_name(name, epoch, step)
        export_sovits(state_dict, self.cfg.official_dict(), path, sovits_export_info(epoch, step),
                      version=self.cfg.model.version)
        return path


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    return run_recipe("s2", __doc__.splitlines()[0], S2Config, S2Recipe, DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    exit_process(main())
