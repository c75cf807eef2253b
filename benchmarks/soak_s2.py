#!/usr/bin/env python
"""Soak test: one S2 run interrupted many times, resumed each time, compared with a run never interrupted.

    python benchmarks/soak_s2.py [--interruptions 20] [--epochs 6] [--seed N]      (make soak)

The demo model on the demo corpus (prepared into runs/demo_dataset if missing). First an uninterrupted
reference run; then the same run launched with `--resume auto` again and again, each launch ended by
one fault drawn at random:

* SIGKILL, SIGTERM or SIGINT at a random moment;
* SIGKILL the moment a checkpoint's staging folder appears (a save in progress);
* SIGKILL injected inside a save, after a save's manifest, or while an old checkpoint is deleted, and
  a full disk (ENOSPC) injected into a save (`GSV_ACCEL_FAULT`, see gsv_accel/checkpoint.py).

After every launch it checks that the exit code is the documented one, that every folder with a
checkpoint name verifies (hashes included), and that the launch resumed from the newest complete
checkpoint. At the end the final weights must equal the reference run's, bit for bit. Prints a summary;
exit code 0 when everything held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gsv_accel.checkpoint import (  # noqa: E402
    FAULT_ENV,
    INCOMPLETE_PREFIX,
    CheckpointError,
    CheckpointManager,
    verify_checkpoint,
)
from gsv_accel.lifecycle import EXIT_CODE_CHECKPOINT_WRITE, EXIT_CODE_SIGINT, EXIT_CODE_SIGTERM  # noqa: E402

RECIPE = REPO / "recipes" / "s2.py"
CONFIG = REPO / "recipes" / "configs" / "s2_demo.yaml"
KINDS = ("sigkill_random", "sigterm_random", "sigint_random", "sigkill_in_save_poll", "kill_in_save",
         "kill_after_manifest", "kill_in_prune", "enospc_in_save")
EXPECTED_CODES = {"sigkill_random": -signal.SIGKILL, "sigkill_in_save_poll": -signal.SIGKILL,
                  "kill_in_save": -signal.SIGKILL, "kill_after_manifest": -signal.SIGKILL,
                  "kill_in_prune": -signal.SIGKILL, "sigterm_random": EXIT_CODE_SIGTERM,
                  "sigint_random": EXIT_CODE_SIGINT, "enospc_in_save": EXIT_CODE_CHECKPOINT_WRITE,
                  "to_the_end": 0}
SIGNALS = {"sigkill_random": signal.SIGKILL, "sigterm_random": signal.SIGTERM, "sigint_random": signal.SIGINT}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interruptions", type=int, default=20, help="faults to inject (default 20)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of 11 steps (default 6)")
    parser.add_argument("--every-n-steps", type=int, default=3, help="checkpoint interval (default 3)")
    parser.add_argument("--max-delay", type=float, default=3.0,
                        help="longest wait in seconds before a random-moment signal (default 3)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default random)")
    parser.add_argument("--dataset", type=Path, default=REPO / "runs" / "demo_dataset")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "soak_s2", help="replaced if it exists")
    return parser.parse_args()


def environment(fault: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return env


class Run:
    def __init__(self, run_dir: Path, args: argparse.Namespace) -> None:
        self.run_dir = run_dir
        self.root = run_dir / "checkpoints"
        self.overrides = [f"run.output_dir={run_dir}", f"data.dataset={args.dataset}", "tracking.wandb=false",
                          "tracking.tensorboard=false", f"train.epochs={args.epochs}",
                          f"checkpoint.every_n_steps={args.every_n_steps}", "checkpoint.keep_last=2"]

    def command(self) -> list[str]:
        return [sys.executable, str(RECIPE), "--config", str(CONFIG), *self.overrides, "--resume", "auto"]

    @property
    def log(self) -> str:
        path = self.run_dir / "train.log"
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    def resumed_steps(self) -> list[int]:
        """The step each launch started from (0: a fresh start)."""
        found = re.findall(r"resumed from \S+: step (\d+)|no complete checkpoint in \S+: starting fresh",
                           self.log)
        return [int(step or 0) for step in found]

    def newest_complete(self) -> int:
        info = CheckpointManager(self.run_dir).latest_valid()
        return 0 if info is None else info.step

    def complete_steps(self) -> list[int]:
        return [c.step for c in CheckpointManager(self.run_dir).complete()]

    def all_named_folders_verify(self) -> bool:
        for folder in CheckpointManager(self.run_dir).candidates():
            try:
                verify_checkpoint(folder)
            except CheckpointError as err:
                print(f"  BROKEN checkpoint after the fault: {err}")
                return False
        return True

    def final_weights(self):
        from safetensors.torch import load_file

        newest = CheckpointManager(self.run_dir).candidates()[0]
        return {name: load_file(str(newest / name)) for name in ("model.safetensors", "model_1.safetensors")}


def last_bar_step(stderr: str) -> int | None:
    """The last step tqdm showed (the bar may lag by a step: an estimate of the step reached)."""
    found = re.findall(r"s2:\s+\d+%\|[^|]*\|\s*(\d+)/\d+", stderr)
    return int(found[-1]) if found else None


def wait_for_resume(run: Run, process: subprocess.Popen, before: int, timeout: float = 300) -> bool:
    """True once this launch logged where it starts ("resumed from", or a fresh start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(run.resumed_steps()) > before:
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    return False


def plan_fault(kind: str, run: Run, rng: random.Random, args: argparse.Namespace, total_steps: int
               ) -> str | None:
    """The GSV_ACCEL_FAULT value for the hook-based kinds: a save (or deletion) still to come; None
    when there is none left before the end of the run."""
    start = run.newest_complete()
    every = args.every_n_steps
    if kind in ("kill_in_save", "kill_after_manifest", "enospc_in_save"):
        first = (start // every + 1) * every
        steps = [step for step in range(first, first + 3 * every, every) if step < total_steps]
        return f"{kind}:{rng.choice(steps)}" if steps else None
    if kind == "kill_in_prune":
        # The oldest complete checkpoint is the next one pruned (unless it is the best one).
        complete = run.complete_steps()
        best = CheckpointManager(run.run_dir).best()
        doomed = [s for s in reversed(complete) if best is None or s != best.step]
        return f"kill_in_prune:{doomed[0]}" if doomed else None
    return None


def main() -> int:
    args = parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    rng = random.Random(seed)
    if not (args.dataset / "gsv_meta.json").is_file():
        from gsv_accel.data.prepare import prepare

        print(f"soak: preparing the demo corpus into {args.dataset}")
        prepare(REPO / "demo" / "data" / "demo.list", args.dataset, REPO / "demo" / "tiny_hubert",
            sv_model=REPO / "demo" / "tiny_sv" / "eres2netv2_tiny.safetensors")
    if args.out.exists():
        shutil.rmtree(args.out)
    print(f"soak: seed {seed}, {args.interruptions} interruptions, {args.epochs} epochs, checkpoint every "
          f"{args.every_n_steps} steps, runs in {args.out}")

    reference = Run(args.out / "reference", args)
    started = time.monotonic()
    result = subprocess.run(reference.command(), cwd=REPO, env=environment(), capture_output=True, text=True)
    reference_wall = time.monotonic() - started
    if result.returncode != 0:
        print(result.stderr[-4000:])
        return 1
    total_steps = int(re.search(r"training stopped: \S+ at step (\d+)", reference.log).group(1))
    print(f"soak: reference run: {total_steps} steps in {reference_wall:.1f} s")

    run = Run(args.out / "soak", args)
    counts: Counter[str] = Counter()
    failures: list[str] = []
    codes: dict[str, set[int]] = defaultdict(set)
    executed = 0
    launches = 0
    inside_save = 0  # poll kills that left a staging folder behind (the kill landed inside a save)
    started = time.monotonic()
    while True:
        launches += 1
        interrupt = counts.total() < args.interruptions
        kind = rng.choice(KINDS) if interrupt else "to_the_end"
        fault = plan_fault(kind, run, rng, args, total_steps) if interrupt else None
        if kind not in SIGNALS and kind not in ("sigkill_in_save_poll", "to_the_end") and fault is None:
            kind = "sigkill_random"
        expected_start = run.newest_complete()
        before = len(run.resumed_steps())
        stderr_path = args.out / f"launch_{launches:03d}.stderr"
        with open(stderr_path, "w") as stderr:
            process = subprocess.Popen(run.command(), cwd=REPO, env=environment(fault),
                                       stdout=subprocess.DEVNULL, stderr=stderr)
            if kind in SIGNALS or kind == "sigkill_in_save_poll":
                if wait_for_resume(run, process, before):
                    if kind == "sigkill_in_save_poll":
                        while process.poll() is None and not (run.root.is_dir() and any(
                                n.startswith(INCOMPLETE_PREFIX) for n in os.listdir(run.root))):
                            time.sleep(0.001)
                    else:
                        deadline = time.monotonic() + rng.uniform(0.1, args.max_delay)
                        while process.poll() is None and time.monotonic() < deadline:
                            time.sleep(0.01)
                    if process.poll() is None:
                        process.send_signal(SIGNALS.get(kind, signal.SIGKILL))
            code = process.wait(timeout=900)
        if kind == "sigkill_in_save_poll" and code == -signal.SIGKILL and run.root.is_dir():
            inside_save += any(n.startswith(INCOMPLETE_PREFIX) for n in os.listdir(run.root))
        bar = last_bar_step(stderr_path.read_text(errors="replace"))
        resumed = run.resumed_steps()[before:] or [0]
        start = resumed[-1]
        reached = bar if bar is not None else start
        stopped = re.findall(r"training stopped: \S+ at step (\d+)", run.log)
        if code in (0, EXIT_CODE_SIGTERM, EXIT_CODE_SIGINT) and stopped:
            reached = int(stopped[-1])
        executed += max(reached - start, 0)
        ok_start = start == expected_start
        ok_folders = run.all_named_folders_verify()
        label = kind if code == EXPECTED_CODES.get(kind) else f"{kind} (ended first, code {code})"
        print(f"  launch {launches:2d}: {label:<34} fault {fault or '-':<24} resumed at {start:3d} "
              f"(newest complete {expected_start:3d}) reached ~{reached:3d}")
        if not ok_start:
            failures.append(f"launch {launches}: resumed at {start}, newest complete was {expected_start}")
        if not ok_folders:
            failures.append(f"launch {launches}: a checkpoint folder does not verify")
        if code == 0:
            break
        if code != EXPECTED_CODES.get(kind):
            failures.append(f"launch {launches}: {kind} gave exit code {code}")
        counts[kind] += 1
        codes[kind].add(code)
        if launches > 3 * args.interruptions + 10:
            failures.append("the run never finished")
            break
    soak_wall = time.monotonic() - started

    import torch

    final, expected = run.final_weights(), reference.final_weights()
    identical = all(final[f].keys() == expected[f].keys()
                    and all(torch.equal(final[f][k], expected[f][k]) for k in expected[f]) for f in expected)
    if not identical:
        failures.append("final weights differ from the uninterrupted run")

    print("\nsoak summary")
    print(f"  seed {seed}; {counts.total()} interruptions over {launches} launches")
    print(f"  {'fault':<22}{'count':>6}  exit codes")
    for kind in KINDS:
        if counts[kind]:
            note = f"  ({inside_save} landed inside the save)" if kind == "sigkill_in_save_poll" else ""
            print(f"  {kind:<22}{counts[kind]:>6}  {sorted(codes[kind])}{note}")
    print(f"  every launch resumed from the newest complete checkpoint and every checkpoint verified: "
          f"{'yes' if not any('resumed' in f or 'verify' in f for f in failures) else 'NO'}")
    print(f"  steps: {total_steps} in the reference run, ~{executed} executed in the soak "
          f"(~{executed - total_steps} recomputed: steps since the last checkpoint, lost to a SIGKILL or a "
          "failed save)")
    print(f"  wall time: reference {reference_wall:.1f} s, soak {soak_wall:.1f} s")
    print(f"  final weights bitwise identical to the uninterrupted run: {'YES' if identical else 'NO'}")
    for failure in failures:
        print(f"  FAILED: {failure}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
