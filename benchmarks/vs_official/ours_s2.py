"""gsv_accel's side of the S2 benchmarks: the real `recipes/s2.py` recipe, set up by its own `setup()`
for the default v2 / v2Pro config, with only its dataset replaced (the benchmarks feed synthetic
batches, the same ones they give the official trainer), and the synthetic batches themselves."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `recipes` is not an installed package

from recipes.s2 import S2Config, S2Recipe  # noqa: E402

CONFIGS = {"v2": REPO / "recipes" / "configs" / "s2_v2.yaml",
           "v2Pro": REPO / "recipes" / "configs" / "s2_v2pro.yaml"}
# Official s2.json / s2v2Pro.json: the model sections the official trainer builds.
OFFICIAL_CONFIGS = {"v2": "s2.json", "v2Pro": "s2v2Pro.json"}


class DatalessS2Recipe(S2Recipe):
    """S2Recipe whose `_setup_data` opens no dataset: a sampler over placeholder lengths (the session
    checkpoints its state) and the spectrogram features the G step uses. Everything else (models,
    optimizer groups, `accelerator.prepare`, the stepper, `session.attach`, `train_step`, `session.save`)
    is the recipe's own code."""

    def _setup_data(self) -> None:
        from gsv_accel.audio import SpectrogramExtractor
        from gsv_accel.data.sampler import LengthBucketBatchSampler

        cfg = self.cfg
        self.sampler = LengthBucketBatchSampler([100] * 8, cfg.data.batch_size, cfg.data.bucket_boundaries,
                                                seed=cfg.run.seed)
        self.loader = None
        self.features = SpectrogramExtractor(cfg.data.spectrogram()).to(self.accelerator.device)


def quiet_logs() -> None:
    """The recipe logs every checkpoint file at INFO (to the console and train.log): warnings only."""
    for name in ("", "accelerate", "gsv_accel", "recipes"):
        logging.getLogger(name).setLevel(logging.WARNING)


def build_recipe(version: str, run_dir: Path, threads: int) -> DatalessS2Recipe:
    """The default `version` recipe (recipes/configs/s2_v2.yaml or s2_v2pro.yaml), set up in `run_dir`,
    trackers off."""
    from gsv_accel.config import load_config

    cfg = load_config(S2Config, CONFIGS[version], overrides(run_dir, threads))
    return set_up(DatalessS2Recipe(cfg, resume=None))


def overrides(run_dir: Path, threads: int) -> list[str]:
    """The benchmark's run folder and threads, trackers off."""
    return [f"run.output_dir={run_dir}", f"run.cpu_threads={threads}", "tracking.wandb=false",
            "tracking.tensorboard=false"]


def set_up(recipe):
    """The recipe's own `setup()`, quietly; returns the recipe."""
    # The recipe's console log handler binds to stderr at set-up: keep it off the benchmark's output.
    with contextlib.redirect_stderr(io.StringIO()):
        recipe.setup()
    quiet_logs()
    return recipe


def synthetic_batch(batch: int, seconds: float, *, sv_dim: int | None, spectrogram, ssl_dim: int = 768,
                    vocab: int = 732, seed: int = 0) -> dict[str, torch.Tensor]:
    """One training batch of `batch` items of `seconds` each (50 spectrogram frames per second at the
    official 32 kHz / hop 640), ~12 phones per second; `spectrogram(wav)` gives the (B, F, T) linear
    spectrogram (the official function, so both sides train on the same numbers)."""
    generator = torch.Generator().manual_seed(seed)
    frames = int(seconds * 50)
    frames -= frames % 2
    wav = torch.randn(batch, frames * 640, generator=generator) * 0.1
    spec = spectrogram(wav)[:, :, :frames].contiguous()
    text_len = max(2, int(seconds * 12))
    out = {
        "ssl": torch.randn(batch, ssl_dim, frames, generator=generator),
        "spec": spec,
        "spec_lengths": torch.full((batch,), frames, dtype=torch.long),
        "wav": wav.unsqueeze(1),
        "wav_lengths": torch.full((batch,), frames * 640, dtype=torch.long),
        "text": torch.randint(1, vocab, (batch, text_len), generator=generator),
        "text_lengths": torch.full((batch,), text_len, dtype=torch.long),
    }
    if sv_dim is not None:
        out["sv_emb"] = torch.randn(batch, sv_dim, generator=generator)
    return out


# ------------------------------------------------------------------------------------ v3/v4 (CFM)

CFM_CONFIG = REPO / "recipes" / "configs" / "s2_v3_lora.yaml"


def build_cfm_recipe(run_dir: Path, threads: int):
    """The default v3 LoRA recipe of `recipes/s2_cfm.py` (recipes/configs/s2_v3_lora.yaml, rank 32), set
    up by its own `setup()` in `run_dir` with the dataset replaced as for `build_recipe`."""
    from gsv_accel.config import load_config
    from gsv_accel.data.sampler import LengthBucketBatchSampler
    from recipes.s2_cfm import CFMConfig, CFMRecipe

    class DatalessCFMRecipe(CFMRecipe):
        def _setup_data(self) -> None:
            cfg = self.cfg
            self.sampler = LengthBucketBatchSampler([100] * 8, cfg.data.batch_size,
                                                    cfg.data.bucket_boundaries, seed=cfg.run.seed)
            self.loader = None

    cfg = load_config(CFMConfig, CFM_CONFIG, overrides(run_dir, threads))
    return set_up(DatalessCFMRecipe(cfg, resume=None))


def synthetic_cfm_batch(batch: int, seconds: float, *, spectrogram, ssl_dim: int = 768, vocab: int = 732,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """`synthetic_batch` plus the v3 target: normalised 100-bin mels at 24 kHz / hop 256 (93.75 frames
    per second, 1.875 per spectrogram frame), random values in the normalised range."""
    out = synthetic_batch(batch, seconds, sv_dim=None, spectrogram=spectrogram, ssl_dim=ssl_dim,
                          vocab=vocab, seed=seed)
    frames = int(out["spec"].size(-1) * 1.875)
    generator = torch.Generator().manual_seed(seed + 1)
    out["mel"] = torch.rand(batch, 100, frames, generator=generator) * 2 - 1
    out["mel_lengths"] = torch.full((batch,), frames, dtype=torch.long)
    out["ssl_lengths"] = out["spec_lengths"].clone()
    return out
