"""Loading a prepared dataset for training: metadata checks, a torch `Dataset` view and the S2 collate.

A prepared dataset (written by `gsv-accel prepare` or `gsv-accel import-gsv`) is a `datasets.DatasetDict`
saved with `save_to_disk` (splits `train` and `validation`), with `gsv_meta.json` beside
`dataset_dict.json` recording the settings its features were made with (see `check_dataset_compatible`).

Columns (one row per utterance):

    name, speaker, lang, text (normalised), path, line    strings / int: identity and provenance
    phones (list<string>), phone_ids (list<int16>)         symbols and their ids in the meta's symbol table
    word2ph (list<int16>)                                  phones per character (zh; empty otherwise)
    wav (list<int16>), num_samples (int32), duration      the official int16 loudness mix at 32 kHz
    spec_frames (int32)                                    linear-spectrogram frames (the sampler's length)
    ssl (list<float16>), ssl_frames (int32)                HuBERT features, channel-major flat: (D, T)
    semantic (list<int16>)                                 25 Hz codes (only when an S2 model was given)
    bert (list<float16>)                                   BERT phone features, channel-major flat
                                                           (1024, n_phones); empty = all zeros (no zh run)
    sv_emb (list<float32>)                                 speaker-verification embedding (20480 values
                                                           for the released ERes2NetV2; only with `--sv`
                                                           or an imported 7-sv_cn/), for v2Pro/v2ProPlus

Storage choice, by measurement (`python benchmarks/bench_data.py --storage`: 200 synthetic utterances
of 2-10 s, 768-wide features, 300 random reads, best of 5 passes, 2-core CPU, page cache warm):

    ssl fp16 flat list, zero-copy NumPy view of the Arrow buffer -> torch fp32     0.029 ms / item
    ssl fp32 flat list, same reader (a copy: Arrow buffers are read-only)          0.040 ms
    ssl fp32 / fp16 flat list through `datasets`' numpy formatting             0.126 / 0.517 ms
    ssl Array2D((None, 768)) fp16 through `datasets`' numpy formatting               0.754 ms
    wav int16 flat list, buffer view -> torch fp32 / 32768                          0.040 ms

Flat lists with a length column beat `Array2D` (and nested lists: 1.8 ms per row in the notes);
read through the buffer, fp16 is the fastest and half the size on disk and in the page cache (which
is what limits large corpora); it is also what the official GPU preparation stores. The waveform is
stored as the official int16 mix: exact (it is what the official `5-wav32k` files hold) and half of
fp32. A whole item (ssl + wav + phones) reads in 0.054 ms here, 0.237 ms through `datasets`.
`sv_emb` is stored the same way (a flat list read through the buffer), in float32 as the official
`7-sv_cn` files hold it: one fixed-length vector per utterance, 80 kB for 20480 values.

Spectrograms are computed on the fly, not cached. Reading a cached fp16 spectrogram costs 0.036 ms per
item, computing it from the waveform 1.64 ms (same data, mean 6 s). Caching would save CPU, but it
takes 2 bytes x 1025 per frame (102 kB per second of audio, 1.6 times wav and HuBERT together), ties
the dataset to one STFT setting, and fp16 would cost accuracy against the official fp32 spectrogram.
On the demo corpus a batch of 8 costs 11.2 ms with the spectrogram computed in `S2Collate` (89
batches/s, no worker) against 2.0 ms without (508 batches/s): small next to an S2 step (seconds on a
CPU). On a GPU, `S2Collate(compute_spec=False)` plus `batch_spectrogram` on the device removes it
from the loader altogether. Each item's spectrogram is computed on its own samples, exactly as the
official loader does (the reflect padding at the end of an utterance must see that utterance, not the
batch padding). With 2 loader workers the demo loader is slower (59 / 173 batches/s): on 2 cores the
workers compete with the main process and the batches cross process boundaries; use workers where
there are cores to spare.

SSL/spectrogram alignment follows the official loader: HuBERT gives T or T - 1 frames for a
spectrogram of T frames (its 400-sample receptive field); the features are padded to the spectrogram
length by repeating the last frame (trimmed if ever longer), and the collate pads the SSL and
spectrogram time axes to `2 * (max // 2 + 1)` frames, so 25 Hz codes always see an even length.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from ..audio import SpectrogramConfig, SpectrogramExtractor

META_FILE = "gsv_meta.json"
FORMAT_NAME = "gsv_accel-prepared"
FORMAT_VERSION = 1
WAV_SCALE = 32768.0
SPLITS = ("train", "validation")


# Model versions whose SoVITS takes a speaker-verification embedding per utterance (`sv_emb`).
SV_VERSIONS = ("v2Pro", "v2ProPlus")
# Official embedding length (ERes2NetV2 forward3 of the released checkpoint); `model.sv_dim`'s default.
DEFAULT_SV_DIM = 20480


class DatasetCompatibilityError(ValueError):
    """A prepared dataset was made with settings that disagree with the training config."""


class NotADatasetError(DatasetCompatibilityError, FileNotFoundError):
    """The folder is not a prepared dataset (no metadata file): a user error, not a crash."""


def symbols_version_of(model_version: str) -> str:
    """The symbol table a model version uses: v1's, or v2's for every later version (v2Pro and
    v2ProPlus included)."""
    return "v2" if model_version in (*SV_VERSIONS, "v3", "v4") else model_version


# --------------------------------------------------------------------------- metadata


def read_meta(path: str | Path) -> dict[str, Any]:
    """The `gsv_meta.json` of a prepared dataset folder."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise NotADatasetError(
            f"{path} is not a prepared gsv_accel dataset: {META_FILE} is missing "
            "(make one with `gsv-accel prepare` or `gsv-accel import-gsv`)")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT_NAME:
        raise DatasetCompatibilityError(f"{meta_path}: format is {meta.get('format')!r}, not {FORMAT_NAME!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetCompatibilityError(
            f"{meta_path}: format_version {meta.get('format_version')} is not the supported version "
            f"{FORMAT_VERSION}; prepare the dataset again with this version of gsv_accel")
    return meta


def spectrogram_frames(num_samples: int, cfg: SpectrogramConfig) -> int:
    """Frames of `SpectrogramExtractor.linear` for a waveform of `num_samples` samples."""
    pad = (cfg.filter_length - cfg.hop_length) // 2
    return max(0, (num_samples + 2 * pad - cfg.filter_length) // cfg.hop_length + 1)


def _model_section(model_config: Any) -> dict[str, Any]:
    if model_config is None:
        return {}
    if isinstance(model_config, dict):
        return dict(model_config.get("model", model_config))
    if hasattr(model_config, "to_dict"):
        return model_config.to_dict()
    raise TypeError(f"model_config must be a SoVITSConfig or a dict, got {type(model_config).__name__}")


def check_dataset_compatible(meta: dict[str, Any], model_config: Any = None,
                             spectrogram_config: SpectrogramConfig | None = None) -> None:
    """Raise `DatasetCompatibilityError` naming every setting where the dataset and the config disagree.

    `model_config`: a `SoVITSConfig`, or a dict (an official-style config with a `model` section, or
    the section itself). `spectrogram_config`: the `data` settings the trainer computes spectrograms
    with. Either may be None to skip its checks.
    """
    problems: list[str] = []

    def differ(setting: str, dataset_value: Any, config_value: Any) -> None:
        if dataset_value != config_value:
            problems.append(f"{setting}: the dataset has {dataset_value!r}, the config has {config_value!r}")

    if spectrogram_config is not None:
        cfg = spectrogram_config
        audio = meta["audio"]
        differ("data.sampling_rate", audio["sampling_rate"], cfg.sampling_rate)
        differ("data.hop_length", meta["spectrogram"]["hop_length"], cfg.hop_length)
        ssl_rate = meta["ssl"]["frame_rate"]
        if cfg.sampling_rate != ssl_rate * cfg.hop_length:
            problems.append(
                f"data.hop_length: the dataset's HuBERT features have {ssl_rate} frames per second, "
                f"so spectrogram frames must be {ssl_rate} per second too (hop_length = sampling_rate / "
                f"{ssl_rate}), but the config has {cfg.sampling_rate} / {cfg.hop_length}")
    model = _model_section(model_config)
    if model:
        text = meta["text"]
        version = model.get("version", "v2")
        differ("model.version (symbol table)", text["symbols_version"], symbols_version_of(version))
        differ("model.ssl_dim (HuBERT hidden size)", meta["ssl"]["hidden_size"], model.get("ssl_dim", 768))
        semantic = meta.get("semantic")
        if semantic is not None and "semantic_frame_rate" in model:
            differ("model.semantic_frame_rate", semantic["frame_rate"], model["semantic_frame_rate"])
        if spectrogram_config is not None and "spec_channels" in model:
            differ("model.spec_channels (data.filter_length // 2 + 1)",
                   spectrogram_config.n_freq_bins, model["spec_channels"])
        if version in SV_VERSIONS:
            sv = meta.get("sv")
            sv_dim = model.get("sv_dim", DEFAULT_SV_DIM)
            if sv is None:
                problems.append(
                    f"model.version {version} needs a speaker-verification embedding (sv_emb) per utterance, "
                    "but the dataset has none: prepare it with `gsv-accel prepare --sv <ERes2NetV2 "
                    "checkpoint, e.g. pretrained_eres2netv2w24s4ep4.ckpt>`, or import an official folder "
                    "that has 7-sv_cn/ (`gsv-accel import-gsv`)")
            else:
                differ("model.sv_dim (speaker-verification embedding size)", sv["embedding_dim"], sv_dim)
    if problems:
        source = meta.get("source", {}).get("path", "the dataset")
        raise DatasetCompatibilityError(
            f"prepared dataset ({source}) does not match the training config:\n  - "
            + "\n  - ".join(problems)
            + "\nPrepare the dataset again with matching settings, or change the config.")


@dataclass
class PreparedDataset:
    """A loaded prepared dataset: its splits (`datasets.Dataset`) and metadata."""

    path: Path
    splits: Any  # datasets.DatasetDict
    meta: dict[str, Any]

    def view(self, split: str = "train", features: Sequence[str] = ("ssl", "wav", "phones")) -> GSVDataset:
        """Torch view of a split (`features`: see `GSVDataset`)."""
        return GSVDataset(self.splits[split], self.meta, features=features)


def load_prepared(path: str | Path, model_config: Any = None,
                  spectrogram_config: SpectrogramConfig | None = None) -> PreparedDataset:
    """Open a prepared dataset folder and check it against the config (see `check_dataset_compatible`)."""
    import datasets  # deferred: importing datasets costs about a second

    path = Path(path)
    meta = read_meta(path)
    check_dataset_compatible(meta, model_config, spectrogram_config)
    splits = datasets.load_from_disk(str(path))
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DatasetCompatibilityError(f"{path}: split(s) {missing} missing from the saved DatasetDict")
    return PreparedDataset(path, splits, meta)


# --------------------------------------------------------------------------- reading rows


class _ArrowRows:
    """Zero-copy NumPy views of single cells of a memory-mapped Arrow table.

    `datasets`' own formatting converts whole rows through Python/NumPy per access, which costs 0.3 to
    0.8 ms per row here; reading the list buffers directly costs under 0.1 ms (module docstring).
    """

    def __init__(self, table: pa.Table) -> None:
        self.batches = table.to_batches()
        self.starts = np.cumsum([0] + [b.num_rows for b in self.batches])
        self.names = table.column_names
        self._lists: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def _locate(self, row: int) -> tuple[int, int]:
        batch = int(np.searchsorted(self.starts, row, side="right") - 1)
        return batch, row - int(self.starts[batch])

    def _list_buffers(self, name: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
        key = (name, batch)
        if key not in self._lists:
            column = self.batches[batch].column(self.names.index(name))
            offsets = column.offsets.to_numpy()
            values = column.values
            dtype = np.dtype(values.type.to_pandas_dtype())
            data = np.frombuffer(values.buffers()[1], dtype=dtype, count=len(values) + values.offset)
            self._lists[key] = (offsets, data[values.offset:])
        return self._lists[key]

    def list_cell(self, name: str, row: int) -> np.ndarray:
        batch, index = self._locate(row)
        offsets, data = self._list_buffers(name, batch)
        return data[offsets[index]:offsets[index + 1]]

    def scalar(self, name: str, row: int) -> Any:
        batch, index = self._locate(row)
        return self.batches[batch].column(self.names.index(name))[index].as_py()


def _float_tensor(view: np.ndarray) -> torch.Tensor:
    """float32 copy of a read-only NumPy view (torch converts float16 ten times faster than NumPy, but
    warns about the read-only source it never writes to)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(view).to(torch.float32, copy=True)


class GSVDataset(torch.utils.data.Dataset):
    """Torch view of one split of a prepared dataset.

    `features` picks what `__getitem__` returns besides `name` and `spec_frames`:
    `ssl` (D, T_ssl) float32, `wav` (1, T) float32 in [-1, 1), `phones` (n,) int64 phone ids,
    `semantic` (T_sem,) int64, `bert` (bert_dim, n) float32 (zeros for non-zh rows), `text`: the
    normalised text (str) and its `lang` (validation's intelligibility score reads them).
    Items also carry `sv_emb` (D_sv,) float32 whenever the dataset has that column (v2Pro/v2ProPlus;
    `S2Collate` stacks it); naming "sv_emb" in `features` makes the column required.
    """

    FEATURES = ("ssl", "wav", "phones", "semantic", "bert", "text")
    # Feature -> the `prepare` option that computes its column.
    _OPTIONAL = {"semantic": "--s2-pretrained", "bert": "--bert", "sv_emb": "--sv"}

    def __init__(self, hf_dataset: Any, meta: dict[str, Any],
                 features: Sequence[str] = ("ssl", "wav", "phones")) -> None:
        unknown = [f for f in features if f not in (*self.FEATURES, "sv_emb")]
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; choose from {list(self.FEATURES)} (and sv_emb)")
        for feature, flag in self._OPTIONAL.items():
            if feature in features and feature not in hf_dataset.column_names:
                raise DatasetCompatibilityError(
                    f"feature {feature!r} was requested but the dataset has no {feature!r} column "
                    f"(prepare it with {flag})")
        if getattr(hf_dataset, "_indices", None) is not None:
            # A selected/shuffled view: write its rows contiguously so rows map to the table 1:1.
            hf_dataset = hf_dataset.flatten_indices()
        self.hf_dataset = hf_dataset
        self.meta = meta
        self.features = tuple(features)
        self.with_sv = "sv_emb" in hf_dataset.column_names
        self.ssl_dim = int(meta["ssl"]["hidden_size"])
        self.bert_dim = int((meta.get("bert") or {}).get("hidden_size", 1024))
        table = hf_dataset.data.table
        self.lengths: list[int] = table.column("spec_frames").to_pylist()
        self.names: list[str] = table.column("name").to_pylist()
        self._rows: _ArrowRows | None = None  # built lazily in each process (views are not picklable)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rows"] = None
        return state

    @property
    def rows(self) -> _ArrowRows:
        if self._rows is None:
            self._rows = _ArrowRows(self.hf_dataset.data.table)
        return self._rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        rows = self.rows
        item: dict[str, Any] = {"name": self.names[index], "spec_frames": self.lengths[index]}
        if "ssl" in self.features:
            item["ssl"] = _float_tensor(rows.list_cell("ssl", index)).view(self.ssl_dim, -1)
        if "wav" in self.features:
            wav = np.multiply(rows.list_cell("wav", index), np.float32(1 / WAV_SCALE), dtype=np.float32)
            item["wav"] = torch.from_numpy(wav).unsqueeze(0)
        phones = None
        if "phones" in self.features or "bert" in self.features:
            phones = torch.from_numpy(rows.list_cell("phone_ids", index).astype(np.int64))
        if "phones" in self.features:
            item["phones"] = phones
        if "semantic" in self.features:
            item["semantic"] = torch.from_numpy(rows.list_cell("semantic", index).astype(np.int64))
        if "bert" in self.features:
            bert = rows.list_cell("bert", index)
            if bert.size == 0:
                item["bert"] = torch.zeros(self.bert_dim, len(phones))
            else:
                item["bert"] = _float_tensor(bert).view(self.bert_dim, -1)
        if "text" in self.features:
            item["text"], item["lang"] = rows.scalar("text", index), rows.scalar("lang", index)
        if self.with_sv:
            item["sv_emb"] = _float_tensor(rows.list_cell("sv_emb", index))
        return item


# --------------------------------------------------------------------------- collate


def align_ssl(ssl: torch.Tensor, frames: int) -> torch.Tensor:
    """SSL features (D, T) brought to `frames` frames: the last frame repeated, or trimmed."""
    length = ssl.size(-1)
    if length == frames:
        return ssl
    if length > frames:
        return ssl[..., :frames]
    return F.pad(ssl.unsqueeze(0), (0, frames - length), mode="replicate").squeeze(0)


def _even_padded(lengths: Iterable[int]) -> int:
    # Official rule: padded SSL/spectrogram length 2 * (max // 2 + 1), always even and > max.
    return 2 * (max(lengths) // 2 + 1)


def batch_spectrogram(extractor: SpectrogramExtractor, wav: torch.Tensor, wav_lengths: torch.Tensor,
                      frames: int | None = None) -> torch.Tensor:
    """Linear spectrograms (B, n_freq, frames) of a padded batch (B, 1, T) on its own device, each
    item computed on its own valid samples (as the official loader does) and zero-padded."""
    specs = [extractor.linear(wav[i, 0, : int(n)]) for i, n in enumerate(wav_lengths.tolist())]
    frames = frames if frames is not None else _even_padded(s.size(-1) for s in specs)
    out = wav.new_zeros(len(specs), extractor.cfg.n_freq_bins, frames)
    for i, spec in enumerate(specs):
        out[i, :, : spec.size(-1)] = spec
    return out


class S2Collate:
    """Pads a list of `GSVDataset` items into the SoVITS training batch.

    Returns a dict: `ssl` (B, D, T_ssl), `ssl_lengths`, `spec` (B, n_freq, T_spec) (None when
    `compute_spec=False`: compute it on the device with `batch_spectrogram`), `spec_lengths`,
    `wav` (B, 1, T_wav), `wav_lengths`, `text` (B, T_text), `text_lengths`, `names`, and `sv_emb`
    (B, D_sv) float32 when the items carry it (v2Pro/v2ProPlus).
    Items are ordered by decreasing spectrogram length, as in the official collate.
    """

    def __init__(self, spectrogram_config: SpectrogramConfig | None = None,
                 compute_spec: bool = True) -> None:
        self.cfg = spectrogram_config or SpectrogramConfig()
        self.compute_spec = compute_spec
        self._extractor: SpectrogramExtractor | None = None

    @property
    def extractor(self) -> SpectrogramExtractor:
        if self._extractor is None:
            self._extractor = SpectrogramExtractor(self.cfg)
        return self._extractor

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_extractor"] = None
        return state

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        specs: list[torch.Tensor | None] = []
        frames: list[int] = []
        for item in items:
            if self.compute_spec:
                spec = self.extractor.linear(item["wav"][0])
                specs.append(spec)
                frames.append(spec.size(-1))
            else:
                specs.append(None)
                frames.append(spectrogram_frames(item["wav"].size(-1), self.cfg))
        order = sorted(range(len(items)), key=lambda i: frames[i], reverse=True)
        batch = len(items)
        ssl_dim = items[0]["ssl"].size(0)
        max_frames = _even_padded(frames)
        max_wav = max(item["wav"].size(-1) for item in items)
        max_text = max(item["phones"].numel() for item in items)

        ssl = torch.zeros(batch, ssl_dim, max_frames)
        spec = torch.zeros(batch, self.cfg.n_freq_bins, max_frames) if self.compute_spec else None
        wav = torch.zeros(batch, 1, max_wav)
        text = torch.zeros(batch, max_text, dtype=torch.long)
        ssl_lengths = torch.zeros(batch, dtype=torch.long)
        spec_lengths = torch.zeros(batch, dtype=torch.long)
        wav_lengths = torch.zeros(batch, dtype=torch.long)
        text_lengths = torch.zeros(batch, dtype=torch.long)
        names = []
        for row, i in enumerate(order):
            item, n = items[i], frames[i]
            ssl[row, :, :n] = align_ssl(item["ssl"], n)
            ssl_lengths[row] = spec_lengths[row] = n
            if spec is not None:
                spec[row, :, :n] = specs[i]
            length = item["wav"].size(-1)
            wav[row, :, :length] = item["wav"]
            wav_lengths[row] = length
            phones = item["phones"]
            text[row, : phones.numel()] = phones
            text_lengths[row] = phones.numel()
            names.append(item["name"])
        out = {"ssl": ssl, "ssl_lengths": ssl_lengths, "spec": spec, "spec_lengths": spec_lengths,
               "wav": wav, "wav_lengths": wav_lengths, "text": text, "text_lengths": text_lengths,
               "names": names}
        with_sv = ["sv_emb" in item for item in items]
        if any(with_sv):
            if not all(with_sv):
                raise ValueError("some items carry sv_emb and others do not; mix no datasets with and "
                                 "without speaker-verification embeddings in one batch")
            out["sv_emb"] = torch.stack([items[i]["sv_emb"].to(torch.float32) for i in order])
        return out
