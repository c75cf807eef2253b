#!/usr/bin/env python
"""oneDNN vs PyTorch's native kernels for the 1-D convolutions `gsv_accel.models.cpu_conv.Conv1d` runs.

    python benchmarks/bench_cpu_conv.py [--pairs 12] [--frames 187]

For each convolution shape of the default models that uses `Conv1d` (v3/v4 `wns1` WaveNet layers,
the DiT's grouped position convolution, the v2 posterior encoder's WaveNet layers) at batch 1 to 16:
the median time of one forward + backward (input, weight and bias gradients) with oneDNN
(`nn.Conv1d`, PyTorch's default on a CPU) and with the native kernels (`_NativeConv1d`, whatever the
batch), alternated in pairs, and their ratio (native / oneDNN; below 1 is faster). One CPU thread,
fp32, CPU seconds. `Conv1d` uses the native kernels up to `NATIVE_MAX_BATCH` items, where the ratio
should stay below 1 on the machines we train on.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from gsv_accel.models.cpu_conv import NATIVE_MAX_BATCH, Conv1d, _NativeConv1d

# (what, in channels, out channels, kernel, groups)
SHAPES = [
    ("v3/v4 wns1 WaveNet layer", 512, 1024, 5, 1),
    ("v3/v4 DiT position conv", 1024, 1024, 31, 16),
    ("v2 WaveNet layer (enc_q, flows)", 192, 384, 5, 1),
]


def step_time(conv, x, grad, native: bool) -> float:
    started = time.process_time()
    if native:
        out = _NativeConv1d.apply(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0], conv.groups)
    else:
        out = F.conv1d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    out.backward(grad)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--frames", type=int, default=187, help="frames per item (187: 2 s of v3 mel)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"Conv1d takes the native kernels at batch <= {NATIVE_MAX_BATCH}.")
    print("| conv | batch | oneDNN ms | native ms | native / oneDNN |\n|---|---|---|---|---|")
    for what, cin, cout, kernel, groups in SHAPES:
        conv = Conv1d(cin, cout, kernel, padding=kernel // 2, groups=groups)
        for batch in (1, 2, 4, 8, 16):
            x = torch.randn(batch, cin, args.frames, requires_grad=True)
            grad = torch.randn(batch, cout, args.frames)
            onednn, native = [], []
            for pair in range(args.pairs + 1):
                first, second = (True, False) if pair % 2 else (False, True)
                times = {first: step_time(conv, x, grad, first), second: step_time(conv, x, grad, second)}
                if pair:  # the first pair warms up
                    native.append(times[True])
                    onednn.append(times[False])
            ratio = statistics.median(n / o for n, o in zip(native, onednn, strict=True))
            print(f"| {what} | {batch} | {1e3 * statistics.median(onednn):.1f} | "
                  f"{1e3 * statistics.median(native):.1f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
