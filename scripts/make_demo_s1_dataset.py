"""Prepare the GPT-stage (S1) demo dataset without training SoVITS first (tests and benchmarks).

`make demo` takes the semantic codes from the S2 demo run's best export. Here they come from a tiny
S2 model with random (seeded) weights whose codebook is marked initialised, exported the GPT-SoVITS
way; BERT features from the tiny random BERT. The codes are meaningless, their lengths (all that the
S1 tests and timings depend on) are those of `make demo`.

    python scripts/make_demo_s1_dataset.py --out runs/demo_dataset_s1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `recipes` is not an installed package


def make_demo_s1_dataset(work: Path, seed: int = 0) -> Path:
    """Write `work/tiny_s2.pth` and the prepared dataset `work/dataset`; returns the dataset."""
    from gsv_accel.config import load_config
    from gsv_accel.data.prepare import prepare
    from gsv_accel.formats import export_sovits
    from gsv_accel.models.sovits import SynthesizerTrn
    from recipes.s2 import DEFAULT_CONFIG, S2Config

    cfg = load_config(S2Config, DEFAULT_CONFIG)
    torch.manual_seed(seed)
    generator = SynthesizerTrn(cfg.model)
    for name, buffer in generator.quantizer.named_buffers():
        if name.endswith("inited"):
            buffer.fill_(1)  # else the quantizer would initialise its codebook from the first batch
        elif name.endswith("embed"):
            buffer.normal_()
    s2_export = export_sovits(generator.state_dict(), cfg.official_dict(), work / "tiny_s2.pth", "demo",
                              version=cfg.model.version)
    out = work / "dataset"
    prepare(REPO / "demo" / "data" / "demo.list", out, REPO / "demo" / "tiny_hubert",
            s2_pretrained=s2_export, bert_dir=REPO / "demo" / "tiny_bert")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for tiny_s2.pth and dataset/")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"wrote {make_demo_s1_dataset(args.out)}")


if __name__ == "__main__":
    main()
