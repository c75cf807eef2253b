"""Validation cost of the S2 demo with each voice-quality metric on (`make bench`).

Sets the demo recipe up (`recipes/configs/s2_demo.yaml`, untrained weights, W&B and TensorBoard off)
once per variant and times `session.validate()` (every validation utterance through the inference
path, plus the metric's model) `--repeats` times after one untimed warm-up call, which also fills the
speaker model's cache of the real utterances' embeddings:

* mel only: `validation.speaker_model=null` (what the demo validated before voice-quality metrics);
* + speaker similarity: the tiny ERes2NetV2 of the demo config (`val/speaker_sim`);
* + CER: the tiny random Whisper `demo/tiny_asr` (`val/cer`), speaker model off;
* both.

It also times writing one validation's samples to the run folder (`gsv_accel.samples`). The tiny
models only show the overhead's shape: a real ERes2NetV2 (about 30 M parameters) and a real Whisper
cost far more per utterance, and Whisper's greedy decoding grows with the transcript's length (the
recipe bounds it at 2 tokens per reference character + 16).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_s2 import ensure_dataset  # noqa: E402
from recipes.s2 import DEFAULT_CONFIG, S2Config, S2Recipe  # noqa: E402

TINY_ASR = REPO / "demo" / "tiny_asr"
VARIANTS = {
    "mel only": ["validation.speaker_model=null"],
    "+ speaker similarity (tiny ERes2NetV2)": [],
    "+ CER (tiny Whisper)": ["validation.speaker_model=null", f"validation.asr_model={TINY_ASR}"],
    "+ both": [f"validation.asr_model={TINY_ASR}"],
}


def time_variant(overrides: list[str], dataset: Path, work: Path, repeats: int,
                 threads: int) -> tuple[list[float], float]:
    from gsv_accel.config import load_config
    from gsv_accel.samples import save_validation_samples

    cfg = load_config(S2Config, DEFAULT_CONFIG, [f"data.dataset={dataset}", f"run.output_dir={work}",
                                                 "tracking.wandb=false", "tracking.tensorboard=false",
                                                 f"run.cpu_threads={threads or 'null'}", *overrides])
    recipe = S2Recipe(cfg, resume=None)
    recipe.setup()
    for name in ("recipes", "gsv_accel"):  # quiet: set-up configured the loggers
        logging.getLogger(name).setLevel(logging.WARNING)
    session = recipe.session
    result = session.validate()  # warm-up (and the real utterances' speaker embeddings)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = session.validate()
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    save_validation_samples(work, step=0, epoch=0, media=result.media, sampling_rate=result.sampling_rate,
                            metrics=result.metrics)
    return seconds, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed validations per variant (median)")
    parser.add_argument("--dataset", type=Path, default=REPO / "runs" / "demo_dataset",
                        help="prepared demo dataset (prepared into a temp folder if missing)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    import datasets

    from gsv_accel.formats import OfficialCompatibilityWarning

    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=OfficialCompatibilityWarning)
    work = Path(tempfile.mkdtemp(prefix="gsv_bench_validation_"))
    rows = []
    try:
        dataset = ensure_dataset(args.dataset.resolve(), work)
        for index, (name, overrides) in enumerate(VARIANTS.items()):
            print(f"{name} ...", file=sys.stderr)
            seconds, samples = time_variant(overrides, dataset, work / f"run{index}", args.repeats,
                                            args.threads)
            rows.append((name, statistics.median(seconds), samples))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0][1]
    print(f"\nS2 demo validation (4 utterances, 2 kept as samples) on cpu, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats} validations")
    print(f"{'metrics':<44s} {'s / validation':>15s} {'added':>9s} {'samples to disk':>16s}")
    for name, seconds, samples in rows:
        print(f"{name:<44s} {seconds:15.3f} {seconds - base:+9.3f} {samples:15.3f}s")


if __name__ == "__main__":
    main()
