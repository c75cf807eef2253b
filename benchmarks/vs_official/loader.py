#!/usr/bin/env python
"""The S2 training data loader, gsv_accel vs the official one, on the same corpus (batches/s).

The corpus is the bundled demo (`demo/data/demo.list`), prepared here as `make demo` prepares it
(`gsv-accel prepare` with `demo/tiny_hubert`, whose features are 64-dim, not HuBERT-base's 768) into
a temporary folder, or taken from `--dataset`. Its training split is then written out in the official
layout (`logs/<exp>/2-name2text.txt`, `4-cnhubert/<name>.pt` (1, D, T) float32, `5-wav32k/<name>`
16-bit 32 kHz WAV), so both loaders read the same utterances, features and audio.

- ours: what `recipes/s2.py` builds: the prepared dataset's torch view (`load_prepared(...).view
  ("train")`), `LengthBucketBatchSampler`, `S2Collate` (spectrograms computed in the collate);
- official: `GPT_SoVITS/module/data_utils.py`'s `TextAudioSpeakerLoader` (version v2; its audio is
  decoded by the official `tools/my_utils.load_audio`, which runs the `ffmpeg` command line per file),
  `DistributedBucketSampler` with `s2_train.py`'s boundaries, `TextAudioSpeakerCollate`.
Both in a `DataLoader` with 0 workers and the same batch size, each cycling through epochs. A round
takes `--batches` batches from each, alternating which goes first; the row gives the median batches/s
of each and the median over rounds of ours / official batches/s (target >= 10). Seconds are CPU seconds
of the process and its children (the ffmpeg decoders included) by default, `--clock wall` elapsed.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

TARGET = ">= 10"
# s2_train.py's bucket boundaries (spectrogram frames).
OFFICIAL_BOUNDARIES = [32, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1500, 1600, 1700,
                       1800, 1900]


def prepare_demo(out: Path) -> Path:
    from gsv_accel.data.prepare import prepare

    repo = harness.REPO
    print(f"preparing the demo corpus into {out}", flush=True)
    with contextlib.redirect_stderr(io.StringIO()):
        prepare(repo / "demo" / "data" / "demo.list", out, repo / "demo" / "tiny_hubert")
    return out


def write_official_layout(dataset: Path, exp_dir: Path, version: str = "v2") -> int:
    """The training split of a prepared dataset as the official preparation scripts lay it out.
    Returns the number of utterances written."""
    import soundfile
    import torch

    from gsv_accel.data.dataset import load_prepared
    from gsv_accel.text.symbols import symbols

    table = symbols(version)
    view = load_prepared(dataset).view("train", features=("ssl", "wav", "phones", "text"))
    for sub in ("4-cnhubert", "5-wav32k"):
        (exp_dir / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(len(view)):
        item = view[index]
        name = item["name"] if item["name"].endswith(".wav") else f"{item['name']}.wav"
        phones = " ".join(table[i] for i in item["phones"].tolist())
        # name \t phones \t word2ph \t normalised text; the S2 loader reads the phones only.
        lines.append(f"{name}\t{phones}\t\t{item['text']}")
        torch.save(item["ssl"].unsqueeze(0).float().clone(), exp_dir / "4-cnhubert" / f"{name}.pt")
        soundfile.write(exp_dir / "5-wav32k" / name, item["wav"][0].numpy(), 32000, subtype="PCM_16")
    (exp_dir / "2-name2text.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    return len(view)


def cycling(make_loader, on_epoch=None):
    """Batches forever: a new epoch (and iterator) whenever one ends, as a training loop would."""
    epoch = 0
    while True:
        if on_epoch is not None:
            on_epoch(epoch)
        yield from make_loader()
        epoch += 1


def our_loader(dataset: Path, batch_size: int):
    import torch

    from gsv_accel.audio import SpectrogramConfig
    from gsv_accel.data.dataset import S2Collate, load_prepared
    from gsv_accel.data.sampler import DEFAULT_BOUNDARIES, LengthBucketBatchSampler

    view = load_prepared(dataset).view("train")
    sampler = LengthBucketBatchSampler(view.lengths, batch_size, DEFAULT_BOUNDARIES, seed=1234)
    # As recipes/s2.py builds it (its own generator: an iterator never draws from the global RNG).
    loader = torch.utils.data.DataLoader(view, batch_sampler=sampler, num_workers=0,
                                         generator=torch.Generator(),
                                         collate_fn=S2Collate(SpectrogramConfig()))
    return cycling(lambda: iter(loader), sampler.set_epoch)


def official_loader(root: Path, exp_dir: Path, batch_size: int, version: str = "v2"):
    import torch
    import utils  # official GPT_SoVITS/utils.py
    from module.data_utils import DistributedBucketSampler, TextAudioSpeakerCollate, TextAudioSpeakerLoader

    hps = utils.get_hparams_from_file(str(root / "GPT_SoVITS" / "configs" / "s2.json"))
    hps.data.exp_dir = str(exp_dir)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        dataset = TextAudioSpeakerLoader(hps.data, version=version)
    sampler = DistributedBucketSampler(dataset, batch_size, list(OFFICIAL_BOUNDARIES), num_replicas=1, rank=0,
                                       shuffle=True)
    loader = torch.utils.data.DataLoader(dataset, num_workers=0, shuffle=False, batch_sampler=sampler,
                                         collate_fn=TextAudioSpeakerCollate(version=version))
    return cycling(lambda: iter(loader), sampler.set_epoch)


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=8, help="batch size of both loaders (default 8)")
    p.add_argument("--batches", type=int, default=12, help="batches per side per round (default 12)")
    p.add_argument("--dataset", type=Path, default=None,
                   help="a prepared demo dataset (default: prepare demo/data/demo.list into a temp folder)")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.batches < 1:
        p.error("--batch-size and --batches must be >= 1")
    root = harness.require_official("S2 loader vs official")
    if root is None:
        return 0
    if shutil.which("ffmpeg") is None:
        raise SystemExit("the official loader decodes audio with the ffmpeg command line: install ffmpeg "
                         "(Debian: apt-get install ffmpeg)")
    harness.import_official(root)
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(prefix="gsv_vs_official_loader_") as work:
        dataset = args.dataset.resolve() if args.dataset else prepare_demo(Path(work) / "demo_dataset")
        exp_dir = Path(work) / "logs" / "demo"
        count = write_official_layout(dataset, exp_dir)
        ours = our_loader(dataset, args.batch_size)
        official = official_loader(root, exp_dir, args.batch_size)
        print(f"{count} training utterances; {args.batches} batches of {args.batch_size} per side per round",
              flush=True)

        def take(iterator) -> None:
            for _ in range(args.batches):
                next(iterator)

        timings = harness.alternate(lambda: take(ours), lambda: take(official), args.pairs, warmup=1,
                                    clock=harness.CLOCKS[args.clock],
                                    log=lambda line: print("  " + line, flush=True))
    ours_rate = [args.batches / s for s in timings.ours]
    official_rate = [args.batches / s for s in timings.official]
    # Throughput ratio: ours / official batches per second = official seconds / our seconds.
    speedup = statistics.median(b / a for a, b in zip(timings.ours, timings.official, strict=True))
    row = harness.Row("S2 data loader, batches/s (0 workers)", f"batch {args.batch_size}, demo corpus",
                      f"{statistics.median(ours_rate):.1f}/s", f"{statistics.median(official_rate):.1f}/s",
                      speedup, TARGET, harness.meets(speedup, TARGET))
    return harness.finish([row], args, "S2 data loader, ours vs official")


if __name__ == "__main__":
    sys.exit(main())
