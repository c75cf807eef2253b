"""`gsv-accel import-gsv`: an official experiment folder (built by the test in the official layout from
a dataset that `prepare` made) gives the same columns and values; broken entries are rejected with
reasons; `.pt` files are read without executing pickled code."""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile
import torch

from gsv_accel import cli
from gsv_accel.data import prepare as prep
from gsv_accel.data.dataset import GSVDataset, read_meta
from gsv_accel.data.import_gsv import add_import_arguments, import_gsv, run_import
from scripts.make_tiny_hubert import write_tiny_hubert

BERT_DIM = 1024


class Exploit:
    """Pickles into a call of `print`: a weights-only load must refuse it."""

    def __reduce__(self):
        return (print, ("this must never run",))


def tone(seconds: float, seed: int, rate: int = 32000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    sig = np.sin(2 * np.pi * (150 + 20 * seed) * t) * (0.6 + 0.3 * np.sin(2 * np.pi * 2 * t))
    return (0.7 * sig).astype(np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    wavs = root / "corpus" / "wavs"
    wavs.mkdir(parents=True)
    soundfile.write(wavs / "zh_1.wav", tone(1.4, 1), 32000)
    soundfile.write(wavs / "en_1.wav", tone(1.1, 2), 32000)
    soundfile.write(wavs / "zh_2.wav", tone(1.2, 3), 32000)
    list_path = root / "corpus" / "corpus.list"
    list_path.write_text("wavs/zh_1.wav|alice|zh|今天天气很好。\n"
                         "wavs/en_1.wav|bob|en|Hello there, my friend.\n"
                         "wavs/zh_2.wav|alice|zh|你好，世界。\n", encoding="utf-8")
    out = root / "prepared"
    prep.prepare(list_path, out, write_tiny_hubert(root / "hubert"), val_fraction=0.3)
    rows = {}
    for split in datasets.load_from_disk(str(out)).values():
        rows.update({row["name"]: row for row in split})
    return {"root": root, "list": list_path, "out": out, "rows": rows}


def write_official(exp: Path, rows: dict[str, dict], seed: int = 0) -> dict[str, dict]:
    """The files the official 1-get-text / 2-get-hubert-wav32k / 3-get-semantic scripts write."""
    rng = np.random.default_rng(seed)
    for sub in ("3-bert", "4-cnhubert", "5-wav32k"):
        (exp / sub).mkdir(parents=True, exist_ok=True)
    text_lines, semantic_lines, extra = [], ["item_name\tsemantic_audio"], {}
    for name, row in rows.items():
        word2ph = str(row["word2ph"]) if row["lang"] == "zh" else "None"
        text_lines.append(f"{name}\t{' '.join(row['phones'])}\t{word2ph}\t{row['text']}")
        soundfile.write(exp / "5-wav32k" / name, np.asarray(row["wav"], np.int16), 32000, subtype="PCM_16")
        ssl = torch.tensor(row["ssl"], dtype=torch.float32).view(1, 64, -1)
        torch.save(ssl, exp / "4-cnhubert" / f"{name}.pt")
        codes = rng.integers(0, 1024, row["ssl_frames"] // 2).tolist()
        semantic_lines.append(f"{name}\t{' '.join(map(str, codes))}")
        bert = None
        if row["lang"] == "zh":
            bert = torch.randn(BERT_DIM, len(row["phone_ids"])).half()
            torch.save(bert, exp / "3-bert" / f"{name}.pt")
        extra[name] = {"semantic": codes, "bert": bert}
    (exp / "2-name2text.txt").write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    (exp / "6-name2semantic.tsv").write_text("\n".join(semantic_lines), encoding="utf-8")
    return extra


def imported_rows(out: Path) -> dict[str, dict]:
    rows = {}
    for split in datasets.load_from_disk(str(out)).values():
        rows.update({row["name"]: row for row in split})
    return rows


def test_import_gives_the_same_columns_and_values(prepared, tmp_path):
    exp = tmp_path / "logs" / "myexp"
    extra = write_official(exp, prepared["rows"])
    out = tmp_path / "imported"
    result = import_gsv(exp, out, list_path=prepared["list"], hubert_name="tiny_hubert", val_fraction=0.3)
    assert result.counts["rejected"] == 0

    ours = datasets.load_from_disk(str(out))["train"]
    reference = datasets.load_from_disk(str(prepared["out"]))["train"]
    assert ours.column_names == reference.column_names + ["semantic", "bert"]
    for column, feature in reference.features.items():
        assert ours.features[column] == feature, column

    rows = imported_rows(out)
    assert set(rows) == set(prepared["rows"])
    for name, ref in prepared["rows"].items():
        row = rows[name]
        for column in ("wav", "ssl", "ssl_frames", "phone_ids", "phones", "word2ph", "text", "num_samples",
                       "spec_frames", "speaker", "lang"):
            assert row[column] == ref[column], (name, column)
        assert row["semantic"] == extra[name]["semantic"]
        if extra[name]["bert"] is None:
            assert row["bert"] == []
        else:
            assert row["bert"] == extra[name]["bert"].reshape(-1).float().tolist()
        assert row["path"] == f"5-wav32k/{name}"

    meta = read_meta(out)
    assert meta["source"]["kind"] == "gsv_exp" and meta["ssl"]["hidden_size"] == 64
    assert meta["ssl"]["model"] == "tiny_hubert" and meta["bert"]["hidden_size"] == BERT_DIM
    assert meta["semantic"]["frame_rate"] == "25hz"
    view = GSVDataset(datasets.load_from_disk(str(out))["train"], meta, features=GSVDataset.FEATURES)
    item = view[0]
    assert item["bert"].shape == (BERT_DIM, item["phones"].numel()) and item["ssl"].shape[0] == 64


def test_without_list_speaker_is_the_folder_and_zh_comes_from_bert(prepared, tmp_path):
    exp = tmp_path / "myexp"
    write_official(exp, prepared["rows"])
    (exp / "6-name2semantic.tsv").unlink()
    import_gsv(exp, tmp_path / "out", val_fraction=0.3)
    rows = imported_rows(tmp_path / "out")
    assert {r["speaker"] for r in rows.values()} == {"myexp"}
    assert rows["zh_1.wav"]["lang"] == "zh" and rows["en_1.wav"]["lang"] == ""
    assert "semantic" not in rows["zh_1.wav"]
    assert read_meta(tmp_path / "out")["semantic"] is None


def test_broken_official_entries_are_rejected_with_reasons(prepared, tmp_path, capsys):
    exp = tmp_path / "exp"
    good = prepared["rows"]
    write_official(exp, good)
    template = good["en_1.wav"]
    lines = (exp / "2-name2text.txt").read_text(encoding="utf-8").splitlines()
    semantic = (exp / "6-name2semantic.tsv").read_text(encoding="utf-8").splitlines()

    def add(name: str, phones: str | None = None, wav=None, ssl=None, bert=None, codes=True, fields=None):
        lines.append(fields if fields is not None else
                     f"{name}\t{phones or ' '.join(template['phones'])}\tNone\t{template['text']}")
        if wav is not None:
            soundfile.write(exp / "5-wav32k" / name, wav, 32000, subtype="PCM_16")
        if ssl is not None:
            torch.save(ssl, exp / "4-cnhubert" / f"{name}.pt")
        if bert is not None:
            torch.save(bert, exp / "3-bert" / f"{name}.pt")
        if codes:
            count = ssl.shape[-1] // 2 if isinstance(ssl, torch.Tensor) else 3
            semantic.append(f"{name}\t{' '.join(['7'] * count)}")

    wav = np.asarray(template["wav"], np.int16)
    ssl = torch.tensor(template["ssl"], dtype=torch.float32).view(1, 64, -1)
    add("no_wav.wav", ssl=ssl)
    add("no_ssl.wav", wav=wav)
    add("exploit.wav", wav=wav, ssl={"x": Exploit()})
    add("not_tensor.wav", wav=wav, ssl={"x": torch.zeros(2)})
    add("short.wav", wav=wav[:9000], ssl=ssl[..., :14])
    add("mismatch.wav", wav=wav, ssl=ssl[..., :20])
    add("narrow.wav", wav=wav, ssl=ssl[:, :32])
    add("nan.wav", wav=wav, ssl=torch.full_like(ssl, float("nan")))
    add("phones.wav", phones="HH AH0 QQQ", wav=wav, ssl=ssl)
    add("bert.wav", wav=wav, ssl=ssl, bert=torch.zeros(BERT_DIM, 3))
    add("codes.wav", wav=wav, ssl=ssl, codes=False)
    add("few_codes.wav", wav=wav, ssl=ssl, codes=False)
    semantic.append("few_codes.wav\t1 2 3")
    add("fields.wav", fields="fields.wav\tonly three\tfields")
    add("silent.wav", wav=np.zeros_like(wav), ssl=ssl)
    (exp / "2-name2text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (exp / "6-name2semantic.tsv").write_text("\n".join(semantic), encoding="utf-8")

    result = import_gsv(exp, tmp_path / "out", val_fraction=0.3)
    rejected = (tmp_path / "out" / "rejected.tsv").read_text(encoding="utf-8").splitlines()[1:]
    codes = {line.split("\t")[1]: line.split("\t")[2] for line in rejected}
    reasons = {line.split("\t")[1]: line.split("\t")[3] for line in rejected}
    assert codes == {
        "no_wav.wav": "missing", "no_ssl.wav": "ssl", "exploit.wav": "unreadable",
        "not_tensor.wav": "unreadable",
        "short.wav": "too_short", "mismatch.wav": "ssl", "narrow.wav": "ssl", "nan.wav": "features",
        "phones.wav": "unknown_phones", "bert.wav": "bert", "codes.wav": "semantic",
        "few_codes.wav": "semantic", "fields.wav": "format",
        "silent.wav": "silent",
    }
    assert "cannot be read safely" in reasons["exploit.wav"]
    assert "'QQQ'" in reasons["phones.wav"]
    assert "width 32" in reasons["narrow.wav"]
    assert "3 semantic codes for" in reasons["few_codes.wav"]
    assert "this must never run" not in capsys.readouterr().out
    assert set(imported_rows(tmp_path / "out")) == set(good)
    assert result.counts["rejected"] == len(codes)


def test_not_an_official_folder_fails_clearly(tmp_path):
    with pytest.raises(prep.PrepareError, match="2-name2text.txt"):
        import_gsv(tmp_path, tmp_path / "out")


def test_cli_helpers(prepared, tmp_path, capsys):
    exp = tmp_path / "exp"
    write_official(exp, prepared["rows"])
    parser = add_import_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--exp-dir", str(exp), "--out", str(tmp_path / "out"), "--val-fraction", "0.3"])
    assert run_import(args) == 0
    assert run_import(args) == 0
    assert "up to date" in capsys.readouterr().out
    bad = ["import-gsv", "--exp-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]
    with pytest.raises(prep.PrepareError, match="nothing: not found"):
        run_import(parser.parse_args(bad[1:]))
    assert cli.main(bad) == 2  # the command line reports it on one line (tests/test_cli_errors.py)
    assert "--exp-dir" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    with pytest.raises(prep.PrepareError, match="2-name2text.txt"):
        run_import(parser.parse_args(bad[1:]))
