"""GPT-SoVITS weight files: safe loading, version detection, compatibility, exports."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import pickle
import sys
import types
from collections import OrderedDict

import pytest
import torch

from gsv_accel import formats
from gsv_accel.formats import (
    GSVFormatError,
    IncompatibleWeightsError,
    UnsafeFileError,
    UnsupportedModelError,
    check_compatibility,
    detect_version,
    export_gpt,
    export_sovits,
    gpt_export_name,
    load_gsv_file,
    load_weights_into,
    sovits_export_info,
    sovits_export_name,
)
from gsv_accel.models.sovits.config import SoVITSConfig

S2_EXPORT = "s2_small_v2_export.pth"
S1_EXPORT = "s1_small_v2_export.ckpt"


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


class _StandInHParams:
    """Behaves like GPT-SoVITS' utils.HParams for pickling: attributes from kwargs, dicts nested."""

    def __init__(self, **kwargs):
        for key, value in kwargs.items():
            setattr(self, key, type(self)(**value) if isinstance(value, dict) else value)


def _hparams_to_dict(obj):
    if isinstance(obj, _StandInHParams) or type(obj).__name__ == "HParams":
        return {k: _hparams_to_dict(v) for k, v in vars(obj).items()}
    return obj


def _install_class(monkeypatch, module_name: str, cls: type, name: str) -> type:
    """Make `cls` importable as `module_name.name` (with parent packages) for this test only."""
    parts = module_name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    module = types.ModuleType(module_name)
    cls.__module__, cls.__qualname__, cls.__name__ = module_name, name, name
    setattr(module, name, cls)
    monkeypatch.setitem(sys.modules, module_name, module)
    return cls


@pytest.fixture
def fake_hparams_module(monkeypatch):
    """Make `utils.HParams` importable (a stand-in class), as in a GPT-SoVITS checkout."""

    def install(module_name: str = "utils"):
        class HParams(_StandInHParams):
            pass

        return _install_class(monkeypatch, module_name, HParams, "HParams")

    return install


def _official_load(path, fake_hparams_module):
    """Read a file the way GPT-SoVITS inference does (full unpickling, PK restored in memory)."""
    fake_hparams_module("utils")
    data = pathlib.Path(path).read_bytes()
    if data[:2] != b"PK":
        data = b"PK" + data[2:]
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


class _AttrDict(dict):
    """Dict-to-attribute wrapper, as official inference wraps an export's config."""

    def __init__(self, data):
        super().__init__()
        for key, value in data.items():
            self[key] = _AttrDict(value) if isinstance(value, dict) else value

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


def _official_synthesizer_call(spec_channels, segment_size, inter_channels, hidden_channels, filter_channels,
                               n_heads, n_layers, kernel_size, p_dropout, resblock, resblock_kernel_sizes,
                               resblock_dilation_sizes, upsample_rates, upsample_initial_channel,
                               upsample_kernel_sizes, n_speakers=0, gin_channels=0, use_sdp=True,
                               semantic_frame_rate=None, freeze_quantizer=None, version="v2", **kwargs):
    """The parameters of the official SynthesizerTrn constructor (nothing else)."""
    return {"spec_channels": spec_channels, "segment_size": segment_size, "version": version}


def _sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _is_plain(obj) -> bool:
    if isinstance(obj, dict):
        return type(obj) is dict and all(isinstance(k, str) and _is_plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_is_plain(v) for v in obj)
    return obj is None or type(obj) in (str, int, float, bool)


def _small_config(gsv) -> SoVITSConfig:
    cfg = gsv.config
    return SoVITSConfig.from_dict(cfg["model"], cfg["data"], cfg["train"])


def _generator_class():
    try:
        from gsv_accel.models.sovits import SynthesizerTrn
    except ImportError as err:  # written by another part of the project
        pytest.skip(f"gsv_accel.models.sovits.SynthesizerTrn is not available yet ({err})")
    return SynthesizerTrn


class _RunsShell:
    """Pickles as a call to os.system: loading this with full unpickling would run the command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _RunsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


# ----------------------------------------------------------------------------------------------
# The official fixtures
# ----------------------------------------------------------------------------------------------


def test_fixture_sovits_export_loads_safely(reference_file, fake_hparams_module, small_s2_model_config):
    path = reference_file(S2_EXPORT)
    before = _sha256(path)
    gsv = load_gsv_file(path)
    assert gsv.kind == "export"
    assert gsv.model == "sovits_generator"
    assert gsv.header is None
    assert gsv.version == "v2"
    assert gsv.supported

    # What the file really holds, read the official way (full unpickling of our stand-in class).
    official = _official_load(path, fake_hparams_module)
    assert gsv.info == official["info"]
    assert gsv.config == _hparams_to_dict(official["config"])
    assert _is_plain(gsv.config), "config must be plain dicts/lists/scalars"
    json.dumps(gsv.config)
    for key, value in small_s2_model_config.items():
        assert gsv.config["model"][key] == value
    assert set(gsv.state_dict) == set(official["weight"])
    for key, tensor in gsv.state_dict.items():
        assert tensor.dtype == torch.float16, key
        assert torch.equal(tensor, official["weight"][key]), key
    assert not any(k.startswith("enc_q.") for k in gsv.state_dict)
    assert (gsv.epoch, gsv.step) == (3, 30)  # from info "3epoch_30iteration"
    assert _sha256(path) == before


def test_plain_weights_only_load_of_fixture_fails_but_ours_does_not(reference_file):
    # The reason this module exists: torch's default safe load refuses the pickled HParams class.
    path = reference_file(S2_EXPORT)
    with pytest.raises(pickle.UnpicklingError, match="HParams"):
        torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(load_gsv_file(path).config, dict)


def test_fixture_gpt_export_loads(reference_file):
    path = reference_file(S1_EXPORT)
    gsv = load_gsv_file(path)
    reference = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert gsv.kind == "export"
    assert gsv.model == "gpt"
    assert gsv.state_dict and all(k.startswith("model.") for k in gsv.state_dict)
    assert set(gsv.state_dict) == set(reference["weight"])
    assert all(t.dtype == torch.float16 for t in gsv.state_dict.values())
    assert gsv.config == reference["config"]
    assert gsv.info == reference["info"]
    assert gsv.epoch == 3  # "GPT-e3"
    rows = reference["config"]["model"]["phoneme_vocab_size"]
    assert gsv.version == {512: "v1", 732: "v2"}[rows]


@pytest.mark.parametrize("module_name", ["utils", "GPT_SoVITS.utils", "my_fork.tools.utils"])
def test_hparams_from_any_module_path_becomes_a_dict(tmp_path, monkeypatch, fake_hparams_module, module_name):
    hparams = fake_hparams_module(module_name)
    config = {"model": {"version": "v2", "hidden_channels": 8}, "data": {"hop_length": 640}, "name": "x"}
    path = tmp_path / "hp.pth"
    torch.save({"weight": {"enc_p.proj.weight": torch.zeros(2, 2)}, "config": hparams(**config),
                "info": "1epoch_2iteration"}, path)
    monkeypatch.delitem(sys.modules, module_name)  # the class is not even importable when we load
    gsv = load_gsv_file(path)
    assert gsv.config == config
    assert type(gsv.config["model"]) is dict


# ----------------------------------------------------------------------------------------------
# Refusing code
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["top", "config", "weight"])
def test_pickled_os_system_is_refused_and_not_run(tmp_path, where):
    marker = tmp_path / "pwned"
    payload = _RunsShell(f"touch {marker}")
    obj = {"weight": {"enc_p.proj.weight": torch.zeros(2)}, "config": {"model": {}}, "info": "x"}
    if where == "top":
        obj["extra"] = payload
    elif where == "config":
        obj["config"]["model"]["hidden_channels"] = payload
    else:
        obj["weight"]["enc_p.proj.bias"] = payload
    path = tmp_path / "model.pth"
    torch.save(obj, path)

    with pytest.raises(UnsafeFileError) as info:
        load_gsv_file(path)
    message = str(info.value)
    assert "refusing to load model.pth" in message
    assert "os.system" in message
    if os.name == "posix":
        assert "posix.system" in message  # the name pickle actually recorded
    assert "could run code" in message
    assert not marker.exists()


def test_several_unsafe_globals_are_all_named(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "two.pth"
    torch.save({"weight": {}, "a": _RunsEval(), "b": _RunsShell(f"touch {marker}")}, path)
    with pytest.raises(UnsafeFileError) as info:
        load_gsv_file(path)
    assert "builtins.eval" in str(info.value) and "os.system" in str(info.value)
    assert not marker.exists()


def test_broken_and_foreign_files_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(GSVFormatError, match="empty.pth"):
        load_gsv_file(empty)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(GSVFormatError, match="garbage.pth"):
        load_gsv_file(garbage)
    truncated = tmp_path / "truncated.pth"
    buffer = io.BytesIO()
    torch.save({"weight": {"a": torch.zeros(100)}}, buffer)
    truncated.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(GSVFormatError, match="truncated.pth"):
        load_gsv_file(truncated)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(GSVFormatError, match="not a GPT-SoVITS checkpoint"):
        load_gsv_file(tensor_only)
    foreign = tmp_path / "foreign.pth"
    torch.save({"net": {"a": torch.zeros(1)}}, foreign)
    with pytest.raises(GSVFormatError, match="top-level keys"):
        load_gsv_file(foreign)
    with pytest.raises(FileNotFoundError):
        load_gsv_file(tmp_path / "missing.pth")


# ----------------------------------------------------------------------------------------------
# 2-byte version headers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, version, supported", [
    (b"05", "v2Pro", True), (b"06", "v2ProPlus", True), (b"03", "v3", False), (b"04", "v4", False),
    (b"01", "v2", True),
])
def test_version_header_variants(tmp_path, reference_file, header, version, supported):
    original = reference_file(S2_EXPORT)
    original_hash = _sha256(original)
    data = original.read_bytes()
    assert data[:2] == b"PK"
    copy = tmp_path / "with_header.pth"
    copy.write_bytes(header + data[2:])
    copy_hash = _sha256(copy)

    gsv = load_gsv_file(copy)
    assert gsv.header == header
    assert gsv.version == version
    assert gsv.supported is supported
    assert len(gsv.state_dict) == len(load_gsv_file(original).state_dict)
    if header != b"01":
        # The weights themselves are v2: the disagreement is noted.
        assert any("header" in note for note in gsv.notes)
    if not supported:
        with pytest.raises(UnsupportedModelError, match=f"{version}.*not support"):
            check_compatibility(gsv, _small_config(gsv))
        with pytest.raises(UnsupportedModelError, match="not support"):
            load_weights_into(torch.nn.Linear(1, 1), gsv)
    elif version in ("v2Pro", "v2ProPlus"):
        # Whether a file can be loaded is decided by its weights, which lack the Pro layers.
        check_compatibility(gsv, _small_config(gsv))
        pro = SoVITSConfig.from_dict({**gsv.config["model"], "version": version}, gsv.config["data"])
        with pytest.raises(IncompatibleWeightsError, match="no sv_emb.*set model.version: v2 "):
            check_compatibility(gsv, pro)
    # Neither the user's file nor the original was modified.
    assert _sha256(copy) == copy_hash
    assert copy.read_bytes()[:2] == header
    assert _sha256(original) == original_hash


def test_unknown_header_is_refused(tmp_path, reference_file):
    copy = tmp_path / "odd.pth"
    copy.write_bytes(b"99" + reference_file(S2_EXPORT).read_bytes()[2:])
    with pytest.raises(GSVFormatError, match="unknown 2-byte version header"):
        load_gsv_file(copy)


def test_pro_keys_are_detected_without_a_header(tmp_path):
    sd = {"enc_p.text_embedding.weight": torch.zeros(732, 4), "sv_emb.weight": torch.zeros(8, 20480),
          "dec.conv_pre.weight": torch.zeros(768, 4, 7)}
    assert detect_version(sd)[0] == "v2ProPlus"
    sd["dec.conv_pre.weight"] = torch.zeros(512, 4, 7)
    assert detect_version(sd)[0] == "v2Pro"
    # Small models: v2ProPlus's config also makes the first upsampling kernel 20 taps long (v2Pro: 16).
    sd["dec.ups.0.weight_v"] = torch.zeros(96, 48, 20)
    assert detect_version(sd)[0] == "v2ProPlus"
    sd["dec.ups.0.weight_v"] = torch.zeros(64, 32, 16)
    assert detect_version(sd)[0] == "v2Pro"
    path = tmp_path / "pro.pth"
    torch.save({"weight": sd}, path)
    gsv = load_gsv_file(path)
    assert gsv.version == "v2Pro" and gsv.supported and gsv.kind == "pretrained"
    with pytest.raises(IncompatibleWeightsError, match="v2Pro model.*set model.version: v2Pro"):
        check_compatibility(gsv, SoVITSConfig())


# ----------------------------------------------------------------------------------------------
# Training checkpoints, pretrained files, Lightning checkpoints
# ----------------------------------------------------------------------------------------------


def _tiny_generator_sd():
    return OrderedDict([
        ("enc_p.text_embedding.weight", torch.randn(732, 4)),
        ("enc_p.proj.weight", torch.randn(8, 4, 1)),
        ("enc_q.pre.weight", torch.randn(4, 1025, 1)),
        ("dec.conv_pre.weight", torch.randn(16, 4, 7)),
    ])


def test_training_checkpoint_G_loads_with_progress_and_optimizer(tmp_path):
    sd = _tiny_generator_sd()
    params = [torch.nn.Parameter(t.clone()) for t in sd.values()]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.8, 0.99), eps=1e-9)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    path = tmp_path / "G_100.pth"
    checkpoint = {"model": sd, "iteration": 7, "optimizer": optimizer.state_dict(), "learning_rate": 1e-4}
    torch.save(checkpoint, path)

    gsv = load_gsv_file(path)
    assert gsv.kind == "train_checkpoint"
    assert gsv.model == "sovits_generator"
    assert gsv.version == "v2"
    assert gsv.iteration == 7 and gsv.epoch == 7  # the official trainer stores the epoch there
    assert gsv.step == 100  # from the file name
    assert gsv.learning_rate == pytest.approx(1e-4)
    assert set(gsv.optimizer) == {"state", "param_groups"}
    assert gsv.optimizer["param_groups"][0]["betas"] == (0.8, 0.99)
    assert torch.is_tensor(gsv.optimizer["state"][0]["exp_avg"])
    assert all(torch.equal(gsv.state_dict[k], v) for k, v in sd.items())


def test_training_checkpoint_D_and_pretrained_and_bare_state_dict(tmp_path):
    d_sd = {"discriminators.0.convs.0.weight_v": torch.randn(16, 1, 15),
            "discriminators.1.conv_post.bias": torch.randn(1)}
    torch.save({"model": d_sd, "iteration": 2, "optimizer": {"state": {}, "param_groups": []},
                "learning_rate": 2e-4}, tmp_path / "D_233333333333.pth")
    gsv = load_gsv_file(tmp_path / "D_233333333333.pth")
    assert gsv.kind == "train_checkpoint" and gsv.model == "sovits_discriminator"
    assert gsv.version is None and gsv.step is None  # the "latest" sentinel is not a step

    torch.save({"weight": _tiny_generator_sd()}, tmp_path / "s2G2333k.pth")
    gsv = load_gsv_file(tmp_path / "s2G2333k.pth")
    assert gsv.kind == "pretrained" and gsv.config is None and gsv.version == "v2"

    torch.save(dict(_tiny_generator_sd()), tmp_path / "bare.pth")
    assert load_gsv_file(tmp_path / "bare.pth").kind == "state_dict"


def test_lightning_checkpoint_loads(tmp_path, monkeypatch):
    # What PyTorch Lightning 2.x writes for GPT-SoVITS' stage 1 (save_hyperparameters() stores the
    # config dict, the output folder as a pathlib path and is_train).
    class AttributeDict(dict):
        pass

    _install_class(monkeypatch, "lightning.fabric.utilities.data", AttributeDict, "AttributeDict")

    config = {"model": {"phoneme_vocab_size": 732, "hidden_dim": 8}, "data": {"max_sec": 54},
              "optimizer": {"lr": 0.01}}
    state_dict = OrderedDict([
        ("model.ar_text_embedding.word_embeddings.weight", torch.randn(732, 8)),
        ("model.bert_proj.weight", torch.randn(8, 1024)),
    ])
    checkpoint = {
        "epoch": 4,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state_dict,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5, "completed": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min'}": {
            "best_model_score": None, "best_model_path": "", "dirpath": "logs/ckpt",
            "kth_value": torch.tensor(float("inf")), "best_k_models": {}}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(8)}},
                              "param_groups": [{"lr": 0.002, "betas": (0.9, 0.95), "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 3, "_last_lr": [0.002], "base_lrs": [0.01]}],
        "MixedPrecision": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "hparams_name": "kwargs",
        "hyper_parameters": AttributeDict(config=config, output_dir=pathlib.PurePosixPath("logs/s1"),
                                          is_train=True),
    }
    if os.name == "posix":
        checkpoint["hyper_parameters"]["output_dir"] = pathlib.PosixPath("logs/s1")
    path = tmp_path / "epoch=4-step=120.ckpt"
    torch.save(checkpoint, path)
    monkeypatch.delitem(sys.modules, "lightning.fabric.utilities.data")

    gsv = load_gsv_file(path)
    assert gsv.kind == "lightning_checkpoint"
    assert gsv.model == "gpt"
    assert gsv.version == "v2"
    assert (gsv.epoch, gsv.step) == (4, 120)
    assert gsv.learning_rate == pytest.approx(0.002)
    assert isinstance(gsv.optimizer, list) and torch.is_tensor(gsv.optimizer[0]["state"][0]["exp_avg"])
    assert gsv.config == config
    hyper = gsv.extra["hyper_parameters"]
    assert type(hyper) is dict and hyper["output_dir"] == "logs/s1" and hyper["is_train"] is True
    assert gsv.extra["MixedPrecision"]["scale"] == 65536.0
    assert list(gsv.state_dict) == list(state_dict)


# ----------------------------------------------------------------------------------------------
# Compatibility checks and loading into a model
# ----------------------------------------------------------------------------------------------


def test_v2_weights_against_v1_config_give_a_clear_message(reference_file):
    gsv = load_gsv_file(reference_file(S2_EXPORT))
    cfg = gsv.config
    v1 = SoVITSConfig.from_dict({**cfg["model"], "version": "v1"}, cfg["data"], cfg["train"])
    rows = gsv.state_dict["enc_p.text_embedding.weight"].shape[0]
    with pytest.raises(IncompatibleWeightsError) as info:
        check_compatibility(gsv, v1)
    message = str(info.value)
    assert f"enc_p.text_embedding.weight has {rows} rows: a v2 model; set model.version: v2" in message
    assert "Traceback" not in message and "size mismatch" not in message


def test_v1_weights_against_v2_config_give_a_clear_message(reference_file):
    gsv = load_gsv_file(reference_file(S2_EXPORT))
    sd = dict(gsv.state_dict)
    hidden = sd["enc_p.text_embedding.weight"].shape[1]
    ref_hidden = sd["ref_enc.spectral.0.fc.weight"].shape[0]
    sd["enc_p.text_embedding.weight"] = torch.zeros(322, hidden, dtype=torch.float16)
    sd["ref_enc.spectral.0.fc.weight"] = torch.zeros(ref_hidden, 1025, dtype=torch.float16)
    assert detect_version(sd)[0] == "v1"
    with pytest.raises(IncompatibleWeightsError, match="322 rows: a v1 model; set model.version: v1"):
        check_compatibility(sd, _small_config(gsv))


def test_shape_mismatch_names_key_shapes_and_field(reference_file):
    gsv = load_gsv_file(reference_file(S2_EXPORT))
    cfg = gsv.config
    file_channels = cfg["model"]["upsample_initial_channel"]
    other = SoVITSConfig.from_dict({**cfg["model"], "upsample_initial_channel": 2 * file_channels},
                                   cfg["data"], cfg["train"])
    with pytest.raises(IncompatibleWeightsError) as info:
        check_compatibility(gsv, other)
    message = str(info.value)
    file_shape = tuple(gsv.state_dict["dec.conv_pre.weight"].shape)
    want_shape = (2 * file_channels,) + file_shape[1:]
    assert "dec.conv_pre.weight" in message
    assert "(" + ", ".join(map(str, file_shape)) + ")" in message
    assert "(" + ", ".join(map(str, want_shape)) + ")" in message
    assert "model.upsample_initial_channel" in message


def test_load_weights_into_generator(reference_file):
    synthesizer = _generator_class()
    gsv = load_gsv_file(reference_file(S2_EXPORT))
    model = synthesizer(_small_config(gsv))
    report = load_weights_into(model, gsv)
    assert report.missing == [] and report.unexpected == []
    assert report.expected_missing and all(k.startswith("enc_q.") for k in report.expected_missing)
    assert "as expected" in str(report) and "enc_q" in str(report)
    state = model.state_dict()
    for key, tensor in gsv.state_dict.items():
        assert torch.equal(state[key], tensor.to(state[key].dtype)), key
    assert report.complete
    # strict=True accepts the expected enc_q gap too.
    load_weights_into(model, reference_file(S2_EXPORT), strict=True)


def test_load_weights_into_wrong_version_model_raises_clearly(reference_file):
    synthesizer = _generator_class()
    gsv = load_gsv_file(reference_file(S2_EXPORT))
    cfg = gsv.config
    model = synthesizer(SoVITSConfig.from_dict({**cfg["model"], "version": "v1"}, cfg["data"], cfg["train"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(IncompatibleWeightsError, match="set model.version: v2"):
        load_weights_into(model, gsv)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded


def test_load_weights_into_reports_layer_count_differences(reference_file):
    synthesizer = _generator_class()
    gsv = load_gsv_file(reference_file(S2_EXPORT))
    cfg = gsv.config
    deeper = SoVITSConfig.from_dict({**cfg["model"], "n_layers": cfg["model"]["n_layers"] + 2},
                                    cfg["data"], cfg["train"])
    model = synthesizer(deeper)
    report = load_weights_into(model, gsv)
    assert report.missing and not report.complete
    assert any("model.n_layers" in note for note in report.notes)
    with pytest.raises(IncompatibleWeightsError, match="model.n_layers"):
        load_weights_into(model, gsv, strict=True)


# ----------------------------------------------------------------------------------------------
# Exports
# ----------------------------------------------------------------------------------------------


def test_export_names():
    assert sovits_export_name("my_voice", 8, 240) == "my_voice_e8_s240.pth"
    assert gpt_export_name("my_voice", 15) == "my_voice-e15.ckpt"
    assert sovits_export_info(8, 240) == "8epoch_240iteration"
    with pytest.raises(ValueError):
        sovits_export_name("a/b", 1, 2)


def _perturbed_fp32(state_dict, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: v.float() + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in state_dict.items()}


def test_export_round_trip_the_official_way(tmp_path, reference_file, fake_hparams_module):
    fixture = load_gsv_file(reference_file(S2_EXPORT))
    weights = _perturbed_fp32(fixture.state_dict)  # fp32 values that fp16 has to round
    weights["enc_q.pre.weight"] = torch.randn(4, 4, 1)
    weights["enc_q.proj.bias"] = torch.randn(4)
    path = tmp_path / "SoVITS_weights_v2" / sovits_export_name("voice", 3, 30)
    info = sovits_export_info(3, 30)
    written = export_sovits(weights, fixture.config, path, info=info, version="v2")
    assert written == path
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary files left

    # Load exactly as GPT-SoVITS inference does.
    dict_s2 = _official_load(path, fake_hparams_module)
    assert path.read_bytes()[:2] == b"PK"  # v2: plain zip, no header
    assert dict_s2["info"] == info
    hps = _AttrDict(dict_s2["config"])
    assert hps.model.version == "v2"
    built = _official_synthesizer_call(hps.data.filter_length // 2 + 1,
                                       hps.train.segment_size // hps.data.hop_length,
                                       n_speakers=hps.data.n_speakers, **hps.model)
    assert built["version"] == "v2"
    exported = dict_s2["weight"]
    assert not any(k.startswith("enc_q.") for k in exported)
    assert set(exported) == set(fixture.state_dict)
    for key, tensor in exported.items():
        assert tensor.dtype == torch.float16, key
        assert torch.equal(tensor, weights[key].half()), key

    # And our own loader reads it back identically.
    again = load_gsv_file(path)
    assert again.version == "v2" and again.info == info and (again.epoch, again.step) == (3, 30)
    assert again.config == dict_s2["config"]


def test_export_of_our_generator_loads_into_a_fresh_one(tmp_path, reference_file, fake_hparams_module):
    synthesizer = _generator_class()
    fixture = load_gsv_file(reference_file(S2_EXPORT))
    config = _small_config(fixture)
    model = synthesizer(config)
    # The trainer's config: our dataclass as the model section (with spec_channels, n_speakers, ...).
    full_config = {"train": fixture.config["train"], "data": fixture.config["data"],
                   "model": config.to_dict()}
    path = tmp_path / "ours.pth"
    export_sovits(model.state_dict(), full_config, path, info="1epoch_5iteration", version=config.version)

    dict_s2 = _official_load(path, fake_hparams_module)
    hps = _AttrDict(dict_s2["config"])
    for key in ("spec_channels", "segment_size", "n_speakers"):
        assert key not in hps.model  # official inference passes these itself
    _official_synthesizer_call(hps.data.filter_length // 2 + 1, hps.train.segment_size // hps.data.hop_length,
                               n_speakers=hps.data.n_speakers, **hps.model)

    rebuilt = synthesizer(SoVITSConfig.from_dict(dict(hps.model), dict(hps.data), dict(hps.train)))
    result = rebuilt.load_state_dict(dict_s2["weight"], strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("enc_q.") for k in result.missing_keys)
    assert set(result.missing_keys) == {k for k in model.state_dict() if k.startswith("enc_q.")}
    state = rebuilt.state_dict()
    for key, tensor in model.state_dict().items():
        if not key.startswith("enc_q."):
            assert torch.equal(state[key], tensor.half().to(state[key].dtype)), key


def test_export_is_atomic_on_failure(tmp_path, reference_file, monkeypatch):
    fixture = load_gsv_file(reference_file(S2_EXPORT))
    path = tmp_path / "model.pth"
    export_sovits(fixture.state_dict, fixture.config, path, info="old")
    before = _sha256(path)

    def failing_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(formats.torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        export_sovits(fixture.state_dict, fixture.config, path, info="new")
    assert _sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


def test_export_refuses_unsupported_or_inconsistent_requests(tmp_path, reference_file):
    fixture = load_gsv_file(reference_file(S2_EXPORT))
    with pytest.raises(UnsupportedModelError, match="v3"):
        export_sovits(fixture.state_dict, fixture.config, tmp_path / "a.pth", info="x", version="v3")
    with pytest.raises(IncompatibleWeightsError, match="v2 model"):
        export_sovits(fixture.state_dict, fixture.config, tmp_path / "a.pth", info="x", version="v2Pro")
    with pytest.raises(IncompatibleWeightsError, match="v2 model"):
        export_sovits(fixture.state_dict, fixture.config, tmp_path / "b.pth", info="x", version="v1")
    with pytest.raises(ValueError, match="'model' and 'data'"):
        export_sovits(fixture.state_dict, {"model": {}}, tmp_path / "c.pth", info="x")
    assert not any(tmp_path.iterdir())


def test_export_warns_about_widths_official_inference_cannot_build(tmp_path, reference_file):
    fixture = load_gsv_file(reference_file(S2_EXPORT))
    config = {**fixture.config, "model": {**fixture.config["model"], "posterior_layers": 4}}
    with pytest.warns(formats.OfficialCompatibilityWarning, match="posterior_layers=4"):
        export_sovits(fixture.state_dict, config, tmp_path / "odd.pth", info="x")
    assert load_gsv_file(tmp_path / "odd.pth").config["model"]["posterior_layers"] == 4


def test_export_gpt_round_trip(tmp_path, reference_file):
    fixture = load_gsv_file(reference_file(S1_EXPORT))
    bare = {k[len("model."):]: v.float() for k, v in fixture.state_dict.items()}
    path = tmp_path / "GPT_weights_v2" / gpt_export_name("voice", 3)
    export_gpt(bare, fixture.config, path, info="GPT-e3")
    loaded = torch.load(path, map_location="cpu", weights_only=True)  # plain data only
    assert set(loaded) == {"weight", "config", "info"}
    assert set(loaded["weight"]) == set(fixture.state_dict)
    for key, tensor in loaded["weight"].items():
        assert tensor.dtype == torch.float16
        assert torch.equal(tensor, fixture.state_dict[key])
    assert loaded["config"] == fixture.config
    assert loaded["info"] == "GPT-e3"
    gsv = load_gsv_file(path)
    assert gsv.model == "gpt" and gsv.epoch == 3


def test_load_weights_into_the_wrong_kind_of_model_is_refused(reference_file):
    gsv = load_gsv_file(reference_file(S1_EXPORT))
    with pytest.raises(IncompatibleWeightsError, match="none of the keys"):
        load_weights_into(torch.nn.Linear(2, 2), gsv)


def test_gpt_version_from_phoneme_table():
    assert detect_version({"model.ar_text_embedding.word_embeddings.weight": torch.zeros(512, 4)})[0] == "v1"
    assert detect_version({"model.ar_text_embedding.word_embeddings.weight": torch.zeros(732, 4)})[0] == "v2"


# ----------------------------------------------------------------------------------------------
# v2Pro / v2ProPlus
# ----------------------------------------------------------------------------------------------

PRO_EXPORTS = {"v2Pro": ("s2_small_v2pro_export.pth", b"05"),
               "v2ProPlus": ("s2_small_v2proplus_export.pth", b"06")}


@pytest.mark.parametrize("version", list(PRO_EXPORTS))
def test_official_pro_export_loads_for_training(reference_file, version):
    name, header = PRO_EXPORTS[version]
    path = reference_file(name)
    assert path.read_bytes()[:2] == header
    gsv = load_gsv_file(path)
    assert (gsv.header, gsv.version, gsv.supported, gsv.kind) == (header, version, True, "export")
    assert gsv.notes == []  # header, weights and config agree
    assert gsv.info == f"{gsv.epoch}epoch_{gsv.step}iteration"
    # The weights alone tell the flavour too.
    assert detect_version(gsv.state_dict)[0] == version
    config = _small_config(gsv)
    assert config.version == version
    model = _generator_class()(config)
    report = load_weights_into(model, gsv)
    assert report.missing == [] and report.unexpected == []
    assert report.expected_missing and all(k.startswith("enc_q.") for k in report.expected_missing)


@pytest.mark.parametrize("version", list(PRO_EXPORTS))
def test_pro_export_round_trip_with_header(tmp_path, reference_file, fake_hparams_module, version):
    synthesizer = _generator_class()
    name, header = PRO_EXPORTS[version]
    fixture = load_gsv_file(reference_file(name))
    config = _small_config(fixture)
    model = synthesizer(config)
    load_weights_into(model, fixture)
    full_config = {"train": fixture.config["train"], "data": fixture.config["data"],
                   "model": config.to_dict()}
    path = tmp_path / formats.sovits_weight_dir(version) / sovits_export_name("voice", 3, 30)
    export_sovits(model.state_dict(), full_config, path, info=sovits_export_info(3, 30), version=version)
    assert path.parent.name == f"SoVITS_weights_{version}"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left

    data = path.read_bytes()
    assert data[:2] == header and data[2:4] == b"\x03\x04"
    # Plain torch.load cannot read it, as with the official files ...
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    # ... and with PK put back it is plain data.
    loaded = torch.load(io.BytesIO(b"PK" + data[2:]), map_location="cpu", weights_only=True)
    assert set(loaded) == {"weight", "config", "info"}
    assert loaded["info"] == "3epoch_30iteration"
    assert isinstance(loaded["config"], dict)
    assert loaded["config"]["version"] == loaded["config"]["model"]["version"] == version
    weights = loaded["weight"]
    assert set(weights) == {k for k in model.state_dict() if not k.startswith("enc_q.")}
    assert set(weights) == set(fixture.state_dict)
    for key, tensor in weights.items():
        assert tensor.dtype == fixture.state_dict[key].dtype, key
        assert torch.equal(tensor, fixture.state_dict[key]), key

    # Official inference builds the model from the stored config.
    dict_s2 = _official_load(path, fake_hparams_module)
    hps = _AttrDict(dict_s2["config"])
    built = _official_synthesizer_call(hps.data.filter_length // 2 + 1,
                                       hps.train.segment_size // hps.data.hop_length,
                                       n_speakers=hps.data.n_speakers, **hps.model)
    assert built["version"] == version

    again = load_gsv_file(path)
    assert (again.header, again.version, again.info) == (header, version, "3epoch_30iteration")
    assert again.notes == []
    fresh = synthesizer(SoVITSConfig.from_dict(again.config["model"], again.config["data"],
                                               again.config["train"]))
    report = load_weights_into(fresh, again)
    assert report.missing == [] and report.unexpected == []


@pytest.mark.parametrize("version", list(PRO_EXPORTS))
def test_pro_pretrained_style_file_loads_with_enc_q(tmp_path, reference_file, version):
    """`s2Gv2Pro.pth`-style: a plain zip {"weight": full state dict}, no header, no config."""
    synthesizer = _generator_class()
    fixture = load_gsv_file(reference_file(PRO_EXPORTS[version][0]))
    config = _small_config(fixture)
    torch.manual_seed(0)
    source = synthesizer(config)
    path = tmp_path / f"s2G{version}.pth"
    torch.save({"weight": source.state_dict()}, path)
    gsv = load_gsv_file(path)
    assert (gsv.kind, gsv.header, gsv.version) == ("pretrained", None, version)
    target = synthesizer(config)
    report = load_weights_into(target, gsv, strict=True)
    assert report.complete
    for key, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], tensor), key


def test_v2_file_into_pro_config_names_model_version(reference_file):
    synthesizer = _generator_class()
    v2 = load_gsv_file(reference_file(S2_EXPORT))
    pro_config = SoVITSConfig.from_dict({**v2.config["model"], "version": "v2Pro"}, v2.config["data"])
    with pytest.raises(IncompatibleWeightsError) as info:
        load_weights_into(synthesizer(pro_config), v2)
    message = str(info.value)
    assert "is a v2 model" in message and "sv_emb.*" in message and "ge_to512.*" in message
    assert "set model.version: v2 " in message and "the config says v2Pro" in message


def test_pro_file_into_other_configs_names_model_version(reference_file):
    synthesizer = _generator_class()
    plus = load_gsv_file(reference_file(PRO_EXPORTS["v2ProPlus"][0]))
    as_v2 = SoVITSConfig.from_dict({**plus.config["model"], "version": "v2", "gin_channels": 512},
                                   plus.config["data"])
    with pytest.raises(IncompatibleWeightsError, match=r"v2ProPlus model.*set model\.version: v2ProPlus"):
        load_weights_into(synthesizer(as_v2), plus)
    # v2Pro and v2ProPlus differ in decoder widths only: the header (and shapes) say which it is.
    as_pro = SoVITSConfig.from_dict({**plus.config["model"], "version": "v2Pro"}, plus.config["data"])
    with pytest.raises(IncompatibleWeightsError, match=r"header '06'.*set model\.version: v2ProPlus"):
        check_compatibility(plus, as_pro)


def test_weight_dirs_and_pretrained_names_per_version():
    assert formats.sovits_weight_dir("v1") == "SoVITS_weights"
    assert formats.sovits_weight_dir("v2") == "SoVITS_weights_v2"
    assert formats.sovits_weight_dir("v2Pro") == "SoVITS_weights_v2Pro"
    assert formats.sovits_weight_dir("v2ProPlus") == "SoVITS_weights_v2ProPlus"
    assert formats.gpt_weight_dir("v1") == "GPT_weights"
    assert formats.gpt_weight_dir("v2Pro") == "GPT_weights_v2Pro"
    assert formats.gpt_weight_dir("v2ProPlus") == "GPT_weights_v2ProPlus"
    pro = formats.official_pretrained("v2ProPlus")
    assert pro["s2G"].endswith("v2Pro/s2Gv2ProPlus.pth") and pro["s2D"].endswith("v2Pro/s2Dv2ProPlus.pth")
    assert formats.official_pretrained("v2Pro")["s1"].endswith("s1v3.ckpt")
    with pytest.raises(ValueError, match="unknown GPT-SoVITS version"):
        formats.sovits_weight_dir("v5")
