"""Data pipeline benchmark on the demo corpus (`make bench`).

Prints one table: `prepare` throughput (seconds of audio per second of wall time) on
demo/data/demo.list with demo/tiny_hubert, per-item read time of the prepared dataset's torch view,
and loader throughput (batches of 8 per second, spectrograms computed in the collate) with 0 and 2
worker processes.

`--storage` adds the measurement behind the storage layout (module docstring of
`gsv_accel.data.dataset`): per-item read time of HuBERT-sized features stored as fp16/fp32 flat lists,
`Array2D` or through `datasets`' own formatting, and a cached spectrogram against computing it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


RESULTS: list[tuple[str, float, str]] = []


def _row(name: str, value: float, unit: str) -> None:
    RESULTS.append((name, value, unit))


def bench_prepare(work: Path, list_path: Path, hubert: Path, num_proc: int, device: str) -> Path:
    from gsv_accel.data.prepare import prepare

    out = work / "demo_prepared"
    start = time.perf_counter()
    prepare(list_path, out, hubert, num_proc=num_proc, device=device, force=True)
    seconds = time.perf_counter() - start
    from gsv_accel.data.dataset import load_prepared

    data = load_prepared(out)
    audio = sum(sum(split["duration"]) for split in data.splits.values())
    _row("prepare: audio prepared", audio, "s")
    _row("prepare: wall time", seconds, "s")
    _row("prepare: throughput", audio / seconds, "s audio / s")
    return out


def _best_ms(read, index: list[int], rounds: int = 5) -> float:
    """Mean time per call in ms, best of `rounds` passes (the machine may be shared: the fastest pass
    is the least disturbed one)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in index:
            read(i)
        times.append((time.perf_counter() - start) / len(index) * 1e3)
    return min(times)


def bench_reads(out: Path, reads: int = 300) -> None:
    from gsv_accel.data.dataset import load_prepared

    data = load_prepared(out)
    view = data.view("train")
    index = np.random.default_rng(0).integers(0, len(view), reads).tolist()
    _row("read: one item (ssl + wav + phones)", _best_ms(view.__getitem__, index), "ms")
    formatted = data.splits["train"].with_format("numpy", columns=["ssl", "wav", "phone_ids"])
    _row("read: same row through datasets' numpy formatting", _best_ms(formatted.__getitem__, index), "ms")


def bench_loader(out: Path, workers: int, compute_spec: bool = True, batches: int = 60) -> None:
    from gsv_accel.data.dataset import S2Collate, load_prepared
    from gsv_accel.data.sampler import LengthBucketBatchSampler

    view = load_prepared(out).view("train")
    sampler = LengthBucketBatchSampler(view.lengths, 8, seed=0)
    loader = torch.utils.data.DataLoader(view, batch_sampler=sampler,
                                         collate_fn=S2Collate(compute_spec=compute_spec),
                                         num_workers=workers, persistent_workers=workers > 0)
    done, epoch = 0, 0
    next(iter(loader))  # start the workers outside the timing
    start = time.perf_counter()
    while done < batches:
        sampler.set_epoch(epoch)
        for _ in loader:
            done += 1
        epoch += 1
    where = "spectrogram in collate" if compute_spec else "no spectrogram: on the device"
    _row(f"loader: batch 8, {workers} workers ({where})", done / (time.perf_counter() - start), "batches / s")


def _layout_rows(kind: str, frames: np.ndarray, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    for t in frames.tolist():
        ssl = rng.standard_normal((dim, t), dtype=np.float32)
        yield {"ssl": {"flat16": ssl.astype(np.float16).reshape(-1), "flat32": ssl.reshape(-1),
                       "array2d": ssl.T.astype(np.float16)}[kind],
               "wav": (rng.standard_normal(t * 640) * 3000).astype(np.int16),
               "spec": np.abs(rng.standard_normal(1025 * t)).astype(np.float16)}


def _bench_layout(work: Path, kind: str, frames: np.ndarray, index: list[int], dim: int) -> None:
    import datasets as hfd

    from gsv_accel.audio import SpectrogramExtractor
    from gsv_accel.data.dataset import _ArrowRows, _float_tensor

    ssl_type = {"flat16": hfd.List(hfd.Value("float16")), "flat32": hfd.List(hfd.Value("float32")),
                "array2d": hfd.Array2D((None, dim), "float16")}[kind]
    features = hfd.Features({"ssl": ssl_type, "wav": hfd.List(hfd.Value("int16")),
                             "spec": hfd.List(hfd.Value("float16"))})
    rows = _layout_rows(kind, frames, dim, seed=0)
    ds = hfd.Dataset.from_dict({"i": list(range(len(frames)))}).map(
        lambda _: next(rows), remove_columns=["i"], features=features, new_fingerprint=kind,
        cache_file_name=str(work / f"{kind}.arrow"))
    formatted = ds.with_format("numpy", columns=["ssl"])
    _row(f"storage: ssl {kind}, datasets numpy formatting",
         _best_ms(lambda i: formatted[i]["ssl"], index), "ms")
    if kind == "array2d":
        return
    reader = _ArrowRows(ds.data.table)

    def ssl(i: int) -> torch.Tensor:
        return _float_tensor(reader.list_cell("ssl", i)).view(dim, -1)

    def wav(i: int) -> torch.Tensor:
        return _float_tensor(reader.list_cell("wav", i)).mul_(1 / 32768)

    def cached_spec(i: int) -> torch.Tensor:
        return _float_tensor(reader.list_cell("spec", i)).view(1025, -1)

    extractor = SpectrogramExtractor()
    _row(f"storage: ssl {kind}, Arrow buffer view -> torch fp32", _best_ms(ssl, index), "ms")
    if kind == "flat16":
        _row("storage: wav int16, Arrow buffer view -> torch fp32", _best_ms(wav, index), "ms")
        _row("storage: cached fp16 spectrogram, buffer view -> fp32", _best_ms(cached_spec, index), "ms")
        _row("storage: spectrogram computed from the wav",
             _best_ms(lambda i: extractor.linear(wav(i)), index), "ms")


def bench_storage(work: Path, count: int = 200, dim: int = 768) -> None:
    """Per-item read time of the candidate layouts (synthetic 2-10 s utterances, 768-wide features)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(100, 500, count)
    index = rng.integers(0, count, 300).tolist()
    for kind in ("flat16", "flat32", "array2d"):
        _bench_layout(work, kind, frames, index, dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", type=Path, default=REPO / "demo" / "data" / "demo.list")
    parser.add_argument("--hubert", type=Path, default=REPO / "demo" / "tiny_hubert")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--storage", action="store_true", help="also compare storage layouts (slower)")
    args = parser.parse_args()
    import datasets

    datasets.disable_progress_bars()
    work = Path(tempfile.mkdtemp(prefix="gsv_bench_data_"))
    try:
        out = bench_prepare(work, args.list, args.hubert, args.num_proc, args.device)
        bench_reads(out)
        for compute_spec in (True, False):
            for workers in (0, 2):
                bench_loader(out, workers, compute_spec)
        if args.storage:
            bench_storage(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'measurement':<60s} {'value':>10s}  unit")
    for name, value, unit in RESULTS:
        print(f"{name:<60s} {value:10.3f}  {unit}")


if __name__ == "__main__":
    main()
