"""Write the tiny v4 vocoder used by the demo and the tests (demo/tiny_vocoder_v4/vocoder.pth).

A randomly initialised (seeded) copy of the v4 vocoder's layout (HiFi-GAN, 100 mel bands in,
upsampling 10-6-2-2-2 to 48 kHz, residual kernels 3/7/11) with a first-stage width of 32 instead of
512, saved as the released `gsv-v4-pretrained/vocoder.pth` is: a plain state dict with the weight norms
folded, so `load_vocoder("v4", path)` reads it like the real one. Its audio is noise-like: it exists so
that validation audio, `val/speaker_sim` and the sample WAVs run on a CPU in seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gsv_accel.models.vocoder import v4_vocoder

SEED = 2468
WIDTH = 32  # the official vocoder: 512


def tiny_vocoder_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = v4_vocoder(100, WIDTH)
    model.remove_weight_norm()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo/tiny_vocoder_v4", help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = tiny_vocoder_state_dict()
    torch.save(state, out / "vocoder.pth")
    print(f"wrote {out / 'vocoder.pth'} ({sum(v.numel() for v in state.values())} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
