"""Speaker-verification vectors (`sv_emb`, v2Pro/v2ProPlus): `prepare --sv`, `import-gsv` of `7-sv_cn/`,
the reader, the collate and the compatibility check. The encoder is the tiny seeded demo ERes2NetV2
(`demo/tiny_sv`, 1280 values instead of the released model's 20480)."""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import torch

from gsv_accel.audio import SpectrogramConfig, load_audio
from gsv_accel.data import prepare as prep
from gsv_accel.data.dataset import DatasetCompatibilityError, S2Collate, load_prepared, read_meta
from gsv_accel.data.import_gsv import import_gsv
from gsv_accel.models.sv import SpeakerEncoder
from scripts.make_tiny_hubert import write_tiny_hubert
from tests.data.test_import_gsv import write_official
from tests.data.test_prepare import speech_like, write_corpus

TINY_SV = Path(__file__).resolve().parents[2] / "demo" / "tiny_sv" / "eres2netv2_tiny.safetensors"
TINY_SV_DIM = 1280
OFFICIAL_SV_DIM = 20480


def rows_by_name(out: Path) -> dict[str, dict]:
    rows = {}
    for split in datasets.load_from_disk(str(out)).values():
        rows.update({row["name"]: row for row in split})
    return rows


@pytest.fixture(scope="module")
def sv_prepared(tmp_path_factory):
    """`gsv-accel prepare --sv` (through the command-line helpers) on three good clips and a corrupt one."""
    root = tmp_path_factory.mktemp("sv")
    wavs = root / "corpus" / "wavs"
    wavs.mkdir(parents=True)
    soundfile.write(wavs / "a.wav", speech_like(1.5, 32000, 1), 32000)
    soundfile.write(wavs / "b.wav", speech_like(1.1, 48000, 2), 48000)
    soundfile.write(wavs / "c.wav", speech_like(1.3, 16000, 3), 16000)
    (wavs / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 20)
    list_path = write_corpus(root / "corpus", [
        "wavs/a.wav|spk|en|Hello there, my friend.",
        "wavs/broken.wav|spk|en|This file is corrupt.",
        "wavs/b.wav|spk|zh|你好，世界。",
        "wavs/c.wav|spk|en|She counted the birds.",
    ])
    hubert = write_tiny_hubert(root / "hubert")
    out = root / "dataset"
    args = prep.add_prepare_arguments(argparse.ArgumentParser()).parse_args(
        ["--list", str(list_path), "--out", str(out), "--hubert", str(hubert), "--sv", str(TINY_SV),
         "--batch-size", "2", "--val-fraction", "0.34"])
    assert args.sv == TINY_SV
    assert prep.run_prepare(args) == 0
    return {"root": root, "list": list_path, "out": out, "hubert": hubert, "args": args}


def test_prepare_sv_equals_the_encoder_on_the_normalised_32k_audio(sv_prepared):
    out = sv_prepared["out"]
    rows = rows_by_name(out)
    assert set(rows) == {"a.wav", "b.wav", "c.wav"}
    encoder = SpeakerEncoder.from_pretrained(TINY_SV)
    assert encoder.embedding_dim == TINY_SV_DIM
    for name, row in rows.items():
        # What the official 2-get-hubert-wav32k.py writes to 5-wav32k, and 2-get-sv.py reads back
        # (torchaudio.load: int16 / 32768), written out independently of the pipeline.
        audio = load_audio(sv_prepared["list"].parent / row["path"], 32000)
        peak = np.abs(audio).max()
        int16 = (audio / peak * (0.95 * 0.5 * 32768) + (0.5 * 32768) * audio).astype("int16")
        expected = encoder.embed_32k(torch.from_numpy(int16.astype(np.float32) / 32768))[0]
        stored = torch.tensor(row["sv_emb"], dtype=torch.float32)
        assert stored.shape == (TINY_SV_DIM,), name
        torch.testing.assert_close(stored, expected, atol=1e-5, rtol=1e-5, msg=name)
    features = datasets.load_from_disk(str(out))["train"].features
    assert features["sv_emb"] == datasets.List(datasets.Value("float32"))

    meta = read_meta(out)
    assert meta["sv"]["embedding_dim"] == TINY_SV_DIM and meta["sv"]["model"] == TINY_SV.name
    assert meta["sv"]["model_stamp"] == [TINY_SV.stat().st_size, TINY_SV.stat().st_mtime_ns]
    rejected = (out / "rejected.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert [line.split("\t")[1:3] for line in rejected] == [["wavs/broken.wav", "unreadable"]]


def test_reader_and_collate_carry_sv_emb(sv_prepared):
    config = {"version": "v2Pro", "ssl_dim": 64, "sv_dim": TINY_SV_DIM}
    data = load_prepared(sv_prepared["out"], model_config=config, spectrogram_config=SpectrogramConfig())
    rows = rows_by_name(sv_prepared["out"])
    view = data.view("train")
    items = [view[i] for i in range(len(view))]
    for item in items:
        assert item["sv_emb"].dtype == torch.float32 and item["sv_emb"].shape == (TINY_SV_DIM,)
        np.testing.assert_array_equal(item["sv_emb"].numpy(), np.asarray(rows[item["name"]]["sv_emb"],
                                                                          np.float32))
    batch = S2Collate()(items)
    assert batch["sv_emb"].shape == (len(items), TINY_SV_DIM) and batch["sv_emb"].dtype == torch.float32
    for row, name in enumerate(batch["names"]):  # in the collate's (length-sorted) order
        assert torch.equal(batch["sv_emb"][row], next(it for it in items if it["name"] == name)["sv_emb"])
    # A v2 view of the same dataset still works; S1-style views carry it too, and ignore it.
    assert "sv_emb" in data.view("train", ("phones",))[0]
    with pytest.raises(DatasetCompatibilityError, match=r"model\.sv_dim") as err:
        load_prepared(sv_prepared["out"], model_config={"version": "v2ProPlus", "ssl_dim": 64})
    assert str(TINY_SV_DIM) in str(err.value) and str(OFFICIAL_SV_DIM) in str(err.value)


def test_bad_sv_model_fails_clearly(tmp_path, sv_prepared):
    bogus = tmp_path / "not_sv.ckpt"
    torch.save({"weight": torch.zeros(3)}, bogus)
    with pytest.raises(prep.PrepareError, match="speaker-verification model .*not_sv.ckpt"):
        prep.prepare(sv_prepared["list"], tmp_path / "out", sv_prepared["hubert"], sv_model=bogus)
    assert not (tmp_path / "out").exists()


def test_import_gsv_reads_7_sv_cn_exactly(sv_prepared, tmp_path, capsys):
    exp = tmp_path / "logs" / "exp"
    source = rows_by_name(sv_prepared["out"])
    write_official(exp, source)

    # A v2 folder (no 7-sv_cn): no column, and a v2Pro config refuses it, saying what to do.
    import_gsv(exp, tmp_path / "v2", val_fraction=0.34)
    assert "sv_emb" not in next(iter(rows_by_name(tmp_path / "v2").values()))
    assert read_meta(tmp_path / "v2")["sv"] is None
    with pytest.raises(DatasetCompatibilityError) as err:
        load_prepared(tmp_path / "v2", model_config={"version": "v2Pro", "ssl_dim": 64})
    message = str(err.value)
    assert "gsv-accel prepare --sv <ERes2NetV2 checkpoint" in message and "7-sv_cn/" in message
    assert "model.version v2Pro" in message

    # The official files: (1, 20480) tensors saved with torch.save (one in fp16, as is_half writes it).
    (exp / "7-sv_cn").mkdir()
    generator = torch.Generator().manual_seed(5)
    embeddings = {}
    for i, name in enumerate(sorted(source)):
        emb = torch.randn(1, OFFICIAL_SV_DIM, generator=generator)
        if i == 0:
            emb = emb.half()
        torch.save(emb, exp / "7-sv_cn" / f"{name}.pt")
        embeddings[name] = emb
    result = import_gsv(exp, tmp_path / "pro", val_fraction=0.34)
    assert result.counts["rejected"] == 0
    rows = rows_by_name(tmp_path / "pro")
    for name, emb in embeddings.items():
        stored = np.asarray(rows[name]["sv_emb"], np.float32)
        np.testing.assert_array_equal(stored, emb[0].float().numpy())
    meta = read_meta(tmp_path / "pro")
    assert meta["sv"]["embedding_dim"] == OFFICIAL_SV_DIM
    data = load_prepared(tmp_path / "pro", model_config={"version": "v2Pro", "ssl_dim": 64})
    view = data.view("train")
    batch = S2Collate()([view[i] for i in range(len(view))])
    assert batch["sv_emb"].shape == (len(view), OFFICIAL_SV_DIM)

    # One utterance without its file, one with a file of another width: reported like other features.
    missing, narrow = sorted(source)[:2]
    (exp / "7-sv_cn" / f"{missing}.pt").unlink()
    torch.save(torch.zeros(1, 512), exp / "7-sv_cn" / f"{narrow}.pt")
    extra = dict(source)
    for copy in ("copy_1.wav", "copy_2.wav"):  # enough good rows left to split
        extra[copy] = dict(source[missing], name=copy)
        torch.save(torch.randn(1, OFFICIAL_SV_DIM), exp / "7-sv_cn" / f"{copy}.pt")
    write_official(exp, extra)
    result = import_gsv(exp, tmp_path / "broken", val_fraction=0.34)
    lines = (tmp_path / "broken" / "rejected.tsv").read_text(encoding="utf-8").splitlines()[1:]
    reasons = {line.split("\t")[1]: (line.split("\t")[2], line.split("\t")[3]) for line in lines}
    assert reasons[missing][0] == "sv" and f"7-sv_cn/{missing}.pt not found" in reasons[missing][1]
    assert reasons[narrow][0] == "sv" and "width 512" in reasons[narrow][1]
    assert result.counts["rejected"] == 2
    assert "sv" in capsys.readouterr().out


def test_prepare_sv_is_cached_and_fingerprinted(sv_prepared, capsys):
    # Last in this file: it rewrites the shared output (and leaves it with the column again).
    args = sv_prepared["args"]
    arrow = {p: p.stat().st_mtime_ns for p in sv_prepared["out"].rglob("*.arrow")}
    assert prep.run_prepare(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in sv_prepared["out"].rglob("*.arrow")} == arrow
    # Without --sv the inputs differ: a fresh dataset, without the column.
    result = prep.prepare(sv_prepared["list"], sv_prepared["out"], sv_prepared["hubert"], val_fraction=0.34)
    assert not result.reused
    assert "sv_emb" not in next(iter(rows_by_name(sv_prepared["out"]).values()))
    assert read_meta(sv_prepared["out"])["sv"] is None
    # Back with --sv: recomputed (the features fingerprint covers the SV model file).
    assert prep.run_prepare(args) == 0
    assert read_meta(sv_prepared["out"])["sv"]["embedding_dim"] == TINY_SV_DIM
