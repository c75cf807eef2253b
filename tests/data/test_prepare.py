"""`gsv-accel prepare`: features against the audio module and the models, rejections, atomic output,
caching, the split and the command-line helpers. Everything runs on a few synthetic utterances with a
tiny random HuBERT (and tiny S2/BERT models) saved in temporary folders."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import soxr
import torch

from gsv_accel import cli
from gsv_accel.audio import SpectrogramConfig, SpectrogramExtractor, load_audio
from gsv_accel.data import prepare as prep
from gsv_accel.data.dataset import GSVDataset, read_meta
from gsv_accel.text import clean_text, clean_text_segments, text_to_phone_ids
from scripts.make_tiny_hubert import write_tiny_hubert

ZH_TEXT = "今天天气很好，我们去公园散步吧。"
EN_TEXT = "She counted twenty seven birds sitting on the fence."
MIXED_TEXT = "我喜欢 Python 语言。"
ZH_CHARS = "今天气很好我们去公园散步吧你世界喜欢语言"


def speech_like(seconds: float, rate: int, seed: int, channels: int = 1, peak: float = 0.8) -> np.ndarray:
    """Amplitude-modulated harmonics plus a little noise: deterministic, not silent, not clipped."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 40 * seed % 90
    sig = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    sig = sig * (0.55 + 0.45 * np.sin(2 * np.pi * 3.1 * t)) + 0.02 * rng.standard_normal(t.size)
    sig = (sig / np.abs(sig).max() * peak).astype(np.float32)
    if channels == 2:
        sig = np.stack([sig, 0.5 * sig], axis=1)
    return sig


def write_corpus(root: Path, lines: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    list_path = root / "corpus.list"
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list_path


def good_corpus(root: Path, mixed: bool = False) -> Path:
    """Four usable utterances: 32 kHz mono wav, 44.1 kHz stereo flac, 16 kHz wav, 48 kHz wav (and a
    fifth, a zh line with an English word, when `mixed`)."""
    wavs = root / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    soundfile.write(wavs / "en_a.wav", speech_like(1.5, 32000, 1), 32000)
    soundfile.write(wavs / "en_b.flac", speech_like(1.2, 44100, 2, channels=2), 44100)
    soundfile.write(wavs / "zh_a.wav", speech_like(1.8, 16000, 3), 16000)
    soundfile.write(wavs / "zh_b.wav", speech_like(1.0, 48000, 4), 48000)
    lines = [
        f"wavs/en_a.wav|spk1|en|{EN_TEXT}",
        "wavs/en_b.flac|spk1|EN|Hello world, this is a test.",
        f"wavs/zh_a.wav|spk2|zh|{ZH_TEXT}",
        "wavs/zh_b.wav|spk2|ZH|你好，世界。",
    ]
    if mixed:
        soundfile.write(wavs / "mixed.wav", speech_like(1.3, 32000, 5), 32000)
        lines.append(f"wavs/mixed.wav|spk2|zh|{MIXED_TEXT}")
    return write_corpus(root, lines)


def tiny_s2_config():
    from gsv_accel.models.sovits import SoVITSConfig

    return SoVITSConfig(ssl_dim=64, codebook_size=32, inter_channels=16, hidden_channels=16,
                        filter_channels=32, n_layers=1, upsample_initial_channel=64,
                        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]], gin_channels=16,
                        mrte_hidden_channels=16,
                        posterior_layers=1, flow_layers=1, flow_wn_layers=1, ref_enc_hidden=16)


def write_tiny_s2(path: Path) -> Path:
    """A tiny S2 generator with an initialised random codebook, saved as {"weight", "config", "info"}."""
    from gsv_accel.models.sovits import SynthesizerTrn

    torch.manual_seed(0)
    config = tiny_s2_config()
    model = SynthesizerTrn(config)
    state = model.state_dict()
    state["quantizer.vq.layers.0._codebook.inited"].fill_(1.0)
    state["quantizer.vq.layers.0._codebook.embed"].normal_()
    torch.save({"weight": state, "config": {"model": config.to_dict(), "data": {"filter_length": 2048,
                "hop_length": 640, "sampling_rate": 32000}, "train": {"segment_size": 20480}},
                "info": "test"}, path)
    return path


def write_tiny_bert(out: Path) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "!", "?", *ZH_CHARS]
    BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"hubert": write_tiny_hubert(root / "hubert"), "s2": write_tiny_s2(root / "s2.pth"),
            "bert": write_tiny_bert(root / "bert")}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("prepared")
    list_path = good_corpus(root / "corpus", mixed=True)
    out = root / "dataset"
    result = prep.prepare(list_path, out, models["hubert"], s2_pretrained=models["s2"],
                          bert_dir=models["bert"], batch_size=3, val_fraction=0.25)
    return {"list": list_path, "out": out, "result": result}


def rows_by_name(out: Path) -> dict[str, dict]:
    splits = datasets.load_from_disk(str(out))
    rows = {}
    for split in splits.values():
        for row in split:
            rows[row["name"]] = row
    return rows


# --------------------------------------------------------------------------- features


def test_load_from_disk_reads_both_splits_and_meta(prepared):
    splits = datasets.load_from_disk(str(prepared["out"]))
    assert set(splits) == {"train", "validation"}
    assert len(splits["train"]) == 4 and len(splits["validation"]) == 1
    meta = read_meta(prepared["out"])
    assert meta["ssl"]["hidden_size"] == 64 and meta["ssl"]["dtype"] == "float16"
    assert meta["text"]["symbols_version"] == "v2" and meta["text"]["symbols_count"] == 732
    assert meta["audio"]["sampling_rate"] == 32000 and meta["spectrogram"]["hop_length"] == 640
    assert meta["semantic"]["frame_rate"] == "25hz" and meta["bert"]["hidden_size"] == 32
    assert meta["counts"] == {"train": 4, "validation": 1, "rejected": 0}
    assert prepared["result"].counts == meta["counts"]


def test_wav_is_official_int16_mix_of_load_audio(prepared):
    rows = rows_by_name(prepared["out"])
    base = prepared["list"].parent
    for name, row in rows.items():
        audio = load_audio(base / row["path"], 32000)
        peak = np.abs(audio).max()
        # The official 2-get-hubert-wav32k.py formula, written out independently.
        expected = (audio / peak * (0.95 * 0.5 * 32768) + (0.5 * 32768) * audio).astype("int16")
        np.testing.assert_array_equal(np.asarray(row["wav"], np.int16), expected, err_msg=name)
        assert row["num_samples"] == len(audio)
        assert row["duration"] == pytest.approx(len(audio) / 32000)
        frames = SpectrogramExtractor().linear(torch.zeros(len(audio))).shape[-1]
        assert row["spec_frames"] == frames


def test_hubert_features_equal_the_model_on_that_audio(prepared, models):
    from transformers import HubertModel

    model = HubertModel.from_pretrained(str(models["hubert"]), local_files_only=True).eval()
    rows = rows_by_name(prepared["out"])
    base = prepared["list"].parent
    for name, row in rows.items():
        audio = load_audio(base / row["path"], 32000)
        peak = np.abs(audio).max()
        mix = (audio / peak * (0.95 * 0.5 * 1145.14) + (0.5 * 1145.14) * audio).astype(np.float32)
        wav16 = soxr.resample(mix, 32000, 16000, quality="HQ")
        wav16 = np.pad(wav16, (0, max(0, -(-len(mix) // 2) - len(wav16))))[: -(-len(mix) // 2)]
        with torch.no_grad():
            expected = model(torch.from_numpy(np.ascontiguousarray(wav16))[None]).last_hidden_state[0].T
        stored = torch.tensor(row["ssl"], dtype=torch.float32).view(64, -1)
        assert stored.shape == expected.shape == (64, row["ssl_frames"]), name
        torch.testing.assert_close(stored, expected, atol=1e-2, rtol=2e-3, msg=name)
        # HuBERT gives the spectrogram's frame count or one less (the official alignment).
        assert row["spec_frames"] - row["ssl_frames"] in (0, 1)


def test_batched_hubert_equals_one_by_one(models):
    from transformers import HubertModel

    model = HubertModel.from_pretrained(str(models["hubert"]), local_files_only=True).eval()
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 300 for n in (16000, 23456, 9000)]
    batched = prep.hubert_features(model, waves)
    for wave, feat in zip(waves, batched, strict=True):
        single = prep.hubert_features(model, [wave])[0]
        assert feat.shape == single.shape
        torch.testing.assert_close(feat, single, atol=1e-4, rtol=1e-4)
    # Plain zero padding without the masked GroupNorm would not match: the masking matters.
    padded = torch.zeros(3, 23456)
    for i, w in enumerate(waves):
        padded[i, : len(w)] = torch.from_numpy(w)
    with torch.no_grad():
        naive = model(padded).last_hidden_state[2, : batched[2].shape[1]].T
    assert (naive - batched[2]).abs().max() > 1e-3


def test_phones_of_known_zh_and_en_sentences(prepared):
    rows = rows_by_name(prepared["out"])
    for name, text, lang in (("zh_a.wav", ZH_TEXT, "zh"), ("en_a.wav", EN_TEXT, "en")):
        row = rows[name]
        assert row["phone_ids"] == text_to_phone_ids(text, lang, "v2")
        phones, word2ph, norm_text = clean_text(text, lang, "v2")
        assert row["phones"] == phones and row["text"] == norm_text
        assert row["word2ph"] == (word2ph or [])
        assert row["lang"] == lang
    assert rows["en_b.flac"]["lang"] == "en" and rows["zh_b.wav"]["speaker"] == "spk2"


def test_semantic_codes_equal_extract_latent_of_stored_features(prepared, models):
    from gsv_accel.models.sovits import SynthesizerTrn

    torch.manual_seed(0)
    model = SynthesizerTrn(tiny_s2_config())
    payload = torch.load(models["s2"], weights_only=True)
    model.load_state_dict(payload["weight"])
    model.eval()
    for name, row in rows_by_name(prepared["out"]).items():
        ssl = torch.tensor(row["ssl"], dtype=torch.float32).view(1, 64, -1)
        expected = model.extract_latent(ssl)[0, 0]
        assert len(row["semantic"]) == row["ssl_frames"] // 2, name
        assert row["semantic"] == expected.tolist(), name


def test_bert_features_for_zh_and_zeros_for_en(prepared, models):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(models["bert"]), local_files_only=True)
    bert = AutoModelForMaskedLM.from_pretrained(str(models["bert"]), local_files_only=True).eval()
    rows = rows_by_name(prepared["out"])
    row = rows["zh_a.wav"]
    with torch.no_grad():
        hidden = bert(**tokenizer(row["text"], return_tensors="pt"), output_hidden_states=True).hidden_states
    chars = hidden[-3][0, 1:-1]
    expected = torch.cat([chars[i].repeat(n, 1) for i, n in enumerate(row["word2ph"])]).T
    stored = torch.tensor(row["bert"], dtype=torch.float32).view(32, -1)
    assert stored.shape == (32, len(row["phone_ids"]))
    torch.testing.assert_close(stored, expected, atol=5e-3, rtol=2e-3)
    assert rows["en_a.wav"]["bert"] == []

    # A zh line with an English word: BERT features for the Chinese runs, zeros for the English one.
    row = rows["mixed.wav"]
    segments = clean_text_segments(MIXED_TEXT, "zh", "v2")
    assert [s.lang for s in segments] == ["zh", "en", "zh"] and row["word2ph"] == []
    assert row["phone_ids"] == text_to_phone_ids(MIXED_TEXT, "zh", "v2")
    stored = torch.tensor(row["bert"], dtype=torch.float32).view(32, -1)
    start = 0
    for seg in segments:
        block = stored[:, start:start + len(seg.phones)]
        start += len(seg.phones)
        if seg.lang == "en":
            assert not block.any()
            continue
        with torch.no_grad():
            inputs = tokenizer(seg.norm_text, return_tensors="pt")
            hidden = bert(**inputs, output_hidden_states=True).hidden_states
        expected = torch.repeat_interleave(hidden[-3][0, 1:-1], torch.tensor(seg.word2ph), dim=0).T
        torch.testing.assert_close(block, expected, atol=5e-3, rtol=2e-3)
    assert start == stored.shape[1]
    meta = read_meta(prepared["out"])
    splits = datasets.load_from_disk(str(prepared["out"]))
    for split in splits.values():
        view = GSVDataset(split, meta, features=("phones", "bert", "semantic"))
        for i in range(len(view)):
            item = view[i]
            assert item["bert"].shape == (32, item["phones"].numel())
            if view.names[i].startswith("en"):
                assert not item["bert"].any()


# --------------------------------------------------------------------------- rejections


def test_broken_entries_are_rejected_with_reasons_and_good_ones_kept(tmp_path, models, capsys):
    root = tmp_path / "corpus"
    list_path = good_corpus(root)
    good_lines = list_path.read_text(encoding="utf-8").splitlines()[:3]
    wavs = root / "wavs"
    (wavs / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20)
    soundfile.write(wavs / "empty.wav", np.zeros(0, np.float32), 32000)
    soundfile.write(wavs / "silent.wav", np.zeros(32000, np.float32), 32000)
    soundfile.write(wavs / "short.wav", speech_like(0.3, 32000, 5), 32000)
    soundfile.write(wavs / "long.wav", speech_like(55.0, 8000, 6), 8000)
    loud = speech_like(1.0, 32000, 7)
    loud[100] = 3.0
    soundfile.write(wavs / "loud.wav", loud, 32000, subtype="FLOAT")
    for name in ("format.wav", "lang.wav", "notext.wav", "mixed.wav", "dup.wav"):
        soundfile.write(wavs / name, speech_like(1.0, 32000, 8), 32000)
    lines = good_lines + [
        "wavs/missing.wav|spk|en|The file does not exist.",
        "wavs/corrupt.wav|spk|en|Corrupt data.",
        "wavs/empty.wav|spk|en|No samples at all.",
        "wavs/silent.wav|spk|en|Only silence here.",
        "wavs/short.wav|spk|en|Too short.",
        "wavs/long.wav|spk|en|Far too long.",
        "wavs/loud.wav|spk|en|Way too loud.",
        "wavs/format.wav|spk|en",
        "wavs/lang.wav|spk|fr|bonjour",
        "wavs/notext.wav|spk|en|   ",
        "wavs/mixed.wav|spk|zh|###",
        "other/en_a.wav|spk|en|Same file name as line one.",
    ]
    list_path = write_corpus(root, lines)
    with open(list_path, "ab") as f:
        f.write(b"wavs/bad.wav|spk|en|caf\xe9\n")
    out = tmp_path / "out"
    result = prep.prepare(list_path, out, models["hubert"], val_fraction=0.3)
    assert result.counts["train"] + result.counts["validation"] == 3

    rejected = (out / "rejected.tsv").read_text(encoding="utf-8").splitlines()
    assert rejected[0] == "line\tpath\treason_code\treason"
    by_path = {}
    for line in rejected[1:]:
        number, path, code, reason = line.split("\t")
        by_path[path or f"line{number}"] = (code, reason)
    expected = {
        "wavs/missing.wav": "missing", "wavs/corrupt.wav": "unreadable", "wavs/empty.wav": "empty",
        "wavs/silent.wav": "silent", "wavs/short.wav": "too_short", "wavs/long.wav": "too_long",
        "wavs/loud.wav": "peak", "wavs/format.wav": "format", "wavs/lang.wav": "language",
        "wavs/notext.wav": "empty_text", "wavs/mixed.wav": "text", "other/en_a.wav": "duplicate",
        "line16": "encoding",
    }
    assert {p: c for p, (c, _) in by_path.items()} == expected
    assert "not found" in by_path["wavs/missing.wav"][1]
    assert "peak 3.000 > 2.2" in by_path["wavs/loud.wav"][1]
    assert "fr" in by_path["wavs/lang.wav"][1] and "line 12" in by_path["wavs/lang.wav"][1]
    assert "no pronounceable content" in by_path["wavs/mixed.wav"][1]
    assert len(result.rejected) == len(expected)
    kept = rows_by_name(out)
    assert set(kept) == {"en_a.wav", "en_b.flac", "zh_a.wav"}
    assert "semantic" not in next(iter(kept.values())) and "bert" not in next(iter(kept.values()))
    printed = capsys.readouterr().out
    assert "rejected 13" in printed and "too_long" in printed and "rejected.tsv" in printed


def test_nothing_usable_fails_clearly(tmp_path, models):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20)
    list_path = write_corpus(tmp_path, ["corrupt.wav|spk|en|Hello there.", "missing_b.wav|spk|xx|Hi."])
    with pytest.raises(prep.PrepareError, match=r"only 0 usable utterance\(s\) of 2 .*unreadable.*corrupt"):
        prep.prepare(list_path, tmp_path / "out", models["hubert"])
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))
    # No audio file of the list exists: said before any model is loaded.
    list_path = write_corpus(tmp_path, ["missing_a.wav|spk|en|Hello there.", "missing_b.wav|spk|xx|Hi."])
    with pytest.raises(prep.PrepareError, match="none of the 1 audio files exists .*missing_a.wav"):
        prep.prepare(list_path, tmp_path / "out", models["hubert"])
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- atomic output and caching


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_interrupted_prepare_leaves_previous_output_intact(tmp_path, models, monkeypatch):
    list_path = good_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    prep.prepare(list_path, out, models["hubert"])
    before = _snapshot(out)

    def explode(self, batch):
        raise RuntimeError("injected failure in the middle of the HuBERT stage")

    monkeypatch.setattr(prep.ModelStage, "__call__", explode)
    with pytest.raises(RuntimeError, match="injected failure"):
        prep.prepare(list_path, out, models["hubert"], force=True)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []
    assert len(datasets.load_from_disk(str(out))["train"]) == 3


def test_half_done_swap_is_recovered(tmp_path):
    out = tmp_path / "out"
    backup = tmp_path / ".out.old-123"
    backup.mkdir()
    (backup / "gsv_meta.json").write_text("{}")
    stale = tmp_path / ".out.tmp-456"
    stale.mkdir()
    prep.recover_interrupted(out)
    assert (out / "gsv_meta.json").read_text() == "{}"
    assert not backup.exists() and not stale.exists()


def test_refuses_to_replace_a_foreign_folder(tmp_path, models):
    list_path = good_corpus(tmp_path / "corpus")
    out = tmp_path / "somewhere"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(prep.PrepareError, match="not a prepared gsv_accel dataset"):
        prep.prepare(list_path, out, models["hubert"])
    assert (out / "precious.txt").read_text() == "keep me"


def test_rerun_reuses_output_resplits_and_notices_changed_audio(tmp_path, models):
    list_path = good_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    first = prep.prepare(list_path, out, models["hubert"], val_fraction=0.25)
    assert not first.reused
    arrow_files = {p: p.stat().st_mtime_ns for p in out.rglob("*.arrow")}

    again = prep.prepare(list_path, out, models["hubert"], val_fraction=0.25)
    assert again.reused and again.counts == first.counts
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.arrow")} == arrow_files

    resplit = prep.prepare(list_path, out, models["hubert"], val_fraction=0.5)
    assert resplit.reused and resplit.counts == {"train": 2, "validation": 2, "rejected": 0}
    assert read_meta(out)["split"]["val_fraction"] == 0.5

    audio = tmp_path / "corpus" / "wavs" / "zh_b.wav"
    soundfile.write(audio, speech_like(1.0, 48000, 9), 48000)
    os.utime(audio, ns=(audio.stat().st_atime_ns, audio.stat().st_mtime_ns + 10**9))
    changed = prep.prepare(list_path, out, models["hubert"], val_fraction=0.5)
    assert not changed.reused


# --------------------------------------------------------------------------- split


def test_split_is_deterministic_and_never_empty():
    names = [f"utt_{i:03d}.wav" for i in range(50)]
    train, val = prep.split_names(names, 0.1, None, seed=1)
    assert len(val) == 5 and sorted(train + val) == list(range(50))
    assert prep.split_names(names, 0.1, None, seed=1) == (train, val)
    assert prep.split_names(names, 0.1, None, seed=2) != (train, val)
    # Independent of order: the same names end up in validation after shuffling the list.
    shuffled = names[::-1]
    _, val_shuffled = prep.split_names(shuffled, 0.1, None, seed=1)
    assert {shuffled[i] for i in val_shuffled} == {names[i] for i in val}
    assert [len(s) for s in prep.split_names(names[:2], 0.01, None, 0)] == [1, 1]
    assert [len(s) for s in prep.split_names(names[:2], 0.99, None, 0)] == [1, 1]
    with pytest.raises(prep.PrepareError, match="at least 2"):
        prep.split_names(names[:1], 0.1, None, 0)


def test_val_list_names_the_validation_utterances(tmp_path, capsys):
    names = ["a.wav", "b.wav", "c.wav"]
    val_list = tmp_path / "val.txt"
    val_list.write_text("wavs/b.wav|spk|en|text\nnot_there.wav\n", encoding="utf-8")
    assert prep.split_names(names, 0.1, val_list, 0) == ([0, 2], [1])
    assert "not_there.wav" in capsys.readouterr().out
    val_list.write_text("a.wav\nb.wav\nc.wav\n", encoding="utf-8")
    with pytest.raises(prep.PrepareError, match="both must be at least 1"):
        prep.split_names(names, 0.1, val_list, 0)


# --------------------------------------------------------------------------- command line


def test_cli_helpers_parse_and_run(prepared, models, tmp_path, capsys):
    parser = prep.add_prepare_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--list", str(prepared["list"]), "--out", str(prepared["out"]),
                              "--hubert", str(models["hubert"]), "--s2-pretrained", str(models["s2"]),
                              "--bert", str(models["bert"]), "--batch-size", "3", "--val-fraction", "0.25"])
    assert args.num_proc == 1 and args.device == "cpu" and args.seed == 1234
    assert prep.run_prepare(args) == 0
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["--list", "x", "--out", "y", "--hubert", "z", "--val-fraction", "0.2",
                           "--val-list", "v"])
    bad = ["prepare", "--list", str(tmp_path / "nope.list"), "--out", str(tmp_path / "o"),
           "--hubert", str(models["hubert"])]
    with pytest.raises(prep.PrepareError, match="nope.list: not found"):
        prep.run_prepare(parser.parse_args(bad[1:]))
    assert cli.main(bad) == 2  # the command line reports it on one line (tests/test_cli_errors.py)
    assert "nope.list: not found" in capsys.readouterr().err


def test_num_proc_gives_the_same_rows(prepared, models, tmp_path):
    out = tmp_path / "out"
    prep.prepare(prepared["list"], out, models["hubert"], num_proc=2, batch_size=1, val_fraction=0.25)
    ours, reference = rows_by_name(out), rows_by_name(prepared["out"])
    assert set(ours) == set(reference)
    for name, row in ours.items():
        assert row["wav"] == reference[name]["wav"] and row["phone_ids"] == reference[name]["phone_ids"]
        np.testing.assert_allclose(row["ssl"], reference[name]["ssl"], atol=2e-3, rtol=2e-3)
    meta = json.loads((out / "gsv_meta.json").read_text())
    assert meta["semantic"] is None and meta["bert"] is None


def test_dataset_meta_matches_default_spectrogram_config(prepared):
    from gsv_accel.data.dataset import check_dataset_compatible

    meta = read_meta(prepared["out"])
    check_dataset_compatible(meta, {"version": "v2", "ssl_dim": 64}, SpectrogramConfig())


def test_official_s2_export_gives_the_official_codes(reference_file):
    """The loading path of --s2-pretrained on a file written by the official code: its semantic codes
    equal those the official `extract_latent` computed (reference fixture)."""
    from safetensors.torch import load_file

    io = load_file(str(reference_file("s2_small_v2_io.safetensors")))
    model = prep.load_s2_model(reference_file("s2_small_v2_export.pth"), 768, torch.device("cpu"))
    codes = prep.semantic_codes(model, [io["ssl"][0]])
    assert codes[0].tolist() == io["codes"][0, 0].tolist()
    with pytest.raises(prep.PrepareError, match="768-dim SSL features but the HuBERT model gives 64"):
        prep.load_s2_model(reference_file("s2_small_v2_export.pth"), 64, torch.device("cpu"))
