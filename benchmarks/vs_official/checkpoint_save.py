#!/usr/bin/env python
"""One checkpoint save of the default SoVITS v2 generator + discriminator with their AdamW states,
gsv_accel vs the official trainer.

Both sides first take one training step (batch 1 x 1 s) so the optimizers hold their moments.
- official: what `GPT_SoVITS/s2_train.py` does at a save: `utils.save_checkpoint` of G with optim_g and
  of D with optim_d (`torch.save` of {model, iteration, optimizer, learning_rate} into a temporary file
  in the working folder, then moved into place). Synchronous: the training loop stalls for all of it.
- ours: `TrainingSession.save(...)` of the recipe set up from `recipes/configs/s2_v2.yaml` (the call the
  session makes at an interval save: Accelerate `save_state`, sha256 manifest, atomic publish, pruning
  to `checkpoint.keep_last`). The stall is the time the training loop is held: inside that call until
  control returns, plus what the optimizer steps of the next real training step (the recipe's
  `train_step` on the same batch, run right after the call) wait for: a save that writes in the
  background holds them until it has copied the state, normally while that step's forward and
  backward passes run (`gsv_accel.host_copy.optimizer_steps_waited`). The total runs until the
  checkpoint folder is published complete (its manifest.json exists; the checkpoint manager's `wait`
  is called when it has one): the same figure as the stall for a synchronous save, later for a
  background one. The log line of each round also gives that training step's time, to show what the
  background writer costs the step it overlaps (they share the CPU cores).
Rounds alternate which side saves first; each row gives medians over `--pairs` rounds. Targets: the
stall < 0.5 s and <= 1/5 of the official save time.
"""

from __future__ import annotations

import inspect
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

STALL_LIMIT_S = 0.5
STALL_FRACTION = 0.2
# Methods a session (or its checkpoint manager) that saves in the background may offer to wait for
# the write in flight; tried in this order.
WAIT_METHODS = ("wait_for_checkpoint", "wait_for_save", "wait_for_saves", "wait_for_checkpoints",
                "flush_checkpoints", "wait")


def call_wait(method, accelerator) -> None:
    """A wait method, given the accelerator when it takes an argument (CheckpointManager.wait does)."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in inspect.signature(method).parameters.values()
                if p.default is inspect.Parameter.empty and p.kind in positional]
    if required:
        method(accelerator)
    else:
        method()


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def wait_published(session, folder: Path, timeout: float = 600.0) -> None:
    """Until `folder` holds its manifest (published complete)."""
    for owner in (session, getattr(session, "checkpoints", None)):
        for name in WAIT_METHODS:
            method = getattr(owner, name, None)
            if callable(method):
                call_wait(method, session.accelerator)
                break
        else:
            continue
        break
    deadline = time.monotonic() + timeout
    while not (folder / "manifest.json").is_file():
        if time.monotonic() > deadline:
            raise SystemExit(f"checkpoint {folder} was not published within {timeout:.0f} s")
        time.sleep(0.001)


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0], clock=False)  # a stall is elapsed time
    args = p.parse_args(argv)
    root = harness.require_official("checkpoint save vs official")
    if root is None:
        return 0
    harness.import_official(root)
    import torch
    import utils  # official GPT_SoVITS/utils.py
    from ours_s2 import build_recipe, synthetic_batch
    from s2_step import OfficialS2, copy_weights

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    stalls, ours_totals, official_totals, ours_sizes, official_sizes = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="gsv_vs_official_ckpt_") as work:
        work = Path(work)
        torch.manual_seed(0)
        official = OfficialS2(root, "v2")
        recipe = build_recipe("v2", work / "run", args.threads)
        torch.set_num_threads(args.threads)
        copy_weights(official, recipe)
        device = official.to(recipe.accelerator.device)
        batch = harness.to_device(synthetic_batch(1, 1.0, sv_dim=None, spectrogram=official.spectrogram),
                                  device)
        print("one training step each (optimizer moments)", flush=True)
        recipe.train_step([batch])
        official.step(batch)
        session = recipe.session
        official_dir = work / "logs_s2_v2"
        official_dir.mkdir()
        lr = official.optim_g.param_groups[0]["lr"]

        def ours() -> None:
            from gsv_accel.host_copy import optimizer_steps_waited

            session.progress.step += 1  # a new checkpoint folder each round, as in training
            start = time.perf_counter()
            path = session.save("interval")
            in_call = time.perf_counter() - start
            waited_before = optimizer_steps_waited()[0]
            step_start = time.perf_counter()
            recipe.train_step([batch])  # the next training step: its optimizer steps wait for the copy
            step_time = time.perf_counter() - step_start
            waited = optimizer_steps_waited()[0] - waited_before
            wait_published(session, path)
            total = time.perf_counter() - start  # a background write overlaps the step: its total includes it
            print(f"  ours: {in_call:.3f} s in the save call, {waited:.3f} s waited by the next step's "
                  f"optimizer steps; that step took {step_time:.2f} s; published {total:.2f} s after the "
                  "call began", flush=True)
            stalls.append(in_call + waited)
            ours_totals.append(total)
            ours_sizes.append(folder_bytes(path))

        def official_save() -> None:
            step = len(official_totals) + 1
            start = time.perf_counter()
            # my_save writes a temporary file into the working folder, then moves it: keep both on one
            # filesystem, as a run from the GPT-SoVITS folder does.
            cwd = os.getcwd()
            os.chdir(work)
            try:
                for name, net, optim in (("G", official.net_g, official.optim_g),
                                         ("D", official.net_d, official.optim_d)):
                    utils.save_checkpoint(net, optim, lr, 1, str(official_dir / f"{name}_{step}.pth"))
            finally:
                os.chdir(cwd)
            official_totals.append(time.perf_counter() - start)
            official_sizes.append(sum(f.stat().st_size for f in official_dir.glob(f"[GD]_{step}.pth")))
            for f in official_dir.glob(f"[GD]_{step}.pth"):  # keep the disk use bounded
                f.unlink()

        harness.alternate(ours, official_save, args.pairs, warmup=0,
                          log=lambda line: print("  " + line, flush=True))
    stall = statistics.median(stalls)
    ours_total = statistics.median(ours_totals)
    official_total = statistics.median(official_totals)
    shape = (f"v2 G+D+AdamW, {statistics.median(ours_sizes) / 1e6:,.0f} MB vs "
             f"{statistics.median(official_sizes) / 1e6:,.0f} MB")
    stall_ratio = statistics.median(s / o for s, o in zip(stalls, official_totals, strict=True))
    total_ratio = harness.median_ratio(ours_totals, official_totals)
    rows = [
        harness.Row("checkpoint save: until published (ours overlaps a step)", shape,
                    harness.seconds(ours_total),
                    harness.seconds(official_total), total_ratio),
        harness.Row("checkpoint save: training-loop stall", shape, harness.seconds(stall),
                    harness.seconds(official_total), stall_ratio,
                    f"<= {STALL_FRACTION} and < {STALL_LIMIT_S} s",
                    stall_ratio <= STALL_FRACTION and stall < STALL_LIMIT_S),
    ]
    return harness.finish(rows, args, "Checkpoint save, ours vs official", device, clock="wall")


if __name__ == "__main__":
    sys.exit(main())
