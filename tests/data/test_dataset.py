"""Loading a prepared dataset: the torch view, the S2 collate (shapes, padding, official alignment),
worker processes, and the compatibility check. The dataset is written directly (synthetic features,
no models) with the same writer `prepare` uses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gsv_accel.audio import SpectrogramConfig, SpectrogramExtractor
from gsv_accel.data import prepare as prep
from gsv_accel.data.dataset import (
    META_FILE,
    DatasetCompatibilityError,
    GSVDataset,
    S2Collate,
    align_ssl,
    batch_spectrogram,
    check_dataset_compatible,
    load_prepared,
    read_meta,
    spectrogram_frames,
)
from gsv_accel.data.sampler import LengthBucketBatchSampler

SSL_DIM = 8
BERT_DIM = 6
CFG = SpectrogramConfig()


def synthetic_rows(count: int = 6, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        samples = int(rng.integers(20000, 60000))
        frames = spectrogram_frames(samples, CFG)
        ssl_frames = frames - (i % 2)  # HuBERT: the spectrogram's frame count or one less
        n_phones = int(rng.integers(3, 12))
        zh = i % 3 == 0
        rows.append({
            "name": f"utt_{i}.wav", "speaker": "spk", "lang": "zh" if zh else "en", "text": f"text {i}",
            "phones": ["a"] * n_phones, "phone_ids": rng.integers(1, 700, n_phones).astype(np.int16),
            "word2ph": np.ones(n_phones, np.int16), "path": f"wavs/utt_{i}.wav", "line": i + 1,
            "duration": samples / 32000, "num_samples": samples, "spec_frames": frames,
            "wav": (rng.standard_normal(samples) * 4000).clip(-32768, 32767).astype(np.int16),
            "ssl_frames": ssl_frames, "ssl": rng.standard_normal(SSL_DIM * ssl_frames).astype(np.float16),
            "semantic": rng.integers(0, 1024, ssl_frames // 2).astype(np.int16),
            "bert": (rng.standard_normal(BERT_DIM * n_phones).astype(np.float16) if zh
                     else np.zeros(0, np.float16)),
        })
    return rows


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    import datasets

    out = tmp_path_factory.mktemp("ds") / "prepared"
    rows = synthetic_rows()
    schema = prep.stage_features("entry", "text", "audio", "ssl", "semantic", "bert")
    schema = datasets.Features({k: v for k, v in schema.items() if k in prep.SAVED_COLUMNS})
    table = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in schema}, features=schema)
    meta = prep.build_meta(
        source={"kind": "test", "path": str(out)}, spec_cfg=CFG, version="v2",
        ssl={"model": "synthetic", "hidden_size": SSL_DIM},
        semantic={"frame_rate": "25hz", "codebook_size": 1024, "s2_model": "synthetic"},
        bert={"model": "synthetic", "hidden_size": BERT_DIM}, fingerprint={"features": "x", "split": "y"})
    tmp = prep.new_temp_dir(out)
    prep.save_dataset(tmp, table, meta, [], 0.34, None, seed=0)
    prep.replace_dir(tmp, out)
    return out, {r["name"]: r for r in rows}


def test_view_returns_the_stored_values(saved):
    out, rows = saved
    data = load_prepared(out)
    for split in ("train", "validation"):
        view = data.view(split, features=GSVDataset.FEATURES)
        assert len(view) == len(data.splits[split])
        for i in range(len(view)):
            item = view[i]
            row = rows[item["name"]]
            assert view.lengths[i] == row["spec_frames"] == item["spec_frames"]
            np.testing.assert_array_equal(item["ssl"].numpy(),
                                          row["ssl"].astype(np.float32).reshape(SSL_DIM, -1))
            assert item["ssl"].dtype == torch.float32 and item["ssl"].shape == (SSL_DIM, row["ssl_frames"])
            np.testing.assert_array_equal(item["wav"].numpy()[0], row["wav"].astype(np.float32) / 32768)
            assert item["phones"].dtype == torch.long
            assert item["phones"].tolist() == row["phone_ids"].tolist()
            assert item["semantic"].tolist() == row["semantic"].tolist()
            if row["lang"] == "zh":
                np.testing.assert_array_equal(item["bert"].numpy(),
                                              row["bert"].astype(np.float32).reshape(BERT_DIM, -1))
            else:
                assert item["bert"].shape == (BERT_DIM, len(row["phone_ids"])) and not item["bert"].any()


def test_view_of_a_selected_or_shuffled_split(saved):
    out, rows = saved
    data = load_prepared(out)
    train = data.splits["train"]
    picked = train.shuffle(seed=3).select([2, 0])
    view = GSVDataset(picked, data.meta)
    assert view.names == [picked[0]["name"], picked[1]["name"]]
    assert view[1]["phones"].tolist() == rows[view.names[1]]["phone_ids"].tolist()


def test_requesting_absent_features_names_the_flag(saved):
    out, _ = saved
    data = load_prepared(out)
    bare = data.splits["train"].remove_columns(["semantic", "bert"])
    with pytest.raises(DatasetCompatibilityError, match="--s2-pretrained"):
        GSVDataset(bare, data.meta, features=("semantic",))
    with pytest.raises(ValueError, match="unknown feature"):
        GSVDataset(bare, data.meta, features=("mel",))


def test_align_ssl_repeats_the_last_frame_or_trims():
    ssl = torch.arange(12, dtype=torch.float32).view(2, 6)
    assert torch.equal(align_ssl(ssl, 6), ssl)
    padded = align_ssl(ssl, 8)
    assert padded.shape == (2, 8) and torch.equal(padded[:, 6:], ssl[:, 5:6].expand(2, 2))
    assert torch.equal(align_ssl(ssl, 4), ssl[:, :4])


def test_s2_collate_shapes_padding_and_official_alignment(saved):
    out, rows = saved
    view = load_prepared(out).view("train")
    items = [view[i] for i in range(len(view))]
    batch = S2Collate(CFG)(items)
    frames = [it["spec_frames"] for it in items]
    padded = 2 * (max(frames) // 2 + 1)
    size = len(items)
    assert batch["ssl"].shape == (size, SSL_DIM, padded)
    assert batch["spec"].shape == (size, 1025, padded)
    assert batch["wav"].shape == (size, 1, max(it["wav"].shape[-1] for it in items))
    assert batch["text"].shape == (size, max(it["phones"].numel() for it in items))
    assert batch["text"].dtype == torch.long
    # Ordered by decreasing spectrogram length, like the official collate.
    assert batch["spec_lengths"].tolist() == sorted(frames, reverse=True)
    assert torch.equal(batch["ssl_lengths"], batch["spec_lengths"])
    extractor = SpectrogramExtractor(CFG)
    for row_index, name in enumerate(batch["names"]):
        item = next(it for it in items if it["name"] == name)
        n, length = item["spec_frames"], item["wav"].shape[-1]
        assert batch["wav_lengths"][row_index] == length
        assert batch["text_lengths"][row_index] == item["phones"].numel()
        torch.testing.assert_close(batch["spec"][row_index, :, :n], extractor.linear(item["wav"][0]))
        assert not batch["spec"][row_index, :, n:].any()
        ssl = batch["ssl"][row_index]
        torch.testing.assert_close(ssl[:, : item["ssl"].shape[1]], item["ssl"])
        if item["ssl"].shape[1] < n:  # one frame short: the last frame is repeated (official fix-up)
            torch.testing.assert_close(ssl[:, n - 1], item["ssl"][:, -1])
        assert not ssl[:, n:].any()
        assert torch.equal(batch["wav"][row_index, 0, :length], item["wav"][0])
        assert not batch["wav"][row_index, 0, length:].any()
        assert batch["text"][row_index, : item["phones"].numel()].tolist() == item["phones"].tolist()
        assert not batch["text"][row_index, item["phones"].numel():].any()
    assert set(batch["names"]) == {it["name"] for it in items} and rows


def test_spectrogram_on_the_device_equals_the_collate(saved):
    out, _ = saved
    view = load_prepared(out).view("train")
    items = [view[i] for i in range(len(view))]
    with_spec = S2Collate(CFG)(items)
    without = S2Collate(CFG, compute_spec=False)(items)
    assert without["spec"] is None
    assert torch.equal(without["spec_lengths"], with_spec["spec_lengths"])
    spec = batch_spectrogram(SpectrogramExtractor(CFG), without["wav"], without["wav_lengths"],
                             frames=without["ssl"].shape[-1])
    torch.testing.assert_close(spec, with_spec["spec"])


def test_dataloader_with_workers_and_the_bucket_sampler(saved):
    out, _ = saved
    view = load_prepared(out).view("train")
    sampler = LengthBucketBatchSampler(view.lengths, 2, boundaries=[1, 100, 200], shuffle=False)
    expected = [S2Collate(CFG)([view[i] for i in batch]) for batch in sampler]
    loader = torch.utils.data.DataLoader(view, batch_sampler=sampler, collate_fn=S2Collate(CFG),
                                         num_workers=2)
    got = list(loader)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a["names"] == b["names"]
        torch.testing.assert_close(a["spec"], b["spec"])
        torch.testing.assert_close(a["ssl"], b["ssl"])


def test_compatibility_check_names_each_mismatching_setting(saved):
    out, _ = saved
    meta = read_meta(out)
    check_dataset_compatible(meta, {"version": "v2", "ssl_dim": SSL_DIM}, CFG)
    cases = [
        ({"version": "v1", "ssl_dim": SSL_DIM}, CFG, "model.version"),
        ({"model": {"version": "v2", "ssl_dim": 768}}, CFG, "model.ssl_dim"),
        ({"ssl_dim": SSL_DIM, "semantic_frame_rate": "50hz"}, CFG, "model.semantic_frame_rate"),
        (None, SpectrogramConfig(sampling_rate=48000, hop_length=960), "data.sampling_rate"),
        (None, SpectrogramConfig(hop_length=320), "data.hop_length"),
        ({"ssl_dim": SSL_DIM, "spec_channels": 513}, CFG, "model.spec_channels"),
    ]
    for model, spec, setting in cases:
        with pytest.raises(DatasetCompatibilityError, match=setting.replace(".", r"\.")) as err:
            check_dataset_compatible(meta, model, spec)
        assert "dataset has" in str(err.value)
    with pytest.raises(DatasetCompatibilityError, match="model.ssl_dim"):
        load_prepared(out, {"ssl_dim": 768})
    from gsv_accel.models.sovits import SoVITSConfig

    with pytest.raises(DatasetCompatibilityError, match="model.ssl_dim") as err:
        check_dataset_compatible(meta, SoVITSConfig(), CFG)
    assert "768" in str(err.value) and str(SSL_DIM) in str(err.value)


def test_read_meta_refuses_other_folders_and_versions(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match=META_FILE):
        read_meta(tmp_path)
    out, _ = saved
    meta = json.loads((out / META_FILE).read_text())
    meta["format_version"] = 99
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(DatasetCompatibilityError, match="format_version 99"):
        read_meta(tmp_path)
