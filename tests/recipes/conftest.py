"""Fixtures for recipe tests: the demo corpus prepared once per session, and a runner that launches
the S2 recipe as a real process (so it can be killed, signalled and resumed like a user's run)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
S2_RECIPE = REPO / "recipes" / "s2.py"
DEMO_CONFIG = REPO / "recipes" / "configs" / "s2_demo.yaml"
S1_RECIPE = REPO / "recipes" / "s1.py"
S1_DEMO_CONFIG = REPO / "recipes" / "configs" / "s1_demo.yaml"
DEMO_SV = REPO / "demo" / "tiny_sv" / "eres2netv2_tiny.safetensors"


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    from gsv_accel.data.prepare import prepare

    out = tmp_path_factory.mktemp("demo_dataset") / "dataset"
    # With speaker-verification vectors: the demo config is v2Pro, the WebUI's default version.
    prepare(REPO / "demo" / "data" / "demo.list", out, REPO / "demo" / "tiny_hubert", sv_model=DEMO_SV)
    return out


def recipe_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


class S2Run:
    """One run folder of the S2 recipe, driven through subprocesses."""

    recipe = S2_RECIPE
    config = DEMO_CONFIG

    def __init__(self, run_dir: Path, dataset: Path, *overrides: str) -> None:
        self.run_dir = run_dir
        self.overrides = [f"run.output_dir={run_dir}", f"data.dataset={dataset}", "tracking.wandb=false",
                          "tracking.tensorboard=false", "run.cpu_threads=1", *overrides]

    def command(self, *extra: str, processes: int = 1) -> list[str]:
        if processes == 1:
            launcher = [sys.executable, str(self.recipe)]
        else:
            # torchrun with ACCELERATE_USE_CPU (set in `run`): `accelerate launch --cpu` starts a single
            # process in Accelerate 1.15, and Accelerate treats torchrun's workers as MULTI_CPU (gloo)
            # only when told to use the CPU.
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={processes}", str(self.recipe)]
        return [*launcher, "--config", str(self.config), *self.overrides, *extra]

    def run(self, *extra: str, processes: int = 1, expect: int = 0, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run to the end; `env` adds variables (e.g. GSV_ACCEL_FAULT for fault injection)."""
        env = {**recipe_env(), **(env or {})}
        if processes > 1:
            env["ACCELERATE_USE_CPU"] = "true"
        result = subprocess.run(self.command(*extra, processes=processes), cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != expect:
            raise AssertionError(f"exit code {result.returncode} (expected {expect})\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
        return result

    def start(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.command(*extra), cwd=REPO, env={**recipe_env(), **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_for_log(self, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        log = self.run_dir / "train.log"
        while time.monotonic() < deadline:
            if log.is_file() and text in log.read_text():
                return
            if process.poll() is not None:
                raise AssertionError(f"run ended (code {process.returncode}) before logging {text!r}")
            time.sleep(0.05)
        process.kill()
        raise AssertionError(f"timed out waiting for {text!r} in {log}")

    def kill(self, process: subprocess.Popen, signum: int = signal.SIGKILL) -> int:
        process.send_signal(signum)
        return process.wait(timeout=120)

    @property
    def exports(self) -> Path:
        """Where the run's exports go: the WebUI's folder for the version (demo: v2Pro)."""
        return self.run_dir / "exports" / self.export_folder

    export_folder = "SoVITS_weights_v2Pro"

    @property
    def log(self) -> str:
        return (self.run_dir / "train.log").read_text()

    def checkpoints(self) -> list[Path]:
        root = self.run_dir / "checkpoints"
        return sorted(p for p in root.iterdir() if p.name.startswith("step_")) if root.is_dir() else []

    def final_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        latest = self.checkpoints()[-1]
        return {"generator": load_file(str(latest / "model.safetensors")),
                "discriminator": load_file(str(latest / "model_1.safetensors"))}


def load_recipe_module(name: str):
    """A recipe script (`recipes/<name>.py`) as a module, for its config classes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{name}_for_tests", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


class CFMRun(S2Run):
    """One run folder of the v3/v4 (flow-matching) recipe; the tiny v3 LoRA demo config."""

    recipe = REPO / "recipes" / "s2_cfm.py"
    config = REPO / "recipes" / "configs" / "s2_cfm_demo.yaml"
    export_folder = "SoVITS_weights_v3"

    def final_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"model": load_file(str(self.checkpoints()[-1] / "model.safetensors"))}


class S1Run(S2Run):
    """One run folder of the S1 (GPT) recipe."""

    recipe = S1_RECIPE
    config = S1_DEMO_CONFIG
    export_folder = "GPT_weights_v2Pro"

    def final_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"gpt": load_file(str(self.checkpoints()[-1] / "model.safetensors"))}


def run_in_two_legs(run: S2Run, stop_at: int, end: int | None = None) -> None:
    """Run to optimizer step `stop_at` (train.max_steps), then `--resume auto` to step `end` (None: the
    end the settings give), and check the second leg resumed from the checkpoint of step `stop_at`."""
    run.overrides.append(f"train.max_steps={stop_at}")
    run.run()
    run.overrides[-1] = f"train.max_steps={'null' if end is None else end}"
    run.run("--resume", "auto")
    assert f"resumed from {run.run_dir / 'checkpoints' / f'step_{stop_at:08d}'}: step {stop_at}," in run.log


def load_sovits_export_the_official_way(export: Path, info: str) -> dict[str, torch.Tensor]:
    """Load an S2 export as GPT-SoVITS inference does (`process_ckpt.load_sovits_new`: a `05`/`06`
    header of v2Pro/v2ProPlus files is turned back into the zip magic `PK`, then plain `torch.load`;
    the config used as attributes, the generator built from it and `load_state_dict(strict=False)`
    with only `enc_q.*` missing); checks the fields, the header against the version and fp16 storage.
    Returns the weights."""
    import io

    from gsv_accel.models.sovits import SynthesizerTrn
    from gsv_accel.models.sovits.config import SoVITSConfig

    data = export.read_bytes()
    header = data[:2]
    if header != b"PK":
        data = b"PK" + data[2:]
    raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    assert set(raw) == {"weight", "config", "info"} and raw["info"] == info
    version = raw["config"]["model"]["version"]
    assert header == {"v2Pro": b"05", "v2ProPlus": b"06"}.get(version, b"PK"), (header, version)
    model_cfg = dict(raw["config"]["model"])
    model_cfg["spec_channels"] = raw["config"]["data"]["filter_length"] // 2 + 1
    model_cfg["segment_size"] = raw["config"]["train"]["segment_size"] // raw["config"]["data"]["hop_length"]
    generator = SynthesizerTrn(SoVITSConfig.from_dict(model_cfg))
    missing, unexpected = generator.load_state_dict(raw["weight"], strict=False)
    assert not unexpected and missing and all(key.startswith("enc_q.") for key in missing)
    assert all(t.dtype == torch.float16 for t in raw["weight"].values() if t.is_floating_point())
    return raw["weight"]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for model in a:
        assert a[model].keys() == b[model].keys()
        for key, tensor in a[model].items():
            if atol == 0.0:
                assert torch.equal(tensor, b[model][key]), f"{model}.{key} differs"
            else:
                torch.testing.assert_close(tensor, b[model][key], atol=atol, rtol=0, msg=f"{model}.{key}")


@pytest.fixture(scope="session")
def demo_dataset_s1(tmp_path_factory) -> Path:
    """The demo corpus with GPT-stage features: semantic codes from a tiny S2 model (random weights,
    codebook marked initialised, exported the GPT-SoVITS way) and the tiny random BERT."""
    from scripts.make_demo_s1_dataset import make_demo_s1_dataset

    return make_demo_s1_dataset(tmp_path_factory.mktemp("demo_dataset_s1"))


@pytest.fixture
def s1_run(tmp_path, demo_dataset_s1):
    def make(name: str = "run", *overrides: str) -> S1Run:
        return S1Run(tmp_path / name, demo_dataset_s1, *overrides)

    return make


@pytest.fixture
def s2_run(tmp_path, demo_dataset):
    def make(name: str = "run", *overrides: str, dataset: Path | None = None) -> S2Run:
        return S2Run(tmp_path / name, dataset or demo_dataset, *overrides)

    return make


NAN_STEP = 7  # the first step whose batch holds a NaN-poisoned utterance


@pytest.fixture(scope="session")
def nan_dataset(tmp_path_factory, demo_dataset) -> Path:
    """The demo dataset with NaN HuBERT features in one training utterance of step 7's batch (epoch 0,
    seed 1234): the batches before it are clean, so checkpoints exist to roll back to."""
    import datasets

    from gsv_accel.data.dataset import load_prepared
    from gsv_accel.data.sampler import DEFAULT_BOUNDARIES, LengthBucketBatchSampler

    train = load_prepared(demo_dataset).view("train")
    sampler = LengthBucketBatchSampler(train.lengths, 4, DEFAULT_BOUNDARIES, seed=1234)
    poisoned = sampler.global_batches(0)[NAN_STEP - 1][0]
    splits = datasets.load_from_disk(str(demo_dataset))

    def poison(row, index):
        if index == poisoned:
            row["ssl"] = np.full(len(row["ssl"]), np.nan, np.float16)
        return row

    splits["train"] = splits["train"].map(poison, with_indices=True, features=splits["train"].features)
    out = tmp_path_factory.mktemp("nan_dataset") / "dataset"
    splits.save_to_disk(str(out))
    shutil.copy(demo_dataset / "gsv_meta.json", out / "gsv_meta.json")
    return out
