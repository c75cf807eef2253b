"""Write the tiny Whisper used by the demo and the tests for `validation.asr_model` (demo/tiny_asr).

A randomly initialised (seeded) `transformers.WhisperForConditionalGeneration`, 16 wide with one
encoder and one decoder layer, with a byte-level tokenizer (the 256 byte symbols, no merges, and
Whisper's special tokens) and the standard 80-bin Whisper feature extractor. Its transcripts are
random bytes: it checks the plumbing of `val/cer` (load with `local_files_only`, resample, greedy
decoding, scoring), not speech recognition. Real intelligibility needs a real Whisper folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import (
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

SEED = 1234
SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")
MAX_TOKENS = 64


def byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode table (Whisper's byte-level BPE alphabet), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_tiny_asr(out: Path, seed: int = SEED) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    vocab = {symbol: index for index, symbol in enumerate(byte_symbols())}
    vocab[SPECIALS[0]] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    eos = SPECIALS[0]
    tokenizer = WhisperTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), unk_token=eos,
                                 bos_token=eos, eos_token=eos, pad_token=eos)
    tokenizer.add_tokens(list(SPECIALS[1:]), special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(list(SPECIALS))
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80),
                                 tokenizer=tokenizer)
    config = WhisperConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=1500,
                           max_target_positions=MAX_TOKENS, pad_token_id=ids[0], bos_token_id=ids[0],
                           eos_token_id=ids[0], decoder_start_token_id=ids[1], suppress_tokens=None,
                           begin_suppress_tokens=None)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    generation = model.generation_config
    generation.forced_decoder_ids = None
    generation.suppress_tokens = ids[1:]  # only bytes and the end token come out
    generation.begin_suppress_tokens = [ids[0]]  # at least one byte
    generation.max_length = MAX_TOKENS
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "demo" / "tiny_asr")
    args = parser.parse_args()
    print(f"wrote {write_tiny_asr(args.out)}")


if __name__ == "__main__":
    main()
