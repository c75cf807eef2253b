"""Write the tiny HuBERT used by the demo and the tests (demo/tiny_hubert).

A randomly initialised (seeded) `transformers.HubertModel` with the real model's frame rate (16 kHz in,
one frame per 320 samples = 50 Hz out) but a 64-wide, 2-layer body, so that `gsv-accel prepare` runs
offline in seconds. Its features carry no linguistic content: real voices need the real
`chinese-hubert-base` folder (see README).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

SEED = 1234


def tiny_hubert_config(hidden_size: int = 64) -> HubertConfig:
    return HubertConfig(
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        conv_dim=(32,) * 7,
        # Same kernels and strides as HuBERT base: 320x downsampling, 50 frames per second at 16 kHz.
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
    )


def write_tiny_hubert(out: Path, hidden_size: int = 64, seed: int = SEED) -> Path:
    torch.manual_seed(seed)
    model = HubertModel(tiny_hubert_config(hidden_size)).eval()
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                             do_normalize=True, return_attention_mask=False).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "demo" / "tiny_hubert")
    parser.add_argument("--hidden-size", type=int, default=64,
                        help="feature width: 64 for the demo, 768 for the default model")
    args = parser.parse_args()
    print(f"wrote {write_tiny_hubert(args.out, args.hidden_size)}")


if __name__ == "__main__":
    main()
