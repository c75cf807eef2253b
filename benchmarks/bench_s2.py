"""S2 training benchmark on the demo config (`make bench`).

Prints one table from two kinds of run of `recipes/configs/s2_demo.yaml` (tiny model, bundled corpus),
each repeated `--repeats` times:

* demo cadence: the recipe as `make demo` runs it (its own loader, validation every epoch, checkpoints
  every 2 epochs and on every improvement), W&B and TensorBoard off. Reports steps/s with that cadence,
  steps/s of the training steps alone (validation and checkpoint time taken out), the share of a
  training step spent waiting for data, and what one validation, one checkpoint and the final save +
  exports cost.
* training only: the recipe without validation or interval checkpoints, its loader replaced (after
  `setup()`) by the epoch-0 batches collated beforehand, and in lockstep with it a bare loop: the same
  model, discriminator, optimizers, LR schedule, losses (`gsv_accel.losses`) and batches in plain
  PyTorch, with no Accelerate, checkpointing, logging, sampler bookkeeping or progress bar. Framework
  overhead = (recipe step time - bare step time) / bare step time (target < 3%). Both start from the
  same seed and see the same batches, so their weights must agree at the end: the table says by how
  much (0 = the bare loop is exactly the recipe's computation).

How the recipe is timed, without changing it: a subclass overrides `train_step` (the loop calls it once
per optimizer step) to record when it is entered and left, and after `setup()` the loader is wrapped in
an iterable that times each `next()` and the session's `validate`, `save` and `finish` are wrapped in
timers. The host-to-device copy is done (timed, counted as data wait) just before `train_step`, whose
own `.to()` then finds the batch in place. A step's time runs from the end of one `train_step` to the
end of the next, so it includes the loop's bookkeeping and data wait.

Why lockstep: on a shared machine a neighbour's burst can slow a few seconds of a run many times over,
which would swamp a 3% difference between runs taken one after the other. Each bare step runs right
next to the recipe's step on the same batch, before it on odd steps and after it on even ones (with 2
threads the second of two back-to-back steps ran ~10% faster, whichever it was; with 1 thread the order
makes no difference), and the overhead is the median over consecutive step pairs of
sum(recipe) / sum(bare). Every other figure is, per step (or
per call), the median over the repeats, then averaged over the steps. The first `--warmup` steps of a
run are not timed.

One torch thread by default (`--threads`): the tiny demo model gains little from more, and with one
thread per core a single busy core (another job on the machine) stalls every multi-threaded op, which
made 2-thread runs on a shared 2-core machine 10-20x slower and their timings meaningless.

Single process, full precision (run it with `python`, not `accelerate launch`): the bare loop has no
mixed precision or DDP.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `recipes` is not an installed package

from recipes.s2 import DEFAULT_CONFIG, S2Config, S2Recipe  # noqa: E402

RESULTS: list[tuple[str, float, str]] = []


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------- data


def ensure_dataset(dataset: Path, work: Path) -> Path:
    """The prepared demo dataset: `dataset` if it exists, else prepared into the temp folder."""
    if dataset.exists():
        return dataset
    from gsv_accel.data.prepare import prepare

    out = work / "demo_dataset"
    print(f"{dataset} does not exist: preparing the demo corpus into {out}", file=sys.stderr)
    prepare(REPO / "demo" / "data" / "demo.list", out, REPO / "demo" / "tiny_hubert",
            sv_model=REPO / "demo" / "tiny_sv" / "eres2netv2_tiny.safetensors")
    return out


def load_cfg(dataset: Path, output_dir: Path, steps: int, cadence: bool) -> S2Config:
    from gsv_accel.config import load_config

    overrides = [f"data.dataset={dataset}", f"run.output_dir={output_dir}", f"train.max_steps={steps}",
                 f"run.cpu_threads={torch.get_num_threads()}",  # the benchmark's --threads, set before
                 "tracking.wandb=false", "tracking.tensorboard=false"]
    cfg = load_config(S2Config, DEFAULT_CONFIG, overrides)
    cfg.train.epochs = max(cfg.train.epochs, steps)  # enough epochs for the steps asked for
    if not cadence:
        cfg.validation.every_n_steps = cfg.validation.every_n_epochs = None
        cfg.checkpoint.every_n_steps = cfg.checkpoint.every_n_epochs = None
    return cfg


def collate_epoch(cfg: S2Config) -> list[dict]:
    """The batches of epoch 0, collated as the recipe's loader collates them."""
    from gsv_accel.data.dataset import S2Collate, load_prepared
    from gsv_accel.data.sampler import LengthBucketBatchSampler

    spectrogram = cfg.data.spectrogram()
    train_set = load_prepared(cfg.data.dataset, model_config=cfg.model,
                              spectrogram_config=spectrogram).view("train")
    sampler = LengthBucketBatchSampler(train_set.lengths, cfg.data.batch_size, cfg.data.bucket_boundaries,
                                       seed=cfg.run.seed)
    collate = S2Collate(spectrogram)
    return [collate([train_set[i] for i in batch]) for batch in sampler]


# ----------------------------------------------------------------------------------------- bare


class OwnRNG:
    """Base of the bare loops: their work runs inside `own_rng()`, on an RNG stream of their own (the
    global generators are swapped in and out around it), so they can run interleaved with the recipe
    without changing its random draws. The stream starts from the global state at the first use."""

    device: torch.device
    rng: tuple | None = None

    def _rng_state(self) -> tuple:
        return torch.get_rng_state(), torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None

    def _set_rng_state(self, state: tuple) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state_all(state[1])

    @contextlib.contextmanager
    def own_rng(self):
        outer = self._rng_state()
        if self.rng is not None:
            self._set_rng_state(self.rng)
        try:
            yield
        finally:
            self.rng = self._rng_state()
            self._set_rng_state(outer)


class BareLoop(OwnRNG):
    """The recipe's math as plain PyTorch: per batch a D step, then a G step with the same losses;
    LR decay per epoch. Keeps its own RNG stream (the random training windows and dropout draw from
    the global generator), so it can run interleaved with the recipe and still match it exactly."""

    def __init__(self, cfg: S2Config, batches: list[dict]) -> None:
        from gsv_accel.audio import SpectrogramExtractor
        from gsv_accel.lifecycle import seed_everything
        from gsv_accel.models.sovits import MultiPeriodDiscriminator, SynthesizerTrn

        self.cfg, self.batches, self.done = cfg, batches, 0
        tc, dc = cfg.train, cfg.discriminator
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        with self.own_rng():
            seed_everything(cfg.run.seed)
            self.net_g = SynthesizerTrn(cfg.model)
            self.net_d = MultiPeriodDiscriminator(cfg.model.use_spectral_norm, version=cfg.model.version,
                                                  periods=dc.periods, scale_channels=dc.scale_channels,
                                                  period_channels=dc.period_channels)
            if cfg.model.freeze_quantizer:
                for module in (self.net_g.ssl_proj, self.net_g.quantizer):
                    module.requires_grad_(False)
            enc_p = self.net_g.enc_p
            low_lr = (enc_p.text_embedding, enc_p.encoder_text, enc_p.mrte)
            low_ids = {id(p) for m in low_lr for p in m.parameters()}
            base = [p for p in self.net_g.parameters() if p.requires_grad and id(p) not in low_ids]
            groups = [{"params": base, "lr": tc.learning_rate}]
            groups += [{"params": [p for p in m.parameters() if p.requires_grad],
                        "lr": tc.learning_rate * tc.text_low_lr_rate} for m in low_lr]
            self.optim_g = torch.optim.AdamW(groups, tc.learning_rate, betas=tuple(tc.betas), eps=tc.eps)
            self.optim_d = torch.optim.AdamW(self.net_d.parameters(), tc.learning_rate, betas=tuple(tc.betas),
                                             eps=tc.eps)
            self.schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=tc.lr_decay)
                               for o in (self.optim_g, self.optim_d)]
            self.net_g.to(self.device)
            self.net_d.to(self.device)
            self.features = SpectrogramExtractor(cfg.data.spectrogram()).to(self.device)

    def step(self) -> float:
        """One training step on the next batch; returns its seconds (the RNG swaps excluded)."""
        with self.own_rng():
            start = time.perf_counter()
            self._step(self.batches[self.done % len(self.batches)])
            self.done += 1
            if self.done % len(self.batches) == 0:  # end of an epoch
                for scheduler in self.schedulers:
                    scheduler.step()
            _sync(self.device)
            seconds = time.perf_counter() - start
        return seconds

    def _step(self, batch: dict) -> None:
        from gsv_accel.losses import (
            discriminator_lsgan_loss,
            feature_matching_loss,
            generator_lsgan_loss,
            kl_divergence_loss,
        )
        from gsv_accel.models.sovits.commons import slice_segments

        tc, net_g, net_d = self.cfg.train, self.net_g, self.net_d
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                 for k, v in batch.items()}
        self.optim_d.zero_grad(set_to_none=True)
        self.optim_g.zero_grad(set_to_none=True)
        out = net_g(batch["ssl"], batch["spec"], batch["spec_lengths"], batch["text"], batch["text_lengths"],
                    sv_emb=batch["sv_emb"] if self.cfg.model.is_pro else None)
        real = slice_segments(batch["wav"], out.slice_starts * self.cfg.data.hop_length, tc.segment_size)
        real_scores, fake_scores, _, _ = net_d(real, out.wav.detach())
        discriminator_lsgan_loss(real_scores, fake_scores).backward()
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net_d.parameters(), tc.grad_clip)
        self.optim_d.step()

        net_d.requires_grad_(False)  # G's backward needs no D gradients
        _, fake_scores, real_maps, fake_maps = net_d(real, out.wav)
        mel_real = slice_segments(self.features.linear_to_mel(batch["spec"].float()), out.slice_starts,
                                  self.cfg.model.segment_size)
        mel_fake = self.features.mel(out.wav.squeeze(1).float())
        z, z_p, m_p, logs_p, m_q, logs_q = out.latents
        loss_gen = (generator_lsgan_loss(fake_scores) + feature_matching_loss(real_maps, fake_maps)
                    + torch.nn.functional.l1_loss(mel_real, mel_fake) * tc.c_mel
                    + out.commit_loss.float()
                    + kl_divergence_loss(z_p, logs_q, m_p, logs_p, out.z_mask) * tc.c_kl)
        loss_gen.backward()
        net_d.requires_grad_(True)
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net_g.parameters(), tc.grad_clip)
        self.optim_g.step()

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.net_g.state_dict().items()}


# --------------------------------------------------------------------------------- timed recipe


class TimedIterable:
    """Wraps the recipe's loader and adds the time of every `next()` to `clock[0]`."""

    def __init__(self, inner, clock: list[float]) -> None:
        self.inner, self.clock = inner, clock

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        iterator = iter(self.inner)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.clock[0] += time.perf_counter() - start
            yield batch


class StepTimer:
    """Mixin for a recipe class (`class TimedS2Recipe(StepTimer, S2Recipe)`): timers around the parts
    of the loop; the computation is unchanged.

    Per optimizer step it records: `step` (end of the previous train_step, companion excluded, to the
    end of this one), `inside` (train_step itself), `data` (next() and the device copy), `events`
    (validation and checkpoints in between), `bare` (the companion bare loop's step, if any) and what
    a subclass adds in `record_extra` (keys named in `extra_keys`)."""

    extra_keys: tuple[str, ...] = ()

    def __init__(self, *args, companion=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.companion = companion
        self.per_step: dict[str, list[float]] = {
            k: [] for k in ("step", "inside", "data", "events", *self.extra_keys, "bare")}
        self.calls: dict[str, list[float]] = {"validate": [], "save": [], "finish": []}
        self._data, self._events = [0.0], [0.0]  # running totals
        self._marks = (0.0, 0.0)
        self._last = 0.0

    def instrument(self, batches: list[dict] | None = None) -> None:
        """After setup(): time the loader (or replace it by pre-collated batches) and the session's
        validation, checkpoint and final-save calls."""
        self.loader = TimedIterable(self.loader if batches is None else batches, self._data)
        for kind in self.calls:
            setattr(self.session, kind, self._timed(kind, getattr(self.session, kind)))

    def _timed(self, kind: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync(self.accelerator.device)
                seconds = time.perf_counter() - start
                self.calls[kind].append(seconds)
                if kind != "finish":  # its final save is counted as a save
                    self._events[0] += seconds
        return timed

    def train(self) -> int:
        self._last = time.perf_counter()
        return super().train()

    def record_extra(self, micro_batches: list[dict], record: dict[str, list[float]]) -> None:
        """Per-step figures of a subclass's own (none here)."""

    def train_step(self, micro_batches: list[dict]):
        device = self.accelerator.device
        start = time.perf_counter()
        micro_batches = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                          for k, v in batch.items()} for batch in micro_batches]
        self._data[0] += time.perf_counter() - start
        bare_first = self.companion is not None and len(self.per_step["step"]) % 2 == 1
        aside = 0.0  # wall time of the companion inside this step's interval
        if bare_first:
            begin = time.perf_counter()
            self.per_step["bare"].append(self.companion.step())
            aside = time.perf_counter() - begin
        begin = time.perf_counter()
        result = super().train_step(micro_batches)
        done = time.perf_counter()
        record = self.per_step
        record["inside"].append(done - begin)
        record["step"].append(done - self._last - aside)
        record["data"].append(self._data[0] - self._marks[0])
        record["events"].append(self._events[0] - self._marks[1])
        self._marks = (self._data[0], self._events[0])
        if self.companion is not None and not bare_first:
            record["bare"].append(self.companion.step())
        self.record_extra(micro_batches, record)
        self._last = time.perf_counter()
        return result


class TimedS2Recipe(StepTimer, S2Recipe):
    """S2Recipe under the StepTimer."""


def run_recipe(cfg: S2Config, batches: list[dict] | None, paired: bool = False) -> dict:
    """One recipe run: with its own loader (`batches` None) or over pre-collated batches; `paired`:
    with the bare loop stepping in lockstep (pre-collated batches only)."""
    companion = BareLoop(cfg, batches) if paired else None  # seeds itself, before the recipe does
    recipe = TimedS2Recipe(cfg, resume=None, companion=companion)
    # The recipe's console log handler binds to the stderr it finds at setup: keep it off the table
    # (everything still goes to the run folder's train.log).
    with contextlib.redirect_stderr(io.StringIO()):
        recipe.setup()
    if recipe.accelerator.mixed_precision != "no" or recipe.accelerator.num_processes != 1:
        raise SystemExit("bench_s2: run with plain `python` (one process, no mixed precision)")
    recipe.instrument(batches)
    recipe.train()
    result = {"device": str(recipe.accelerator.device), **recipe.per_step, **recipe.calls}
    if companion is not None:
        result["weight_diff"] = max_diff(recipe.accelerator.unwrap_model(recipe.net_g).state_dict(),
                                         companion.net_g.state_dict())
    return result


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


# ----------------------------------------------------------------------------------------- main


def per_step_median(runs: list[dict], key: str, warmup: int, minus: str | None = None) -> list[float]:
    """Per timed step: the median over the runs of `key` (minus `minus`). A run that stopped early
    (early stop, non-finite rollback) shortens the series to its length."""
    series = [[v - (run[minus][i] if minus else 0.0) for i, v in enumerate(run[key])][warmup:]
              for run in runs]
    return [statistics.median(values) for values in zip(*series, strict=False)]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def parse_bench_args(description: str, *, default_steps: int, steps_help: str, default_dataset: Path,
                     dataset_help: str) -> argparse.Namespace:
    """The options of a recipe benchmark (this one and bench_s1.py); also sets the torch thread count
    and quiets datasets' progress bars and the demo's tiny-width warning."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=default_steps, help=steps_help)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (medians are reported)")
    parser.add_argument("--dataset", type=Path, default=default_dataset, help=dataset_help)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1; 0: torch's default, one per core)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results and raw timings here")
    args = parser.parse_args()
    if args.warmup < 0 or args.steps < args.warmup + 2 or args.repeats < 1:
        parser.error("need --warmup >= 0, --steps >= --warmup + 2 and --repeats >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    import datasets

    from gsv_accel.formats import OfficialCompatibilityWarning

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=OfficialCompatibilityWarning)  # the demo's tiny widths
    return args


def collect_runs(args: argparse.Namespace, name: str, ensure_dataset, make_cfg, collate_epoch,
                 run_recipe) -> tuple[dict[str, list[dict]], list[dict]]:
    """`args.repeats` runs of each kind in a temp folder: "cadence" (the recipe's own loader and
    cadence) and "paired" (pre-collated epoch-0 batches, in lockstep with the bare loop).
    `make_cfg(dataset, output_dir, steps_per_epoch, cadence)` builds a run's config (steps_per_epoch
    None for the one that collates the batches). Returns (runs by kind, the collated batches)."""
    work = Path(tempfile.mkdtemp(prefix=f"gsv_bench_{name}_"))
    runs: dict[str, list[dict]] = {"cadence": [], "paired": []}
    try:
        dataset = ensure_dataset(args.dataset.resolve(), work)
        batches = collate_epoch(make_cfg(dataset, work / "unused", None, False))
        for repeat in range(args.repeats):
            for kind in runs:
                print(f"repeat {repeat + 1}/{args.repeats}: {kind}", file=sys.stderr)
                cfg = make_cfg(dataset, work / f"{kind}{repeat}", len(batches), kind == "cadence")
                runs[kind].append(run_recipe(cfg, None if kind == "cadence" else batches, kind == "paired"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs, batches


def lockstep_overhead(paired: list[dict], warmup: int) -> tuple[float, list[float]]:
    """(recipe - bare) / bare: the median over consecutive step pairs of sum(recipe) / sum(bare), minus
    1; also returns the pair ratios."""
    pairs = [sum(run["step"][i:i + 2]) / sum(run["bare"][i:i + 2])
             for run in paired for i in range(warmup, len(run["step"]) - 1, 2)]
    return statistics.median(pairs) - 1, pairs


def median_call(runs: list[dict], kind: str) -> float:
    """Median seconds of one `kind` call (validate, save, finish) over all runs; NaN if none."""
    calls = [seconds for run in runs for seconds in run[kind]]
    return statistics.median(calls) if calls else float("nan")


def call_rows(cadence: list[dict]) -> list[tuple[str, float, str]]:
    """The table rows of the validation, checkpoint and final-save costs (median per call)."""
    return [(f"demo cadence: {what}", 1e3 * median_call(cadence, kind), "ms") for what, kind in (
        ("one validation (all validation utterances)", "validate"),
        ("one checkpoint (save_state + manifest + prune)", "save"),
        ("finish (final checkpoint + exports)", "finish"))]


def report(header: str, results: list[tuple[str, float, str]], args: argparse.Namespace,
           runs: dict[str, list[dict]], pairs: list[float], note: str = "") -> None:
    """Print the table (and write `--json`); `note` ends the heading line."""
    device = runs["paired"][0]["device"]
    print(f"\n{header} on {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.steps} steps per run ({args.warmup} untimed), {args.repeats} runs of each kind{note}")
    print(f"{'measurement':<78s} {'value':>10s}  unit")
    for name, value, unit in results:
        print(f"{name:<78s} {value:10.3f}  {unit}")
    if args.json:
        args.json.write_text(json.dumps({
            "device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "pair_ratios": pairs,
            "results": [{"name": n, "value": v, "unit": u} for n, v, u in results], "runs": runs}, indent=1))


def step_rows(runs: dict[str, list[dict]], steps_per_epoch: int, warm: int,
              results: list[tuple[str, float, str]]) -> list[float]:
    """The rows every recipe's benchmark reports (demo cadence, data wait, validation/checkpoint costs,
    recipe vs bare loop in lockstep, overhead, weight difference), appended to `results`; returns the
    per-pair overheads for the report."""
    cadence, paired = runs["cadence"], runs["paired"]
    cadence_step = mean(per_step_median(cadence, "step", warm))
    train_step = mean(per_step_median(cadence, "step", warm, minus="events"))
    data_wait = mean(per_step_median(cadence, "data", warm))
    recipe = mean(per_step_median(paired, "step", warm))
    bare = mean(per_step_median(paired, "bare", warm))
    outside = mean(per_step_median(paired, "step", warm, minus="inside"))
    overhead, pairs = lockstep_overhead(paired, warm)
    results += [
        (f"demo cadence: steps/s (validation every epoch of {steps_per_epoch} steps, checkpoints)",
         1 / cadence_step, "steps / s"),
        ("demo cadence: training steps/s (validation and checkpoints taken out)", 1 / train_step,
         "steps / s"),
        ("demo cadence: data wait, share of a training step", 100 * data_wait / train_step, "%"),
        ("demo cadence: data wait per step (next(loader) + to(device))", 1e3 * data_wait, "ms"),
        *call_rows(cadence),
        ("training only, pre-collated batches: recipe", 1 / recipe, "steps / s"),
        ("training only, pre-collated batches: bare loop (in lockstep)", 1 / bare, "steps / s"),
        ("recipe per step outside train_step (loop bookkeeping)", 1e3 * outside, "ms"),
        ("framework overhead (recipe - bare) / bare (target < 3)", 100 * overhead, "%"),
        ("bare loop vs recipe: max |weight difference| at the end (0 = same math)",
         max(run["weight_diff"] for run in paired), ""),
    ]
    return pairs


def main() -> None:
    args = parse_bench_args(
        __doc__.splitlines()[0], default_steps=66,
        steps_help="optimizer steps per run (default 66: the demo's 6 epochs of 11 steps)",
        default_dataset=REPO / "runs" / "demo_dataset",
        dataset_help="prepared demo dataset (prepared into a temp folder if missing)")
    runs, batches = collect_runs(
        args, "s2", ensure_dataset,
        lambda dataset, out, _steps_per_epoch, cadence: load_cfg(dataset, out, args.steps, cadence),
        collate_epoch, run_recipe)

    pairs = step_rows(runs, len(batches), args.warmup, RESULTS)
    report("S2 demo config", RESULTS, args, runs, pairs)


if __name__ == "__main__":
    main()
