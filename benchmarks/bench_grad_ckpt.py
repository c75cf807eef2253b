#!/usr/bin/env python
"""What `train.grad_ckpt` saves and costs, for the default (official-size) S2 generator and GPT.

    python benchmarks/bench_grad_ckpt.py [--batch 2] [--seconds 5] [--repeats 3]

For each model, with checkpointing off and on:
* the activations autograd keeps for the backward pass (bytes of the distinct saved tensors);
* the peak resident memory one forward + backward adds, each measured in a fresh process (Linux:
  peak reset through /proc/self/clear_refs; on a GPU `torch.cuda.max_memory_allocated` would show it);
* the time of a forward + backward, off and on alternated in one process (machine noise hits both
  alike), reported as the on/off ratio per pair;
* whether the loss and every gradient are bitwise equal.

One CPU thread. The S2 batch is `--batch` utterances of `--seconds` seconds (50 spectrogram frames per
second; the decoder generates its fixed 32-frame segment); the GPT batch `--batch` rows of 80 phones
and 25 semantic tokens per second.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch


def build(kind: str, batch: int, seconds: float):
    """(model, loss function) of the default-size model on a random batch."""
    torch.manual_seed(0)
    if kind == "s2":
        from gsv_accel.models.sovits import SoVITSConfig, SynthesizerTrn

        model = SynthesizerTrn(SoVITSConfig()).train()
        frames, phones = int(50 * seconds), int(16 * seconds)
        inputs = (torch.randn(batch, 768, frames), torch.rand(batch, 1025, frames),
                  torch.full((batch,), frames), torch.randint(0, 700, (batch, phones)),
                  torch.full((batch,), phones))

        def loss():
            out = model(*inputs)
            z, z_p, m_p, logs_p, m_q, logs_q = out.latents
            return out.wav.square().mean() + (z_p - m_p).square().mean() + m_q.abs().mean()
    else:
        from gsv_accel.models.gpt import GPTConfig, Text2SemanticDecoder

        config = GPTConfig()
        model = Text2SemanticDecoder(config).train()
        tokens, phones = int(25 * seconds), 80
        inputs = (torch.randint(0, config.phoneme_vocab_size, (batch, phones)), torch.full((batch,), phones),
                  torch.randint(0, config.EOS, (batch, tokens)), torch.full((batch,), tokens),
                  torch.randn(batch, config.bert_dim, phones))

        def loss():
            return model.forward_teacher_forced(*inputs)[0]
    return model, loss


def step(model, loss_fn, ckpt: bool) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    model.set_grad_checkpointing(ckpt)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    start = time.perf_counter()
    loss = loss_fn()
    loss.backward()
    return time.perf_counter() - start, loss.detach(), {n: p.grad for n, p in model.named_parameters()
                                                        if p.grad is not None}


def saved_bytes(model, loss_fn, ckpt: bool) -> int:
    model.set_grad_checkpointing(ckpt)
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn()
    return sum(storages.values())


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def step_peak_gib(kind: str, batch: int, seconds: float, ckpt: bool) -> float:
    """In this (fresh) process: the peak resident memory one forward + backward adds (Linux).

    Freed heap is returned to the system first (`malloc_trim`) and the kernel's peak is reset
    (`/proc/self/clear_refs` 5), so the figure is the step's own, not model building's."""
    import ctypes
    import gc

    model, loss_fn = build(kind, batch, seconds)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")
    before = _status_kib("VmRSS")
    step(model, loss_fn, ckpt)
    return (_status_kib("VmHWM") - before) / 2**20


def peak_child(kind: str, batch: int, seconds: float, ckpt: bool) -> float:
    here = str(Path(__file__).resolve().parent)
    code = (f"import sys; sys.path.insert(0, {here!r}); import torch; torch.set_num_threads(1);"
            "from bench_grad_ckpt import step_peak_gib;"
            f"print(step_peak_gib({kind!r}, {batch}, {seconds}, {ckpt}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return float(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="s2,s1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for kind in args.models.split(","):
        model, loss_fn = build(kind, args.batch, args.seconds)
        _, loss_off, grads_off = step(model, loss_fn, False)
        grads_off = {k: v.clone() for k, v in grads_off.items()}
        _, loss_on, grads_on = step(model, loss_fn, True)
        same = torch.equal(loss_off, loss_on) and all(torch.equal(grads_off[k], grads_on[k])
                                                      for k in grads_off)
        ratios = []
        for _ in range(args.repeats):
            off = step(model, loss_fn, False)[0]
            on = step(model, loss_fn, True)[0]
            ratios.append(round(on / off, 3))
        peaks = {ckpt: peak_child(kind, args.batch, args.seconds, ckpt) for ckpt in (False, True)}
        results[kind] = {
            "saved_activations_mib": {"off": round(saved_bytes(model, loss_fn, False) / 2**20, 1),
                                      "on": round(saved_bytes(model, loss_fn, True) / 2**20, 1)},
            "step_peak_rss_gib": {"off": round(peaks[False], 3), "on": round(peaks[True], 3)},
            "time_on_over_off": ratios,
            "bitwise_equal_loss_and_grads": same,
        }
        print(kind, json.dumps(results[kind]), flush=True)


if __name__ == "__main__":
    main()
