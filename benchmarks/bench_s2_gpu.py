"""S2 on one GPU: the default v2 model in fp32, bf16, fp16 and under DeepSpeed ZeRO-2 (fp32, bf16).

    python benchmarks/bench_s2_gpu.py [--steps 200] [--batch-size 8] [--hubert DIR] [--json FILE]
    python benchmarks/bench_s2_gpu.py --smoke     # the same machinery on the CPU with the demo model

Each variant launches the S2 recipe unchanged through `accelerate launch` with a config from
`recipes/accelerate/` and a `--mixed_precision` flag, from the same seed on the same data, for a fixed
number of optimizer steps, validating once at the last step. The table reports, per variant, the
recipe's own speed line (training steps/s with data loading, validation and checkpoints left out;
peak GPU memory from `torch.cuda.max_memory_allocated`) and `val/mel_loss` after those steps, and
prints the command line of every run so the figures can be reproduced.

Data: the bundled demo corpus (40 utterances, 36 for training). The default model reads 768-wide
HuBERT features; without `--hubert` (a local `chinese-hubert-base` folder) they come from a randomly
initialised 768-wide HuBERT made on the fly (`scripts/make_tiny_hubert.py`), so they carry no
linguistic content: the val mel loss then compares the precisions with each other, not with a real
voice. The model starts from random weights (no pretrained files are needed).

`--smoke` checks the script on a CPU-only machine: the demo model, fp32 and bf16 with and without
ZeRO-2, a few steps (fp16 autocast does not exist on the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate"

# name -> (accelerate config, mixed precision)
GPU_VARIANTS = {
    "fp32": ("single_gpu.yaml", "no"),
    "bf16": ("single_gpu.yaml", "bf16"),
    "fp16": ("single_gpu.yaml", "fp16"),
    "zero2-fp32": ("deepspeed_zero2.yaml", "no"),
    "zero2-bf16": ("deepspeed_zero2.yaml", "bf16"),
}
SMOKE_VARIANTS = {
    "fp32": ("cpu.yaml", "no"),
    "bf16": ("cpu.yaml", "bf16"),
    "zero2-fp32": ("deepspeed_zero2.yaml", "no"),
    "zero2-bf16": ("deepspeed_zero2.yaml", "bf16"),
}
SPEED = re.compile(r"speed: ([0-9.]+|nan) training steps/s over (\d+) steps"
                   r".*?(?:peak memory ([0-9.]+) GiB)?$", re.MULTILINE)
VAL_MEL = re.compile(r"val/mel_loss = ([0-9.]+|nan|inf)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_dataset(work: Path, hubert: Path | None, smoke: bool) -> Path:
    """The demo corpus prepared with `hubert`, or with a random HuBERT of the model's feature width."""
    out = work / "dataset"
    if hubert is None:
        hubert = REPO / "demo" / "tiny_hubert" if smoke else work / "hubert_768"
        if not smoke:
            subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_hubert.py"),
                            "--out", str(hubert), "--hidden-size", "768"], check=True, cwd=REPO)
    subprocess.run([sys.executable, "-m", "gsv_accel.cli", "prepare", "--list",
                    str(REPO / "demo" / "data" / "demo.list"), "--out", str(out), "--hubert", str(hubert)],
                   check=True, cwd=REPO)
    return out


def command(variant: tuple[str, str], run_dir: Path, dataset: Path, args: argparse.Namespace) -> list[str]:
    config_file, precision = variant
    model_config = REPO / "recipes" / "configs" / ("s2_demo.yaml" if args.smoke else "s2_v2.yaml")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ACCELERATE_CONFIGS / config_file), "--num_processes", "1", "--mixed_precision", precision,
            "--main_process_port", str(free_port()), str(REPO / "recipes" / "s2.py"),
            "--config", str(model_config), f"run.output_dir={run_dir}", f"data.dataset={dataset}",
            f"data.batch_size={args.batch_size}", "data.num_workers=2", "train.epochs=100000",
            f"train.max_steps={args.steps}", f"validation.every_n_steps={args.steps}",
            "validation.every_n_epochs=null", "checkpoint.every_n_epochs=null", "checkpoint.keep_last=1",
            "tracking.wandb=false", "tracking.tensorboard=false", f"run.seed={args.seed}"]


def run_variant(name: str, variant: tuple[str, str], work: Path, dataset: Path,
                args: argparse.Namespace) -> dict:
    run_dir = work / name
    cmd = command(variant, run_dir, dataset, args)
    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    if args.smoke:
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    print(f"[{name}] {shlex.join(cmd)}", file=sys.stderr)
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log = (run_dir / "train.log").read_text(encoding="utf-8") if (run_dir / "train.log").exists() else ""
    row = {"variant": name, "accelerate_config": variant[0], "mixed_precision": variant[1],
           "exit_code": result.returncode, "wall_s": round(wall, 1), "command": shlex.join(cmd)}
    speed, val = SPEED.search(log), VAL_MEL.findall(log)
    if result.returncode != 0 or speed is None:
        row["error"] = (result.stderr or result.stdout)[-2000:]
        return row
    row.update(steps_per_s=float(speed.group(1)), steps=int(speed.group(2)),
               peak_memory_gib=float(speed.group(3)) if speed.group(3) else None,
               val_mel_loss=float(val[-1]) if val else None)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| variant | accelerate config | precision | steps/s | peak memory (GiB) | val mel loss "
             "| wall (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | {row['accelerate_config']} | {row['mixed_precision']} | "
                         f"failed (exit {row['exit_code']}) | | | {row['wall_s']} |")
            continue
        memory = f"{row['peak_memory_gib']:.2f}" if row["peak_memory_gib"] is not None else "-"
        mel = f"{row['val_mel_loss']:.4f}" if row["val_mel_loss"] is not None else "-"
        lines.append(f"| {row['variant']} | {row['accelerate_config']} | {row['mixed_precision']} | "
                     f"{row['steps_per_s']:.3f} | {memory} | {mel} | {row['wall_s']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (200; smoke: 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="per process (8; smoke: 4)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--hubert", type=Path, default=None, help="a local chinese-hubert-base folder")
    parser.add_argument("--variants", nargs="+", default=None, help="a subset of the variants to run")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--smoke", action="store_true", help="CPU check of the script with the demo model")
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.smoke else 200)
    args.batch_size = args.batch_size or (4 if args.smoke else 8)
    variants = SMOKE_VARIANTS if args.smoke else GPU_VARIANTS
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA GPU here: run on a GPU machine, or --smoke to check the script on the CPU")
    chosen = args.variants or list(variants)
    unknown = sorted(set(chosen) - set(variants))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {sorted(variants)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="gsv_bench_s2_gpu_"))
    work.mkdir(parents=True, exist_ok=True)
    dataset = prepare_dataset(work, args.hubert, args.smoke)
    rows = [run_variant(name, variants[name], work, dataset, args) for name in chosen]
    print(table(rows))
    print(f"\n{args.steps} optimizer steps, batch size {args.batch_size}, seed {args.seed}; runs in {work}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
