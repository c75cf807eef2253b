"""The model stages of the preparation: HuBERT features, S2 semantic codes and BERT phone features.

* `load_hubert` / `hubert_features`: batched HuBERT `last_hidden_state`, equal to one-by-one features
  (the first layer's GroupNorm is computed over each item's valid frames; see `prepare.py`);
* `load_s2_model` / `semantic_codes`: `extract_latent` of an official or gsv_accel S2 weight file;
* `ModelStage`: HuBERT (+ semantic codes) for a batch of rows, a batched `datasets.map` callable;
* `BertStage`: BERT phone features of zh rows, a `datasets.map` callable;
* `load_sv_model` / `SVStage`: the speaker-verification embedding (ERes2NetV2 `forward3`, as the
  official `2-get-sv.py` computes it for v2Pro/v2ProPlus) of a batch of rows, from the stored int16
  32 kHz mix, a batched `datasets.map` callable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .features import SSL_SAMPLING_RATE, sv_input
from .listfile import PrepareError

BERT_LAYER = -3


def _one_line(err: BaseException) -> str:
    """The message on one line; of torch's long weights-only refusal, only the unpickler's reason (the
    rest advises `weights_only=False`, which is exactly what must not be done with an unknown file)."""
    text = str(err)
    begin = text.find("Weights only load failed")
    if begin >= 0:
        reason_at = max(text.rfind(marker, begin) + len(marker) if marker in text[begin:] else begin
                        for marker in ("trusted source.", "WeightsUnpickler error:"))
        end = text.find("Check the documentation", reason_at)
        reason = text[reason_at:end if end >= 0 else len(text)].strip()
        prefix = text[:begin]
        text = (prefix + "refused by torch.load(weights_only=True): " + reason
                + ")" * max(0, prefix.count("(") - prefix.count(")")))
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


@contextmanager
def quiet_loading() -> Iterator[None]:
    """No transformers "Loading weights" progress bar while a local model loads: it takes a moment,
    and a model that fails to load must leave only the one-line error on stderr."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a broken model folder raises (safetensors' own error is not an OSError)."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, SafetensorError)


# --------------------------------------------------------------------------- HuBERT


def load_hubert(hubert_dir: Path, device: torch.device) -> Any:
    from transformers import HubertModel

    if not (hubert_dir / "config.json").is_file():
        raise PrepareError(f"--hubert {hubert_dir}: no config.json there; give the folder of a HuBERT "
                           "model saved with save_pretrained (e.g. chinese-hubert-base)")
    try:
        with quiet_loading():
            model = HubertModel.from_pretrained(str(hubert_dir), local_files_only=True)
    except _load_errors() as err:
        raise PrepareError(f"--hubert {hubert_dir}: cannot load the HuBERT model ({_one_line(err)}); give "
                           "the folder of a HuBERT model saved with save_pretrained") from err
    stride = int(np.prod(model.config.conv_stride))
    if SSL_SAMPLING_RATE % stride or SSL_SAMPLING_RATE // stride != 50:
        raise PrepareError(f"HuBERT model {hubert_dir} has a total stride of {stride} samples: "
                           f"{SSL_SAMPLING_RATE / stride:g} frames per second, the S2 model needs 50")
    return model.eval().to(device)


def _conv_out_lengths(lengths: torch.Tensor, kernels: Iterable[int], strides: Iterable[int]) -> torch.Tensor:
    for kernel, stride in zip(kernels, strides, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


def _masked_group_norm(x: torch.Tensor, lengths: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
    """GroupNorm of (B, C, T) with statistics over each item's first `lengths` frames only."""
    batch, channels, frames = x.shape
    groups = norm.num_groups
    valid = (torch.arange(frames, device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
    valid = valid[:, None, None, :]
    grouped = x.view(batch, groups, channels // groups, frames)
    count = (lengths.to(x.dtype) * (channels // groups))[:, None, None, None]
    mean = (grouped * valid).sum(dim=(2, 3), keepdim=True) / count
    var = ((grouped - mean).pow(2) * valid).sum(dim=(2, 3), keepdim=True) / count
    out = ((grouped - mean) / torch.sqrt(var + norm.eps)).view(batch, channels, frames)
    if norm.affine:
        out = out * norm.weight[None, :, None] + norm.bias[None, :, None]
    return out


@torch.inference_mode()
def hubert_features(model: Any, waves: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """`last_hidden_state` (D, T_i) of each 16 kHz input, computed as one padded batch."""
    device = next(model.parameters()).device
    lengths = torch.tensor([len(w) for w in waves], device=device)
    batch = torch.zeros(len(waves), int(lengths.max()), device=device)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.tensor(w, device=device)
    config = model.config
    frames = _conv_out_lengths(lengths, config.conv_kernel, config.conv_stride)
    hidden = batch[:, None]
    layers = model.feature_extractor.conv_layers
    for index, layer in enumerate(layers):
        norm = getattr(layer, "layer_norm", None)
        if isinstance(norm, torch.nn.GroupNorm) and len(waves) > 1:
            hidden = layer.conv(hidden)
            layer_lengths = _conv_out_lengths(lengths, config.conv_kernel[: index + 1],
                                              config.conv_stride[: index + 1])
            hidden = layer.activation(_masked_group_norm(hidden, layer_lengths, norm))
        else:
            hidden = layer(hidden)
    projected = model.feature_projection(hidden.transpose(1, 2))
    if isinstance(projected, tuple):  # some wav2vec2-family projections also return the normed input
        projected = projected[0]
    mask = None
    if len(waves) > 1:
        mask = torch.arange(projected.size(1), device=device)[None, :] < frames[:, None]
    out = model.encoder(projected, attention_mask=mask).last_hidden_state
    return [out[i, : int(n)].transpose(0, 1).float().cpu() for i, n in enumerate(frames.tolist())]


# --------------------------------------------------------------------------- S2 semantic codes


def load_s2_model(path: Path, ssl_dim: int, device: torch.device) -> Any:
    """The S2 generator of an official or gsv_accel weight file, for `extract_latent`."""
    from ..formats import GSVFormatError, load_gsv_file, load_weights_into
    from ..models.sovits import SoVITSConfig, SynthesizerTrn
    from ..models.sovits.config import SoVITSV3Config
    from ..models.sovits.generator_v3 import SynthesizerTrnV3

    try:
        gsv = load_gsv_file(path)
        version = gsv.version or "v2"
        # v3/v4 (flow matching) have the same SSL projection and quantizer, in another model class.
        config_class, model_class = ((SoVITSV3Config, SynthesizerTrnV3) if version in ("v3", "v4")
                                     else (SoVITSConfig, SynthesizerTrn))
        if gsv.lora_rank is not None:
            raise PrepareError(f"--s2-pretrained {path} is a {version} LoRA export, which does not hold the "
                               "quantizer: give the base model it was trained on (s2Gv3.pth / s2Gv4.pth)")
        cfg = gsv.config
        if cfg is None:
            # Pretrained files and G_ checkpoints store no config: the version's official architecture
            # (v2Pro/v2ProPlus differ from v2 in widths, e.g. s2Gv2Pro.pth has gin_channels 1024).
            config = config_class.for_version(version)
        elif isinstance(cfg.get("model"), dict):
            model_section = dict(cfg["model"])
            model_section.setdefault("version", version)
            config = config_class.from_dict(model_section, cfg.get("data"), cfg.get("train"))
        else:
            config = config_class.from_dict(cfg)
        if config.ssl_dim != ssl_dim:
            raise PrepareError(f"--s2-pretrained {path}: the model takes {config.ssl_dim}-dim SSL features "
                               f"but the HuBERT model gives {ssl_dim}")
        model = model_class(config)
        load_weights_into(model, gsv)
    except (GSVFormatError, ValueError, OSError, KeyError, TypeError) as err:
        raise PrepareError(f"--s2-pretrained {path}: cannot load it as an S2 model ({_one_line(err)}); give "
                           "an S2 (SoVITS) weight file such as s2G2333k.pth") from err
    inited = [v for k, v in model.state_dict().items() if k.endswith("_codebook.inited")]
    if not inited or not all(bool((v > 0).all()) for v in inited):
        raise PrepareError(f"--s2-pretrained {path}: its quantizer codebook is not initialised, so its "
                           "semantic codes would be meaningless; use a pretrained or trained S2 model")
    return model.eval().to(device)


@torch.inference_mode()
def semantic_codes(model: Any, ssl: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """25 Hz (or 50 Hz) codes of each (D, T) feature map, as one padded batch (the projection is a
    stride-2 convolution and the quantizer works per frame, so padding never reaches valid codes)."""
    device = next(model.parameters()).device
    frames = max(s.size(1) for s in ssl)
    batch = torch.zeros(len(ssl), ssl[0].size(0), frames, device=device)
    for i, s in enumerate(ssl):
        batch[i, :, : s.size(1)] = s.to(device)
    codes = model.extract_latent(batch)[:, 0]
    ratio = model.semantic_upsample
    return [codes[i, : s.size(1) // ratio].cpu().numpy().astype(np.int16) for i, s in enumerate(ssl)]


class ModelStage:
    """HuBERT features (and semantic codes) for a batch of rows (a batched `datasets.map` callable)."""

    def __init__(self, hubert: Any, s2: Any = None) -> None:
        self.hubert = hubert
        self.s2 = s2

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        feats = hubert_features(self.hubert, [np.asarray(w, np.float32) for w in batch["hubert_in"]])
        out: dict[str, list[Any]] = {"ssl": [], "ssl_frames": [], "reject_code": [], "reject_reason": []}
        stored = []
        for line, feat in zip(batch["line"], feats, strict=True):
            half = feat.to(torch.float16)
            ok = bool(torch.isfinite(half).all())
            out["ssl"].append(half.reshape(-1).numpy() if ok else np.zeros(0, np.float16))
            out["ssl_frames"].append(feat.size(1) if ok else 0)
            out["reject_code"].append("" if ok else "features")
            out["reject_reason"].append("" if ok else f"line {line}: HuBERT features contain NaN/inf "
                                        "(or exceed the float16 range)")
            stored.append(half.float())
        if self.s2 is not None:
            out["semantic"] = semantic_codes(self.s2, stored)
        return out


# --------------------------------------------------------------------------- BERT


class BertStage:
    """BERT phone features of zh rows (a `datasets.map` callable)."""

    def __init__(self, bert_dir: Path, device: torch.device) -> None:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        try:
            with quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(str(bert_dir), local_files_only=True)
                self.model = AutoModelForMaskedLM.from_pretrained(str(bert_dir), local_files_only=True)
        except _load_errors() as err:
            raise PrepareError(f"--bert {bert_dir}: cannot load the BERT model ({_one_line(err)}); give the "
                               "folder of a BERT model saved with save_pretrained") from err
        self.model.eval().to(device)
        self.device = device
        self.hidden_size = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {"bert": np.zeros(0, np.float16), "reject_code": row["reject_code"],
               "reject_reason": row["reject_reason"]}
        segments = json.loads(row["segments"])
        if out["reject_code"] or not any(lang == "zh" for lang, *_ in segments):
            return out  # stored empty: zeros
        parts = []
        for lang, text, word2ph, n_phones in segments:
            if lang != "zh":
                parts.append(torch.zeros(self.hidden_size, n_phones))
                continue
            inputs = self.tokenizer(text, return_tensors="pt").to(self.device)
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[BERT_LAYER][0, 1:-1]
            if hidden.size(0) != len(word2ph) or sum(word2ph) != n_phones:
                out.update(reject_code="bert",
                           reject_reason=f"line {row['line']}: BERT gives {hidden.size(0)} token vectors for "
                           f"the {len(word2ph)} characters of {text!r}")
                return out
            repeats = torch.tensor(word2ph, device=hidden.device)
            parts.append(hidden.repeat_interleave(repeats, dim=0).transpose(0, 1).float().cpu())
        out["bert"] = torch.cat(parts, dim=1).to(torch.float16).reshape(-1).numpy()  # (H, n_phones)
        return out


# --------------------------------------------------------------------------- speaker verification


def load_sv_model(path: Path, device: torch.device) -> Any:
    """The ERes2NetV2 speaker encoder of `--sv` (`gsv_accel.models.sv.SpeakerEncoder`), in eval mode."""
    from ..models.sv import SpeakerEncoder

    try:
        return SpeakerEncoder.from_pretrained(path, device=device)
    except (ValueError, OSError) as err:  # SpeakerCheckpointError is a ValueError
        raise PrepareError(f"--sv {path}: cannot load the speaker-verification model ({_one_line(err)}); "
                           "give an ERes2NetV2 checkpoint such as pretrained_eres2netv2w24s4ep4.ckpt"
                           ) from err


class SVStage:
    """Speaker-verification embeddings (`sv_emb`, float32, `embedding_dim` values) for a batch of rows
    (a batched `datasets.map` callable over `wav`, `line`, `reject_code`, `reject_reason`).

    The input is the stored `wav` column, the official int16 loudness mix at 32 kHz, as int16 / 32768:
    the `5-wav32k` file that `2-get-sv.py` reads with `torchaudio.load`. Rows rejected by an earlier
    stage keep their reason and get an empty embedding; a non-finite embedding rejects the row ("sv").
    """

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.embedding_dim = int(encoder.embedding_dim)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        codes = [str(c) for c in batch["reject_code"]]
        out: dict[str, list[Any]] = {"sv_emb": [np.zeros(0, np.float32)] * len(codes), "reject_code": codes,
                                     "reject_reason": [str(r) for r in batch["reject_reason"]]}
        todo = [i for i, code in enumerate(codes) if not code]
        if not todo:
            return out
        waves = [torch.from_numpy(sv_input(batch["wav"][i])) for i in todo]
        embeddings = self.encoder.embed_32k(waves).float().cpu().numpy()
        for i, emb in zip(todo, embeddings, strict=True):
            if np.isfinite(emb).all():
                out["sv_emb"][i] = np.ascontiguousarray(emb, np.float32)
            else:
                out["reject_code"][i] = "sv"
                out["reject_reason"][i] = (f"line {batch['line'][i]}: the speaker-verification embedding "
                                           "contains NaN/inf")
        return out

