#!/usr/bin/env python
"""One full SoVITS (S2) training step, gsv_accel vs the official trainer, default models, same weights:
v2 and v2Pro (GAN), and v3 (flow matching, LoRA).

What is timed, per step, on the same synthetic batch (`ours_s2.synthetic_batch`: random 32 kHz audio,
its official linear spectrogram, random 768-dim HuBERT features and phones, v2Pro a random 20480-value
speaker vector):
- ours: `S2Recipe.train_step([batch])` of `recipes/s2.py`, set up by the recipe's own `setup()` from
  `recipes/configs/s2_v2.yaml` / `s2_v2pro.yaml` (models, AdamW groups, `accelerator.prepare`, the
  stepper; only the dataset is replaced): the D step then the G step with the recipe's losses, as a
  training run executes it (the session's per-step bookkeeping around it is not included);
- official: the body of the batch loop of `GPT_SoVITS/s2_train.py` (commit 48b1a01), written out with
  the official modules (`SynthesizerTrn`, `MultiPeriodDiscriminator`, `module.losses`,
  `module.mel_processing`, `commons.clip_grad_value_`, the disabled `GradScaler` of fp16_run=false on
  a CPU) on the models and AdamW groups `s2_train.py` builds from `configs/s2.json` / `s2v2Pro.json`.
- v3: ours `CFMRecipe.train_step([batch])` of `recipes/s2_cfm.py` set up from
  `recipes/configs/s2_v3_lora.yaml` (LoRA rank 32); official the batch loop body of
  `GPT_SoVITS/s2_train_v3_lora.py` (SynthesizerTrnV3 from `configs/s2.json` with version v3, peft LoRA
  of the same rank on the DiT, AdamW over what requires grad, `clip_grad_value_`, the disabled scaler);
  the batch adds random normalised 100-bin target mels (1.875 mel frames per spectrogram frame).
Both models start from the same weights (the official ones copied into ours). Differences that are
part of what users run and are timed as such: the official G backward also computes gradients of D
(and of the SSL projection), ours freezes them.

Each shape runs `--warmup` untimed pairs, then `--pairs` alternated pairs; the row gives the median
step time of each side and the median over pairs of ours / official (target <= 0.9). On a CPU the
times are CPU seconds of the process by default (`--clock wall` for elapsed time; see
`harness.cpu_seconds`); with one torch thread (the default) that is the step's compute time.
"""

from __future__ import annotations

import itertools
import random
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

DEFAULT_SHAPES = "1x1,2x2,4x2"
DEFAULT_CFM_SHAPES = "1x2,2x2"
TARGET = "<= 0.9"


def parse_shapes(text: str) -> list[tuple[int, float]]:
    """"1x1,2x2.5" -> [(1, 1.0), (2, 2.5)] (batch x seconds per item)."""
    shapes = []
    for part in text.split(","):
        batch, _, secs = part.strip().partition("x")
        try:
            shapes.append((int(batch), float(secs)))
        except ValueError:
            raise SystemExit(f"--shapes: {part!r} is not BATCHxSECONDS (e.g. 2x2)") from None
        if shapes[-1][0] < 1 or shapes[-1][1] < 0.7:
            raise SystemExit(f"--shapes: {part!r}: need batch >= 1 and >= 0.7 s per item (the official "
                             "decoder trains on 0.64 s windows)")
    return shapes


class OfficialSpectrogram:
    """The official linear spectrogram of the official hparams (`self.hps`), for the synthetic batches."""

    def spectrogram(self, wav):
        from module.mel_processing import spectrogram_torch

        d = self.hps.data
        return spectrogram_torch(wav, d.filter_length, d.sampling_rate, d.hop_length, d.win_length,
                                 center=False)


class OfficialS2(OfficialSpectrogram):
    """The official generator, discriminator, optimizers and one step of s2_train.py's batch loop."""

    def __init__(self, root: Path, version: str) -> None:
        import torch
        import utils  # official GPT_SoVITS/utils.py
        from module.models import MultiPeriodDiscriminator, SynthesizerTrn
        from ours_s2 import OFFICIAL_CONFIGS

        self.hps = hps = utils.get_hparams_from_file(str(root / "GPT_SoVITS" / "configs" /
                                                         OFFICIAL_CONFIGS[version]))
        hps.model.version = version  # the WebUI writes it into the config it passes
        self.version = version
        self.net_g = SynthesizerTrn(hps.data.filter_length // 2 + 1,
                                    hps.train.segment_size // hps.data.hop_length,
                                    n_speakers=hps.data.n_speakers, **hps.model)
        self.net_d = MultiPeriodDiscriminator(hps.model.use_spectral_norm, version=version)
        # The released models' codebooks are initialised; skip the k-means a fresh one runs first.
        for name, buffer in self.net_g.named_buffers():
            if name.endswith("inited"):
                buffer.fill_(1.0)
        enc_p = self.net_g.enc_p
        low = {id(p) for m in (enc_p.text_embedding, enc_p.encoder_text, enc_p.mrte) for p in m.parameters()}
        base = [p for p in self.net_g.parameters() if id(p) not in low and p.requires_grad]
        tr = hps.train
        self.optim_g = torch.optim.AdamW(
            [{"params": base, "lr": tr.learning_rate}]
            + [{"params": m.parameters(), "lr": tr.learning_rate * tr.text_low_lr_rate}
               for m in (enc_p.text_embedding, enc_p.encoder_text, enc_p.mrte)],
            tr.learning_rate, betas=tr.betas, eps=tr.eps)
        self.optim_d = torch.optim.AdamW(self.net_d.parameters(), tr.learning_rate, betas=tr.betas,
                                         eps=tr.eps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.cuda.amp's deprecation notice
            from torch.cuda.amp import GradScaler

            self.scaler = GradScaler(enabled=False)  # fp16_run only applies on a GPU

    def to(self, device):
        """Models onto `device` (in place: the optimizers keep their parameters); returns it."""
        self.net_g.to(device)
        self.net_d.to(device)
        return device

    def step(self, batch: dict) -> None:
        import torch.nn.functional as F
        from module import commons
        from module.losses import discriminator_loss, feature_loss, generator_loss, kl_loss
        from module.mel_processing import mel_spectrogram_torch, spec_to_mel_torch

        hps, d, net_g, net_d = self.hps, self.hps.data, self.net_g, self.net_d
        net_g.train()
        net_d.train()
        ssl, spec, spec_lengths = batch["ssl"], batch["spec"], batch["spec_lengths"]
        y, text, text_lengths = batch["wav"], batch["text"], batch["text_lengths"]
        ssl.requires_grad = False
        if self.version in {"v2Pro", "v2ProPlus"}:
            (y_hat, kl_ssl, ids_slice, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), stats_ssl) = net_g(
                ssl, spec, spec_lengths, text, text_lengths, batch["sv_emb"])
        else:
            (y_hat, kl_ssl, ids_slice, x_mask, z_mask, (z, z_p, m_p, logs_p, m_q, logs_q), stats_ssl) = net_g(
                ssl, spec, spec_lengths, text, text_lengths)
        mel = spec_to_mel_torch(spec, d.filter_length, d.n_mel_channels, d.sampling_rate, d.mel_fmin,
                                d.mel_fmax)
        y_mel = commons.slice_segments(mel, ids_slice, hps.train.segment_size // d.hop_length)
        y_hat_mel = mel_spectrogram_torch(y_hat.squeeze(1), d.filter_length, d.n_mel_channels,
                                          d.sampling_rate, d.hop_length, d.win_length, d.mel_fmin, d.mel_fmax)
        y = commons.slice_segments(y, ids_slice * d.hop_length, hps.train.segment_size)
        y_d_hat_r, y_d_hat_g, _, _ = net_d(y, y_hat.detach())
        loss_disc, _, _ = discriminator_loss(y_d_hat_r, y_d_hat_g)
        self.optim_d.zero_grad()
        self.scaler.scale(loss_disc).backward()
        self.scaler.unscale_(self.optim_d)
        commons.clip_grad_value_(net_d.parameters(), None)
        self.scaler.step(self.optim_d)

        y_d_hat_r, y_d_hat_g, fmap_r, fmap_g = net_d(y, y_hat)
        loss_mel = F.l1_loss(y_mel, y_hat_mel) * hps.train.c_mel
        loss_kl = kl_loss(z_p, logs_q, m_p, logs_p, z_mask) * hps.train.c_kl
        loss_fm = feature_loss(fmap_r, fmap_g)
        loss_gen, _ = generator_loss(y_d_hat_g)
        loss_gen_all = loss_gen + loss_fm + loss_mel + kl_ssl * 1 + loss_kl
        self.optim_g.zero_grad()
        self.scaler.scale(loss_gen_all).backward()
        self.scaler.unscale_(self.optim_g)
        commons.clip_grad_value_(net_g.parameters(), None)
        self.scaler.step(self.optim_g)
        self.scaler.update()


class OfficialCFM(OfficialSpectrogram):
    """The official v3 model with LoRA on its DiT, its AdamW and one step of s2_train_v3_lora.py's loop."""

    def __init__(self, root: Path, lora_rank: int) -> None:
        import torch
        import utils  # official GPT_SoVITS/utils.py
        from module.models import SynthesizerTrnV3
        from peft import LoraConfig, get_peft_model

        # The WebUI writes configs/s2.json with the version and LoRA rank set.
        self.hps = hps = utils.get_hparams_from_file(str(root / "GPT_SoVITS" / "configs" / "s2.json"))
        hps.model.version = "v3"
        self.net_g = SynthesizerTrnV3(hps.data.filter_length // 2 + 1,
                                      hps.train.segment_size // hps.data.hop_length,
                                      n_speakers=hps.data.n_speakers, **hps.model)
        for name, buffer in self.net_g.named_buffers():
            if name.endswith("inited"):
                buffer.fill_(1.0)
        config = LoraConfig(target_modules=["to_k", "to_q", "to_v", "to_out.0"], r=lora_rank,
                            lora_alpha=lora_rank, init_lora_weights=True)
        self.net_g.cfm = get_peft_model(self.net_g.cfm, config)
        tr = hps.train
        self.optim_g = torch.optim.AdamW(filter(lambda p: p.requires_grad, self.net_g.parameters()),
                                         tr.learning_rate, betas=tr.betas, eps=tr.eps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.cuda.amp import GradScaler

            self.scaler = GradScaler(enabled=False)

    def to(self, device):
        self.net_g.to(device)
        return device

    def step(self, batch: dict) -> None:
        from module import commons

        self.net_g.train()
        ssl = batch["ssl"]
        ssl.requires_grad = False
        cfm_loss = self.net_g(ssl, batch["spec"], batch["mel"], batch["ssl_lengths"], batch["spec_lengths"],
                              batch["text"], batch["text_lengths"], batch["mel_lengths"],
                              use_grad_ckpt=self.hps.train.grad_ckpt)
        self.optim_g.zero_grad()
        self.scaler.scale(cfm_loss).backward()
        self.scaler.unscale_(self.optim_g)
        commons.clip_grad_value_(self.net_g.parameters(), None)
        self.scaler.step(self.optim_g)
        self.scaler.update()


def copy_weights(official: OfficialS2, recipe) -> None:
    """The official initial weights into ours (refuses when any parameter or buffer is left out)."""
    acc = recipe.accelerator
    pairs = ((official.net_g, recipe.model),) if isinstance(official, OfficialCFM) else (
        (official.net_g, recipe.net_g), (official.net_d, recipe.net_d))
    for source, target in pairs:
        result = acc.unwrap_model(target).load_state_dict(source.state_dict(), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SystemExit(f"weights do not match: missing {result.missing_keys[:5]}, unexpected "
                             f"{result.unexpected_keys[:5]}")


def time_shape(what: str, shape: str, recipe_step, official_step, batch: dict, device, args) -> harness.Row:
    """Alternated pairs of our and the official step on `batch`; the row of their medians."""
    print(f"{what}, {shape} on {device}:", flush=True)
    timings = harness.alternate(harness.synced(lambda: recipe_step([batch]), device),
                                harness.synced(lambda: official_step(batch), device), args.pairs, args.warmup,
                                clock=harness.CLOCKS[harness.clock_for(args, device)],
                                log=lambda line: print("  " + line, flush=True))
    ratio = timings.median_ratio()
    return harness.Row(what, shape, harness.seconds(statistics.median(timings.ours)),
                       harness.seconds(statistics.median(timings.official)), ratio, TARGET,
                       harness.meets(ratio, TARGET))


def bench_version(root: Path, version: str, shapes: list[tuple[int, float]], args) -> list[harness.Row]:
    import torch
    from ours_s2 import build_recipe, synthetic_batch

    with tempfile.TemporaryDirectory(prefix="gsv_vs_official_s2_") as work:
        torch.manual_seed(0)
        official = OfficialS2(root, version)
        recipe = build_recipe(version, Path(work) / "run", args.threads)
        torch.set_num_threads(args.threads)
        copy_weights(official, recipe)
        device = official.to(recipe.accelerator.device)
        sv_dim = recipe.cfg.model.sv_dim if recipe.cfg.model.is_pro else None
        rows = []
        for size, secs in shapes:
            batch = synthetic_batch(size, secs, sv_dim=sv_dim, spectrogram=official.spectrogram)
            rows.append(time_shape(f"S2 {version} training step (D+G)", f"{size} x {secs:g} s",
                                   recipe.train_step, official.step, harness.to_device(batch, device), device,
                                   args))
        return rows


def same_draws(step):
    """`step` with Python's `random` seeded by its call count: both CFM losses (ours and the official)
    draw their shortcut coin with one `random.random()` per step, so the k-th call of either side takes
    the same branch. Unseeded, the three-call shortcut steps (30%) fall on the two sides at random and
    pair ratios swing from 0.5 to 1.8."""
    calls = itertools.count()

    def seeded(*args):
        random.seed(next(calls))
        return step(*args)

    return seeded


def bench_cfm(root: Path, shapes: list[tuple[int, float]], args) -> list[harness.Row]:
    import torch
    from ours_s2 import build_cfm_recipe, synthetic_cfm_batch

    with tempfile.TemporaryDirectory(prefix="gsv_vs_official_cfm_") as work:
        torch.manual_seed(0)
        recipe = build_cfm_recipe(Path(work) / "run", args.threads)
        official = OfficialCFM(root, recipe.cfg.train.lora_rank)
        torch.set_num_threads(args.threads)
        copy_weights(official, recipe)
        device = official.to(recipe.accelerator.device)
        what = f"S2 v3 CFM training step (LoRA {recipe.cfg.train.lora_rank})"
        rows = []
        for size, secs in shapes:
            batch = synthetic_cfm_batch(size, secs, spectrogram=official.spectrogram)
            batch = harness.to_device(batch, device)
            rows.append(time_shape(what, f"{size} x {secs:g} s", same_draws(recipe.train_step),
                                   same_draws(official.step), batch, device, args))
        return rows


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--versions", default="v2,v2Pro,v3",
                   help="comma-separated: v2, v2Pro, v3 (the CFM LoRA step; default all three)")
    p.add_argument("--shapes", default=DEFAULT_SHAPES,
                   help=f"comma-separated BATCHxSECONDS per item (default {DEFAULT_SHAPES})")
    p.add_argument("--cfm-shapes", default=DEFAULT_CFM_SHAPES,
                   help=f"shapes of the v3 CFM step (default {DEFAULT_CFM_SHAPES})")
    p.add_argument("--warmup", type=int, default=1, help="untimed pairs per shape (default 1)")
    args = p.parse_args(argv)
    shapes = parse_shapes(args.shapes)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    cfm_shapes = parse_shapes(args.cfm_shapes)
    unknown = [v for v in versions if v not in ("v2", "v2Pro", "v3")]
    if unknown:
        p.error(f"--versions: unknown {unknown}; choose from v2, v2Pro, v3")
    root = harness.require_official("S2 step vs official")
    if root is None:
        return 0
    harness.import_official(root)
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    rows = []
    for version in versions:
        if version == "v3":
            rows += bench_cfm(root, cfm_shapes, args)
        else:
            rows += bench_version(root, version, shapes, args)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the recipe's Accelerator trains
    return harness.finish(rows, args, "S2 training step, ours vs official", device)


if __name__ == "__main__":
    sys.exit(main())
