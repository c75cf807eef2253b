#!/usr/bin/env python
"""SoVITS v3/v4 (flow-matching decoder on a DiT) fine-tuning on Accelerate, LoRA or full.

    accelerate launch recipes/s2_cfm.py --config recipes/configs/s2_v3_lora.yaml [key=value ...]
    python recipes/s2_cfm.py --config recipes/configs/s2_cfm_demo.yaml    # tiny model, demo data

The v3/v4 stage predicts mel spectrograms with conditional flow matching (CFM) from the content
features of the frozen text encoder; a vocoder that is not trained here turns them into audio. It
follows the official `s2_train_v3_lora.py` (LoRA, `train.lora_rank` 16/32/64/128) and `s2_train_v3.py`
(full fine-tuning, `train.lora_rank: null`):
- LoRA through peft on the DiT's attention (`to_q`, `to_k`, `to_v`, `to_out.0`, alpha = rank); the
  text encoder, SSL projection and quantizer stay frozen (`model.freeze_quantizer`), the reference
  encoder, bridge, `wns1` and the CFM train (full) or the LoRA adapters + bridge + `wns1` (LoRA);
- the official loss (the CFM's, with its two-step shortcut branch; its random draws in the official
  order), AdamW (0.8, 0.99, eps 1e-9, weight decay 0.01), ExponentialLR per epoch, optional clipping
  (the official trainer clips nothing), accumulation, gradient checkpointing (`train.grad_ckpt`);
- target mels computed from the dataset's 32 kHz audio (`gsv_accel.data.cfm`): datasets prepared for
  v2 train v3/v4 unchanged.
Supports what the shared session gives every recipe: CPU, one or many GPUs (DDP, with
`find_unused_parameters` because the reference encoder and `linear_mel` get no gradient), bf16/fp16
from the accelerate config, exact resume, plateau control and early stop, best-weight restore,
W&B/TensorBoard, SIGTERM saves. Refuses DeepSpeed (one engine, LoRA and the frozen encoder: not tried).

Validation (deterministic, so epochs compare): `val/cfm_loss`, the training loss on the validation
split with fixed noise, time steps and shortcut draws (`sampling.seed`); `val/mel_loss`, the L1
between each validation utterance's real mel and the mel the CFM samples for its codes and phones in
`sampling.steps` Euler steps from fixed noise, continuing a fixed training utterance as the prompt
(as inference continues the reference); mel images go to the trackers. With `sampling.vocoder` (v3: the
official BigVGAN folder `models--nvidia--bigvgan_v2_24khz_100band_256x`, v4: `gsv-v4-pretrained/
vocoder.pth`; `gsv_accel.models.vocoder`) the sampled and real mels are also turned into audio
(denormalised, vocoded, resampled to 32 kHz), saved in `<run>/samples/` and sent to the trackers, and
`validation.speaker_model` / `validation.asr_model` add `val/speaker_sim` / `val/cer` of the sampled
audio against the vocoded real mel, as in the v2 recipe (`gsv_accel.quality`).

Exports: LoRA runs write the official LoRA file (`<exp>_e<E>_s<S>_l<rank>.pth`, header `03`/`04`,
fp16, the trained and LoRA weights) to `exports/SoVITS_weights_v3/` (`_v4/`), and with
`export.merged_full: true` also the merged full model; full runs write the full model.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import DistributedDataParallelKwargs

from gsv_accel.audio import denormalize_cfm_mel, resample_audio
from gsv_accel.cfm_export import export_cfm_full, export_cfm_lora, lora_export_name
from gsv_accel.config import (
    CheckpointConfig,
    ConfigError,
    RunConfig,
    check_training_loop,
    require_path,
    to_dict,
)
from gsv_accel.data.cfm import CFMCollate
from gsv_accel.data.dataset import load_prepared
from gsv_accel.data.sampler import DEFAULT_BOUNDARIES, LengthBucketBatchSampler
from gsv_accel.deepspeed_support import is_deepspeed
from gsv_accel.distributed import sum_over_processes
from gsv_accel.formats import load_weights_into, sovits_export_info, sovits_export_name, sovits_weight_dir
from gsv_accel.lifecycle import exit_process
from gsv_accel.models.sovits.config import SoVITSV3Config
from gsv_accel.models.sovits.generator_v3 import SynthesizerTrnV3
from gsv_accel.models.sovits.lora import add_lora, has_lora, lora_state_dict, merge_lora
from gsv_accel.models.vocoder import VocoderFileError, load_vocoder
from gsv_accel.plateau import PlateauConfig
from gsv_accel.quality import QualityValidationConfig, VoiceQuality
from gsv_accel.recipe import BATCH_SHARE, StepResult, ValidationResult
from gsv_accel.session import TrainingSession, run_recipe
from gsv_accel.stepper import adamw, make_stepper
from gsv_accel.tracking import TrackingConfig

logger = logging.getLogger("recipes.s2_cfm")
REPO_ROOT = Path(__file__).resolve().parents[1]
AUDIO_RATE = 32000  # the rate of the validation audio (speaker model, trackers, samples)
DEFAULT_CONFIG = REPO_ROOT / "recipes" / "configs" / "s2_cfm_demo.yaml"


# ----------------------------------------------------------------------------------------- config


@dataclass
class CFMDataConfig:
    """The prepared dataset (any made by `gsv-accel prepare`: 32 kHz audio, HuBERT features, phones)."""

    dataset: str = "runs/demo_dataset"
    batch_size: int = 4
    num_workers: int = 0
    bucket_boundaries: list[int] = field(default_factory=lambda: list(DEFAULT_BOUNDARIES))

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class CFMTrainConfig:
    epochs: int = 8
    max_steps: int | None = None
    learning_rate: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    eps: float = 1e-9
    weight_decay: float = 0.01
    lr_decay: float = 0.999875
    lora_rank: int | None = 32  # null: full fine-tuning (official s2_train_v3.py)
    grad_ckpt: bool = False
    grad_clip: float | None = None
    fused_adamw: bool = True  # PyTorch's fused AdamW kernel (false: the for-loop one the official uses)
    grad_accum: int = 1
    log_every_n_steps: int = 1
    max_nonfinite_steps: int = 3
    on_nonfinite: str = "rollback"
    rollback_lr_factor: float = 0.5
    pretrained_s2G: str | None = None  # s2Gv3.pth / gsv-v4-pretrained/s2Gv4.pth, or a full export

    def __post_init__(self) -> None:
        check_training_loop(self)
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"train.lora_rank must be >= 1 or null (full fine-tuning), got {self.lora_rank}")


@dataclass
class SamplingConfig:
    """How validation samples mels (fixed, so that validations compare)."""

    steps: int = 16  # Euler steps (official inference: 32)
    seed: int = 1234
    max_items: int | None = 4  # validation utterances sampled for val/mel_loss (sampling is slow)
    # The vocoder turning sampled mels into audio (null: mels only). v3: the official BigVGAN folder
    # models--nvidia--bigvgan_v2_24khz_100band_256x; v4: gsv-v4-pretrained/vocoder.pth.
    vocoder: str | None = None


@dataclass
class CFMExportConfig:
    merged_full: bool = False  # LoRA runs: also export the merged full model


@dataclass
class CFMConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/s2_cfm_demo"))
    data: CFMDataConfig = field(default_factory=CFMDataConfig)
    model: SoVITSV3Config = field(default_factory=SoVITSV3Config)
    train: CFMTrainConfig = field(default_factory=CFMTrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    export: CFMExportConfig = field(default_factory=CFMExportConfig)
    validation: QualityValidationConfig = field(default_factory=QualityValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    plateau: PlateauConfig = field(default_factory=lambda: PlateauConfig(monitor="val/cfm_loss"))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def official_dict(self) -> dict:
        """The config stored in exports (no local paths)."""
        train = {k: v for k, v in to_dict(self.train).items() if not k.startswith("pretrained_")}
        # What official inference reads to build SynthesizerTrnV3 (the values of configs/s2.json).
        train["segment_size"] = 20480
        data = {"sampling_rate": 32000, "filter_length": 2048, "hop_length": 640, "win_length": 2048}
        return {"data": data, "model": to_dict(self.model), "train": train}


# ----------------------------------------------------------------------------------------- recipe


class CFMRecipe:
    """One v3/v4 run: `setup()` wires the parts, `train()` runs the session's loop."""

    def __init__(self, cfg: CFMConfig, resume: str | None) -> None:
        self.cfg = cfg
        self.resume = resume
        # LoRA rank and grad checkpointing change which tensors exist or how they are computed, not
        # just values: a resume with another rank is refused like a model change.
        self.session = TrainingSession.from_config(cfg, shape_sections=("model",))

    def setup(self) -> None:
        session, cfg = self.session, self.cfg
        # DDP: the reference encoder and linear_mel require grad but get none (the official export
        # must hold them, so they are not frozen).
        self.accelerator = acc = session.start(
            self.resume, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        if is_deepspeed(acc):
            raise ConfigError("the v3/v4 recipe does not run under DeepSpeed yet: launch it with "
                              "recipes/accelerate/single_gpu.yaml or multi_gpu.yaml (DDP)")
        self._setup_data()
        self._setup_audio()
        self.model = SynthesizerTrnV3(cfg.model)
        if cfg.train.pretrained_s2G and not session.resuming:
            pretrained = require_path("train.pretrained_s2G", cfg.train.pretrained_s2G)
            report = load_weights_into(self.model, pretrained)
            logger.info("pretrained v3/v4 model from %s: %s", cfg.train.pretrained_s2G, report)
        if cfg.train.lora_rank is not None:
            add_lora(self.model, cfg.train.lora_rank)  # after the base weights: LoRA starts at zero
        tc = cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adamw(params, tc.learning_rate, betas=tuple(tc.betas), eps=tc.eps,
                               weight_decay=tc.weight_decay, device=acc.device, fused=tc.fused_adamw)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=tc.lr_decay)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.stepper = make_stepper(acc, tc.grad_clip)
        session.attach(self, models=[self.model], schedulers=[self.scheduler], sampler=self.sampler,
                       schedule_per_step=False)

    def _setup_data(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        require_path("data.dataset", cfg.data.dataset, "folder")
        prepared = load_prepared(cfg.data.dataset)
        self.train_set = prepared.view("train")
        self.val_set = prepared.view("validation")
        self.sampler = LengthBucketBatchSampler(
            self.train_set.lengths, cfg.data.batch_size, cfg.data.bucket_boundaries,
            num_replicas=acc.num_processes, rank=acc.process_index, seed=cfg.run.seed)
        self.collate = CFMCollate(cfg.model.version)
        # Own generator: creating the iterator mid-epoch on resume must not draw from the global RNG.
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=self.sampler, collate_fn=self.collate,
            num_workers=cfg.data.num_workers, generator=torch.Generator(),
            pin_memory=acc.device.type == "cuda")
        # The prompt every validation sample continues: the first training utterance by name.
        names = self.train_set.names
        self.prompt = self.collate([self.train_set[min(range(len(names)), key=names.__getitem__)]])

    def _setup_audio(self) -> None:
        """The vocoder of `sampling.vocoder` and the voice-quality models, loaded once on the training
        device; bad paths or files are refused before anything is written."""
        cfg, device = self.cfg, self.accelerator.device
        self.vocoder, self.vocoder_rate = None, AUDIO_RATE
        if cfg.sampling.vocoder:
            path = require_path("sampling.vocoder", cfg.sampling.vocoder,
                                "folder" if cfg.model.version == "v3" else "file")
            try:
                vocoder, self.vocoder_rate = load_vocoder(cfg.model.version, path)
            except VocoderFileError as err:
                raise ConfigError(f"sampling.vocoder={cfg.sampling.vocoder}: {err}") from err
            self.vocoder = vocoder.to(device)
            logger.info("validation: %s vocoder %s (%d parameters, %d Hz)", cfg.model.version, path,
                        sum(p.numel() for p in vocoder.parameters()), self.vocoder_rate)
        self.quality = VoiceQuality.from_config(cfg.validation, device)
        if self.quality.metric_names and self.vocoder is None:
            raise ConfigError("validation.speaker_model / validation.asr_model score audio: they need "
                              "sampling.vocoder (v3: the BigVGAN folder, v4: gsv-v4-pretrained/vocoder.pth)")

    def _to_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """A normalised CFM mel (1, 100, T) -> its (N,) float waveform at 32 kHz (on the mel's device)."""
        wave = self.vocoder(denormalize_cfm_mel(mel.float()))[0, 0]
        if self.vocoder_rate == AUDIO_RATE:
            return wave
        resampled = resample_audio(wave.cpu().numpy(), self.vocoder_rate, AUDIO_RATE)
        return torch.from_numpy(np.ascontiguousarray(resampled)).to(mel.device)

    # ------------------------------------------------------------------------------------ train
    def train(self) -> int:
        tc = self.cfg.train
        return self.session.run(self.loader, grad_accum=tc.grad_accum, log_every=tc.log_every_n_steps,
                                desc=f"s2 {self.cfg.model.version}",
                                postfix=lambda logs: {"cfm": f"{logs['train/cfm_loss']:.3f}"})

    def reported_metrics(self) -> tuple[str, ...]:
        return ("val/cfm_loss", "val/mel_loss", *self.quality.metric_names)

    def _loss(self, model, batch: dict) -> torch.Tensor:
        return model(batch["ssl"], batch["spec"], batch["mel"], batch["ssl_lengths"], batch["spec_lengths"],
                     batch["text"], batch["text_lengths"], batch["mel_lengths"],
                     use_grad_ckpt=self.cfg.train.grad_ckpt).loss

    def train_step(self, micro_batches: list[dict]) -> StepResult:
        acc, stepper, n = self.accelerator, self.stepper, len(micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        total, bad = 0.0, False
        accum = self.cfg.train.grad_accum
        for index, batch in enumerate(micro_batches):
            last = index == n - 1
            # A mean loss: a micro-batch counts by its share of its batch (see BATCH_SHARE).
            share = batch.get(BATCH_SHARE, 1.0)
            batch = {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            with stepper.no_sync(self.model, not last):
                with acc.autocast():
                    loss = self._loss(self.model, batch).float()
                stepper.backward(self.model, loss * share / accum, last)
            bad = bad or not bool(torch.isfinite(loss))
            total += float(loss.detach()) * share / accum
        grad_norm, skipped = stepper.step(self.optimizer, self.model, bad_loss=bad)
        if skipped:
            logger.warning("step %d: non-finite loss or gradient, optimizer step skipped",
                           self.session.progress.step + 1)
        return StepResult({"train/cfm_loss": total, "train/grad_norm": grad_norm,
                           "train/lr": self.optimizer.param_groups[0]["lr"]}, skipped)

    # ------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> ValidationResult:
        """The metrics on every process's share of the validation split, averaged over processes
        (`val/speaker_sim` over the sampled utterances, `val/cer` edits / reference tokens summed).
        The session runs this on a forked RNG; the seeds here make every validation draw the same."""
        acc, cfg = self.accelerator, self.cfg
        model = acc.unwrap_model(self.model)
        model.eval()
        indices = list(range(len(self.val_set)))[acc.process_index::acc.num_processes]
        # cfm sum, n, mel sum, n, speaker similarity sum, ASR edits, reference tokens
        totals = torch.zeros(7, dtype=torch.float64, device=acc.device)
        seconds = {"sampling": 0.0, "vocoder": 0.0}
        samples = []
        prompt = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in self.prompt.items()}
        prompt_frames = int(prompt["spec_lengths"][0])
        prompt_codes = model.extract_latent(prompt["ssl"][:, :, :prompt_frames])
        for position, index in enumerate(indices):
            item = self.val_set[index]
            batch = self.collate([item])
            batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            # Fixed draws per utterance: the same noise, time steps and shortcut coin every validation.
            seed = cfg.sampling.seed + index
            torch.manual_seed(seed)
            random.seed(seed)
            with acc.autocast():
                totals[0] += float(self._loss(model, batch).float())
            totals[1] += 1
            limit = cfg.sampling.max_items
            if limit is not None and position * acc.num_processes + acc.process_index >= limit:
                continue
            started = time.perf_counter()
            frames = int(batch["spec_lengths"][0])
            codes = model.extract_latent(batch["ssl"][:, :, :frames])
            torch.manual_seed(seed)
            with acc.autocast():
                fake = model.synthesize_mel(codes, batch["text"], prompt["spec"][:, :, :prompt_frames],
                                            prompt_codes, prompt["text"],
                                            prompt["mel"][:, :, : int(prompt["mel_lengths"][0])],
                                            sample_steps=cfg.sampling.steps).float()
            real = batch["mel"][:, :, : int(batch["mel_lengths"][0])]
            length = min(real.size(-1), fake.size(-1))
            totals[2] += torch.nn.functional.l1_loss(fake[..., :length], real[..., :length]).double()
            totals[3] += 1
            seconds["sampling"] += time.perf_counter() - started
            sample = {"name": batch["names"][0], "mel": fake[0].cpu().numpy()}
            if self.vocoder is not None:
                started = time.perf_counter()
                generated, real_audio = self._to_audio(fake), self._to_audio(real)
                seconds["vocoder"] += time.perf_counter() - started
                # The real side is the vocoded real mel: the metrics then measure the CFM, not the vocoder.
                score = self.quality.score(generated, real_audio, AUDIO_RATE, key=batch["names"][0],
                                           text=item.get("text", ""), lang=item.get("lang"))
                for offset, value in enumerate(score.sums):
                    totals[4 + offset] += value
                for part, value in score.seconds.items():
                    seconds[part] = seconds.get(part, 0.0) + value
                sample.update(audio=generated.cpu().numpy(), real_audio=real_audio.cpu().numpy(),
                              real_mel=real[0].cpu().numpy(), text=item.get("text"),
                              transcript=score.transcript, metrics=score.metrics)
            if acc.is_main_process and len(samples) < self.cfg.tracking.num_samples:
                samples.append(sample)
        model.train()
        totals = sum_over_processes(acc, totals)
        metrics = {"val/cfm_loss": float(totals[0] / totals[1].clamp(min=1)),
                   "val/mel_loss": float(totals[2] / totals[3].clamp(min=1)),
                   **self.quality.summarise(totals[4:], totals[3])}
        logger.info("validation on this process: %s",
                    ", ".join(f"{part} {value:.2f} s" for part, value in seconds.items()
                              if value or part == "sampling"))
        if self.vocoder is None:
            return ValidationResult(metrics, samples)
        return ValidationResult(metrics, samples, AUDIO_RATE)

    # --------------------------------------------------------------------------------- exports
    def write_export(self, state_dict: dict[str, torch.Tensor], name: str, epoch: int, step: int) -> Path:
        """The LoRA file (LoRA runs; plus the merged model with `export.merged_full`) or the full model
        in `exports/SoVITS_weights_<v3|v4>/`."""
        cfg, version = self.cfg, self.cfg.model.version
        folder = self.session.run_dir / "exports" / sovits_weight_dir(version)
        info = sovits_export_info(epoch, step)
        rank = cfg.train.lora_rank
        if rank is None:
            path = folder / sovits_export_name(name, epoch, step)
            return export_cfm_full(state_dict, cfg.official_dict(), path, info, version)
        model = copy.deepcopy(self.accelerator.unwrap_model(self.model)).cpu()
        model.load_state_dict(state_dict)
        path = export_cfm_lora(lora_state_dict(model), cfg.official_dict(),
                               folder / lora_export_name(name, epoch, step, rank), info, version, rank)
        if cfg.export.merged_full and has_lora(model):
            merged = merge_lora(model).state_dict()
            merged_path = folder / sovits_export_name(f"{name}_merged", epoch, step)
            export_cfm_full(merged, cfg.official_dict(), merged_path, info, version)
        return path


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    return run_recipe("s2_cfm", __doc__.splitlines()[0], CFMConfig, CFMRecipe, DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    exit_process(main())
