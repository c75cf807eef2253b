"""Write the tiny speaker-verification encoder used by the demo and the tests (demo/tiny_sv).

A randomly initialised (seeded) ERes2NetV2 with the released model's structure (base width 24, scale 4,
expansion 4, blocks 3/4/6/3, 80 fbank bins) but m_channels 4 instead of 64, so v2Pro/v2ProPlus feature
preparation runs offline in seconds: its embedding is 4 * 8 * 4 * 10 = 1280 long instead of 20480.
`seg_1` (the x-vector head, unused by GPT-SoVITS) is shrunk to 32 outputs.

Like the reference fixture's small model, every BatchNorm gets random affine parameters and running
statistics, so that all weights affect the output. Weights are rounded to fp16 and stored as fp16 (half
the file size); loading casts them back to float32 exactly. The embedding carries no speaker identity:
real voices need the released `pretrained_eres2netv2w24s4ep4.ckpt`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from gsv_accel.models.sv import ERes2NetV2

SEED = 4321
TINY_KWARGS = {"m_channels": 4, "base_width": 24, "scale": 4, "expansion": 4, "feat_dim": 80,
               "embedding_size": 32, "num_blocks": [3, 4, 6, 3]}


def tiny_sv_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # default initialisation of the convolutions and seg_1
    model = ERes2NetV2(**TINY_KWARGS)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) * 0.75 + 0.25)
    return {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}


def write_tiny_sv(out: Path, seed: int = SEED) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    # A single metadata entry: safetensors writes several in random order, and the file should be
    # byte-identical when regenerated (the seed and origin are in demo/tiny_sv/README.md).
    metadata = {"constructor_kwargs": json.dumps(TINY_KWARGS)}
    save_file({k: v.contiguous() for k, v in tiny_sv_state_dict(seed).items()}, str(out), metadata=metadata)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "demo" / "tiny_sv"
                        / "eres2netv2_tiny.safetensors")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    path = write_tiny_sv(args.out, args.seed)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
