"""Checkpoint save cost of the default v2 S2 model (`make bench`): how long the training loop stalls.

The state is the default v2 generator and discriminator (`recipes/configs/s2_v2.yaml`, fp32) with
AdamW moments for every trainable parameter (one optimizer step on zero gradients fills them), the two
ExponentialLR schedules and a progress object registered with Accelerate, as the S2 recipe has them.
Three ways of saving it, alternated round-robin (`--repeats` rounds, the order rotating each round) so
that a neighbour's burst on a shared machine hits all of them alike:

* official: what GPT-SoVITS' S2 trainer does at a save, one `torch.save` of
  {model, iteration, optimizer, learning_rate} per network (G_*.pth, D_*.pth), no hashing, no
  rename; the loop waits for all of it;
* sync: `CheckpointManager.save` with `background=False` (Accelerate's `save_state` into a staging
  folder, sha256 of every file, manifest, atomic rename, pruning); the loop waits for all of it;
* async: `background=True` (`checkpoint.async_save`, the default): the loop waits for the RNG file and
  the host copy of the buffers and small state ("stall"); a writer thread copies the parameters and
  optimizer states, then writes, fsyncs, hashes and publishes ("total", until `wait` returns). The
  next optimizer step waits until the writer's copy is done: "step wait" is that wait for a step
  that came at once (the worst case; a real step first runs its forward and backward passes, 4.5 s
  for this model at batch 2 x 2 s on these CPUs, so it does not wait).

The first async save allocates the host buffers (page faults); later ones reuse them: both are shown.
Prints one table (median seconds, MB written) and the acceptance ratios. CPU only; one torch thread by
default (`--threads`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `recipes` is not an installed package

from recipes.s2 import S2Config  # noqa: E402

STALL_TARGET_S = 0.5  # issue #18: the loop stalls less than this...
OFFICIAL_FRACTION = 0.2  # ...and at most this fraction of the official save


class Progress:
    """Stands for the session's registered objects (progress, plateau controller)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self):
        return {"step": self.step, "validations": [[i, {"val/mel_loss": 1.0}] for i in range(20)]}

    def load_state_dict(self, state):
        self.step = state["step"]


def build_state(threads: int):
    """The default v2 G and D with filled AdamW states, prepared on a CPU Accelerator."""
    from accelerate import Accelerator

    from gsv_accel.config import load_config
    from gsv_accel.models.sovits import MultiPeriodDiscriminator, SynthesizerTrn

    torch.set_num_threads(threads)
    cfg = load_config(S2Config, REPO / "recipes" / "configs" / "s2_v2.yaml",
                      ["data.dataset=unused", "run.output_dir=unused"])
    torch.manual_seed(0)
    net_g = SynthesizerTrn(cfg.model)
    dc = cfg.discriminator
    net_d = MultiPeriodDiscriminator(cfg.model.use_spectral_norm, version=cfg.model.version,
                                     periods=dc.periods, scale_channels=dc.scale_channels,
                                     period_channels=dc.period_channels)
    for module in (net_g.ssl_proj, net_g.quantizer):  # freeze_quantizer, as the v2 config has it
        module.requires_grad_(False)
    tc = cfg.train
    optimizers = [torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], tc.learning_rate,
                                    betas=tuple(tc.betas), eps=tc.eps) for net in (net_g, net_d)]
    for net, optimizer in zip((net_g, net_d), optimizers, strict=True):
        for p in net.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        optimizer.step()  # allocates exp_avg / exp_avg_sq as a training step would
        optimizer.zero_grad(set_to_none=True)
    schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=tc.lr_decay) for o in optimizers]
    accelerator = Accelerator(cpu=True)
    net_g, optim_g = accelerator.prepare(net_g, optimizers[0])
    net_d, optim_d = accelerator.prepare(net_d, optimizers[1])
    for obj in (*schedulers, Progress()):
        accelerator.register_for_checkpointing(obj)
    return accelerator, (net_g, optim_g, schedulers[0]), (net_d, optim_d, schedulers[1])


def official_save(folder: Path, step: int, g, d) -> None:
    """One file per network with its weights, its optimizer state, the iteration and the LR, as the
    official S2 trainer writes G_<step>.pth and D_<step>.pth."""
    for tag, (net, optimizer, scheduler) in (("G", g), ("D", d)):
        torch.save({"model": net.state_dict(), "iteration": step, "optimizer": optimizer.state_dict(),
                    "learning_rate": scheduler.get_last_lr()[0]}, folder / f"{tag}_{step}.pth")


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="folder to write in (default: a temp dir)")
    args = parser.parse_args()

    from gsv_accel.checkpoint import CheckpointManager

    accelerator, g, d = build_state(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_checkpoint_", dir=args.work))
    from gsv_accel.host_copy import _wait_for_copies

    times: dict[str, list[float]] = {"official": [], "sync": [], "async stall": [], "async step wait": [],
                                     "async total": []}
    first: list[float] = []
    sizes: dict[str, float] = {}
    managers = {"sync": CheckpointManager(work / "sync", keep_last=1),
                "async": CheckpointManager(work / "async", keep_last=1)}
    step = 0
    try:
        # Round 0 warms up every way (and allocates the async host buffers); it is reported apart.
        for round_index in range(args.repeats + 1):
            kinds = ["official", "sync", "async"]
            for kind in kinds[round_index % 3:] + kinds[: round_index % 3]:
                step += 1
                started = time.perf_counter()
                if kind == "official":
                    folder = work / f"official_{step}"
                    folder.mkdir()
                    official_save(folder, step, g, d)
                    elapsed = [time.perf_counter() - started]
                else:
                    folder = managers[kind].save(accelerator, step=step, epoch=0, background=kind == "async")
                    stalled = time.perf_counter() - started
                    _wait_for_copies(None, (), {})  # what an optimizer step made right now would wait
                    step_wait = time.perf_counter() - started - stalled
                    managers[kind].wait(accelerator)
                    total = time.perf_counter() - started
                    elapsed = [stalled, step_wait, total] if kind == "async" else [stalled]
                sizes[kind] = folder_mb(folder)
                if kind == "official":
                    shutil.rmtree(folder)
                if round_index == 0:
                    if kind == "async":
                        first = elapsed
                    continue
                if kind == "async":
                    for name, value in zip(("async stall", "async step wait", "async total"), elapsed,
                                           strict=True):
                        times[name].append(value)
                else:
                    times[kind].append(elapsed[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    median = {kind: statistics.median(values) for kind, values in times.items()}
    print(f"default v2 G+D + AdamW, {args.threads} thread(s), median of {args.repeats}; first async "
          "save (host buffers allocated): stall {:.3f} s, step wait {:.3f} s, total {:.3f} s".format(*first))
    rows = [("official torch.save G+D", median["official"], None, median["official"], sizes["official"]),
            ("ours, synchronous", median["sync"], None, median["sync"], sizes["sync"]),
            ("ours, async_save (default)", median["async stall"], median["async step wait"],
             median["async total"], sizes["async"])]
    print(f"{'save':<28}{'loop waits (s)':>16}{'step wait (s)':>15}{'until complete (s)':>20}{'MB':>8}")
    for name, stall, step_wait, total, size in rows:
        wait_text = "" if step_wait is None else f"{step_wait:.3f}"
        print(f"{name:<28}{stall:>16.3f}{wait_text:>15}{total:>20.3f}{size:>8.0f}")
    ratio = median["async stall"] / median["official"]
    ok = median["async stall"] < STALL_TARGET_S and ratio <= OFFICIAL_FRACTION
    print(f"async stall / official save = {ratio:.3f} (target <= {OFFICIAL_FRACTION}); stall target "
          f"< {STALL_TARGET_S} s: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
