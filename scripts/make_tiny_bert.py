"""Write the tiny Chinese BERT used by the demo and the tests (demo/tiny_bert).

A randomly initialised (seeded) `transformers.BertForMaskedLM`, 32 wide and 3 layers, with a
character vocabulary built from the demo corpus's Chinese lines, so `gsv-accel prepare --bert` runs
offline in seconds. Characters outside the vocabulary become [UNK] (still one token per character,
which is what the phone alignment needs). Real voices need the real `chinese-roberta-wwm-ext-large`
folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

SEED = 1234
REPO = Path(__file__).resolve().parents[1]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def corpus_characters(list_path: Path) -> list[str]:
    chars = set()
    for line in list_path.read_text(encoding="utf-8").splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[2].lower() == "zh":
            chars.update(ch for ch in parts[3] if not ch.isspace())
    return sorted(chars)


def write_tiny_bert(out: Path, list_path: Path = REPO / "demo" / "data" / "demo.list",
                    hidden_size: int = 32, seed: int = SEED) -> Path:
    vocab = SPECIAL + corpus_characters(list_path) + [str(d) for d in range(10)]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=False,
                                      tokenize_chinese_chars=True)
        tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=2 * hidden_size,
                        max_position_embeddings=256)
    BertForMaskedLM(config).eval().save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo" / "tiny_bert")
    args = parser.parse_args()
    print(f"wrote {write_tiny_bert(args.out)}")


if __name__ == "__main__":
    main()
