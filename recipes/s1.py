#!/usr/bin/env python
"""GPT (stage 1, text to semantic) fine-tuning on Accelerate.

    accelerate launch recipes/s1.py [--config FILE] [--resume auto|PATH] [section.key=value ...]
    python recipes/s1.py                      # the demo: a tiny GPT on the demo data (after make demo's S2)

Same machinery as the S2 recipe (`TrainingSession`): complete checkpoints with exact resume, the
plateau controller (monitor `val/loss`), W&B/TensorBoard, `train.log`, mixed precision and several
processes from the accelerate config, non-finite steps skipped and rolled back, gradient
checkpointing of the transformer layers (`train.grad_ckpt`), out-of-memory steps retried on half-size
micro-batches (`gsv_accel.memory`).

Training follows the official GPT stage where it matters for compatibility and states where it
differs: the teacher-forced loss is the cross-entropy SUMMED over target positions (EOS appended,
padded targets included), as officially (`train.loss_reduction: mean` divides by the number of
target positions instead); top-3 accuracy ignores EOS targets. The official trainer uses ScaledAdam,
forces lr 0.002 after its first step and steps every 4 batches with unused gradient clipping; here
the optimizer is AdamW with linear warmup then cosine decay per optimizer step, accumulation is
`train.grad_accum` (official: 4) and `train.grad_clip` really clips. `train.dpo: true` adds the
official reference-free DPO loss. Validation reports `val/loss` (mean cross-entropy per target
position, padding excluded) and `val/top3_acc`, averaged over all processes.

Exports: `exports/<exp>-e<epoch>.ckpt` in the GPT_weights format (fp16 weights under `model.`,
config with `data.max_sec`, info `GPT-e<epoch>`), loadable with the official
`load_state_dict(strict=True)`; the final and the best model are exported at the end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gsv_accel.config import (
    CheckpointConfig,
    ConfigError,
    RunConfig,
    ValidationConfig,
    check_training_loop,
    require_path,
    to_dict,
)
from gsv_accel.data.dataset import DatasetCompatibilityError, load_prepared
from gsv_accel.data.s1 import S1Collate, S1Filter, filter_items
from gsv_accel.data.sampler import LengthBucketBatchSampler
from gsv_accel.deepspeed_support import is_deepspeed
from gsv_accel.distributed import sum_over_processes
from gsv_accel.formats import export_gpt, gpt_export_info, gpt_export_name, gpt_weight_dir, load_weights_into
from gsv_accel.lifecycle import exit_process
from gsv_accel.models.gpt import GPTConfig, Text2SemanticDecoder
from gsv_accel.models.gpt.model import top_k_accuracy
from gsv_accel.plateau import PlateauConfig
from gsv_accel.recipe import BATCH_SHARE, StepResult, ValidationResult
from gsv_accel.session import TrainingSession, run_recipe
from gsv_accel.stepper import make_stepper
from gsv_accel.tracking import TrackingConfig

logger = logging.getLogger("recipes.s1")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "recipes" / "configs" / "s1_demo.yaml"


# ----------------------------------------------------------------------------------------- config


@dataclass
class S1DataConfig:
    dataset: str = "runs/demo_dataset_s1"
    batch_size: int = 8
    num_workers: int = 0
    # Buckets by semantic length (codes, 25 per second).
    bucket_boundaries: list[int] = field(
        default_factory=lambda: [0, 50, 100, 150, 200, 300, 400, 600, 800, 1000, 1350])
    max_sec: float = 54.0
    max_phones: int = 540
    min_phones_per_sec: float = 3.0
    max_phones_per_sec: float = 25.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")

    def filters(self) -> S1Filter:
        return S1Filter(self.max_sec, self.max_phones, self.min_phones_per_sec, self.max_phones_per_sec)


@dataclass
class S1TrainConfig:
    epochs: int = 10
    max_steps: int | None = None
    learning_rate: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # the cosine decays to learning_rate * min_lr_ratio
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    grad_ckpt: bool = False  # gradient checkpointing of the transformer layers (less memory, ~1/3 slower)
    loss_reduction: str = "sum"
    dpo: bool = False
    log_every_n_steps: int = 1
    max_nonfinite_steps: int = 3
    on_nonfinite: str = "rollback"
    rollback_lr_factor: float = 0.5
    pretrained_s1: str | None = None  # an official GPT .ckpt export or a Lightning checkpoint

    def __post_init__(self) -> None:
        check_training_loop(self)
        if self.loss_reduction not in ("sum", "mean"):
            raise ValueError(f"train.loss_reduction must be 'sum' or 'mean', got {self.loss_reduction!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class S1Config:
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/s1_demo"))
    data: S1DataConfig = field(default_factory=S1DataConfig)
    model: GPTConfig = field(default_factory=GPTConfig)
    train: S1TrainConfig = field(default_factory=S1TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    plateau: PlateauConfig = field(default_factory=lambda: PlateauConfig(monitor="val/loss"))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def official_dict(self) -> dict:
        """The config stored in GPT exports: `model` and `data` sections as in s1longer-v2.yaml."""
        return {"model": to_dict(self.model), "data": {"max_sec": self.data.max_sec},
                "train": {"epochs": self.train.epochs}}


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier per optimizer step: linear warmup to 1, then cosine down to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# ----------------------------------------------------------------------------------------- recipe


class S1Recipe:
    """Owns one GPT training run: `setup()` wires the parts, `train()` runs the loop."""

    def __init__(self, cfg: S1Config, resume: str | None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.session = TrainingSession.from_config(cfg)

    # ------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        session = self.session
        self.accelerator = acc = session.start(self.resume)
        if is_deepspeed(acc):
            # Checkpoint weights, exports and best-weight restore here read plain (non-DeepSpeed) files.
            raise ConfigError("the S1 recipe does not run under DeepSpeed; the GPT stage fits on one GPU: "
                              "launch it with recipes/accelerate/single_gpu.yaml or multi_gpu.yaml (DDP)")
        self._setup_data()
        self.model = Text2SemanticDecoder(self.cfg.model)
        if self.cfg.train.pretrained_s1 and not session.resuming:
            pretrained = require_path("train.pretrained_s1", self.cfg.train.pretrained_s1)
            report = load_weights_into(self.model, pretrained, strict=True)
            logger.info("pretrained GPT from %s: %s", self.cfg.train.pretrained_s1, report)
        self.model.set_grad_checkpointing(self.cfg.train.grad_ckpt)
        if self.cfg.train.grad_ckpt:
            logger.info("gradient checkpointing of the transformer layers (train.grad_ckpt): recomputed in "
                        "the backward pass")
        self._setup_optimizer()
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.stepper = make_stepper(acc, self.cfg.train.grad_clip)
        # Warmup + cosine advance per optimizer step.
        session.attach(self, models=[self.model], schedulers=[self.scheduler], sampler=self.sampler,
                       schedule_per_step=True)

    def _setup_data(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        require_path("data.dataset", cfg.data.dataset, "folder")
        prepared = load_prepared(cfg.data.dataset)
        semantic = prepared.meta.get("semantic") or {}
        # The SoVITS version whose codes the GPT learns decides where the WebUI lists its exports.
        self.sovits_version = semantic.get("s2_version") or "v2"
        if not semantic:
            raise DatasetCompatibilityError(f"{cfg.data.dataset} has no semantic codes: prepare it with "
                                            "--s2-pretrained (and --bert for Chinese)")
        if int(semantic.get("codebook_size", cfg.model.EOS)) != cfg.model.EOS:
            raise DatasetCompatibilityError(
                f"the dataset's semantic codebook has {semantic['codebook_size']} codes but model.EOS is "
                f"{cfg.model.EOS} (set model.EOS to the codebook size and model.vocab_size to one more)")
        bert = prepared.meta.get("bert") or {}
        if bert and int(bert["hidden_size"]) != cfg.model.bert_dim:
            raise DatasetCompatibilityError(f"the dataset's BERT features are {bert['hidden_size']} wide but "
                                            f"model.bert_dim is {cfg.model.bert_dim}")
        features = ("phones", "semantic", "bert")
        self.train_set, train_lengths = self._filtered(prepared, "train", features)
        self.val_set, _ = self._filtered(prepared, "validation", features)
        self.sampler = LengthBucketBatchSampler(
            train_lengths, cfg.data.batch_size, cfg.data.bucket_boundaries,
            num_replicas=acc.num_processes, rank=acc.process_index, seed=cfg.run.seed)
        # Own generator: creating the iterator mid-epoch on resume must not draw from the global RNG.
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_sampler=self.sampler, collate_fn=S1Collate(),
            num_workers=cfg.data.num_workers, generator=torch.Generator(),
            pin_memory=acc.device.type == "cuda")

    def _filtered(self, prepared, split: str, features) -> tuple[torch.utils.data.Dataset, list[int]]:
        """A split with the official filters applied; dropped items are reported in train.log."""
        view = prepared.view(split, features)
        table = view.hf_dataset.data.table
        phones = [len(x) for x in table.column("phone_ids").to_pylist()]
        semantic = [len(x) for x in table.column("semantic").to_pylist()]
        kept, dropped = filter_items(phones, semantic, view.names, self.cfg.data.filters())
        for name, reason in dropped:
            logger.warning("%s: %s dropped: %s", split, name, reason)
        if not kept:
            raise DatasetCompatibilityError(
                f"every {split} utterance of {self.cfg.data.dataset} was dropped by the GPT filters "
                f"({len(dropped)} dropped; see train.log): adjust data.max_sec / data.max_phones / "
                "data.min_phones_per_sec / data.max_phones_per_sec")
        return torch.utils.data.Subset(view, kept), [semantic[i] for i in kept]

    def _setup_optimizer(self) -> None:
        tc = self.cfg.train
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tc.learning_rate, betas=tuple(tc.betas), eps=tc.eps)
        total = max(1, self.sampler.steps_per_epoch() // tc.grad_accum * tc.epochs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(tc.warmup_steps, total, tc.min_lr_ratio))

    # ------------------------------------------------------------------------------------ train
    def train(self) -> int:
        """Run to the end (or an early stop / signal). Returns the process exit code."""
        tc = self.cfg.train
        return self.session.run(
            self.loader, grad_accum=tc.grad_accum, log_every=tc.log_every_n_steps, desc="s1",
            postfix=lambda logs: {"loss": f"{logs['train/loss_per_token']:.3f}",
                                  "acc": f"{logs['train/top3_acc']:.3f}"})

    def reported_metrics(self) -> tuple[str, ...]:
        return ("val/loss", "val/top3_acc")

    def train_step(self, micro_batches: list[dict]) -> StepResult:
        """One optimizer step over `grad_accum` micro-batches. Returns the values to log and whether
        a non-finite loss or gradient made it skip the step (decided alike on every process)."""
        acc, tc, stepper = self.accelerator, self.cfg.train, self.stepper
        n = len(micro_batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = acc_sum = tokens = 0.0
        bad = False
        for index, batch in enumerate(micro_batches):
            # A summed loss adds up over the pieces of a cut batch; a mean one (and the accuracy) counts
            # a micro-batch by its share of its batch's items (see BATCH_SHARE).
            share = batch.get(BATCH_SHARE, 1.0)
            batch = {k: v.to(acc.device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            inputs = (batch["phoneme_ids"], batch["phoneme_ids_len"], batch["semantic_ids"],
                      batch["semantic_ids_len"], batch["bert_feature"])
            n_targets = float((batch["semantic_ids_len"] + 1).sum())
            # Accumulating micro-batches skip DDP's gradient all-reduce until the last one.
            with stepper.no_sync(self.model, index < n - 1):
                with acc.autocast():
                    loss, top3 = self.model(*inputs, dpo=tc.dpo)
                loss = loss.float()
                scaled = loss / n_targets * share if tc.loss_reduction == "mean" else loss
                stepper.backward(self.model, scaled / tc.grad_accum, index == n - 1)
            bad = bad or not bool(torch.isfinite(loss))
            loss_sum += float(loss.detach())
            acc_sum += float(top3) * share / tc.grad_accum
            tokens += n_targets
        grad_norm, skipped = stepper.step(self.optimizer, self.model, bad_loss=bad)
        if skipped:
            logger.warning("step %d: non-finite loss or gradient, optimizer step skipped",
                           self.session.progress.step + 1)
        return StepResult({"train/loss": loss_sum, "train/loss_per_token": loss_sum / max(tokens, 1.0),
                           "train/top3_acc": acc_sum, "train/grad_norm": grad_norm,
                           "train/lr": self.optimizer.param_groups[0]["lr"]}, skipped)

    # ------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> ValidationResult:
        """`val/loss`: mean cross-entropy per target position (ids + EOS, padding excluded) over the
        validation split, and `val/top3_acc`, both averaged over all processes."""
        acc = self.accelerator
        model = acc.unwrap_model(self.model)
        model.eval()
        collate = S1Collate()
        indices = list(range(len(self.val_set)))[acc.process_index::acc.num_processes]
        totals = torch.zeros(4, device=acc.device, dtype=torch.float64)  # ce, positions, correct, scored
        size = self.cfg.data.batch_size
        for start in range(0, len(indices), size):
            batch = collate([self.val_set[i] for i in indices[start:start + size]])
            batch = {k: v.to(acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with acc.autocast():
                logits, targets = model.teacher_forced_logits(
                    batch["phoneme_ids"], batch["phoneme_ids_len"], batch["semantic_ids"],
                    batch["semantic_ids_len"], batch["bert_feature"])
            logits = logits.float()
            positions = torch.arange(targets.size(1), device=targets.device)
            valid = positions.unsqueeze(0) <= batch["semantic_ids_len"].unsqueeze(1)
            ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            scored = valid & (targets != model.eos)
            accuracy = top_k_accuracy(logits[scored].unsqueeze(0), targets[scored].unsqueeze(0),
                                      self.cfg.model.accuracy_top_k, model.eos)
            totals += torch.tensor([float(ce[valid].sum()), float(valid.sum()),
                                    float(accuracy) * float(scored.sum()), float(scored.sum())],
                                   device=acc.device, dtype=torch.float64)
        model.train()
        totals = sum_over_processes(acc, totals)
        return ValidationResult({"val/loss": float(totals[0] / totals[1].clamp(min=1)),
                                 "val/top3_acc": float(totals[2] / totals[3].clamp(min=1))})

    # --------------------------------------------------------------------------------- exports
    def write_export(self, state_dict: dict[str, torch.Tensor], name: str, epoch: int, step: int) -> Path:
        """`exports/GPT_weights_<version>/<name>-e<E>.ckpt` in the GPT_weights format (named by epoch, as
        the official; the folder the WebUI lists for the SoVITS version whose codes it learned)."""
        folder = self.session.run_dir / "exports" / gpt_weight_dir(self.sovits_version)
        path = folder / gpt_export_name(name, epoch)
        export_gpt(state_dict, self.cfg.official_dict(), path, gpt_export_info(epoch))
        return path


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    return run_recipe("s1", __doc__.splitlines()[0], S1Config, S1Recipe, DEFAULT_CONFIG, argv)


if __name__ == "__main__":
    exit_process(main())
