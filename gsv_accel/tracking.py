"""Run logging and experiment trackers (W&B and TensorBoard through Accelerate).

* `train.log` in the run folder receives every log record of the main process (and warnings of the
  others, tagged with their rank); the console shows INFO and up.
* W&B runs online only when credentials exist; otherwise it runs offline (files under
  `<run>/wandb/`, upload later with `wandb sync`). An explicit `WANDB_MODE` always wins. A resumed
  run passes the saved run id with `resume="allow"`, so online it continues the same W&B run.
* TensorBoard event files go to `<run>/tensorboard/<project>/`.
"""

from __future__ import annotations

import logging
import netrc
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LOG_FORMAT = "%(asctime)s %(levelname)s [rank %(rank)s] %(name)s: %(message)s"


@dataclass
class TrackingConfig:
    wandb: bool = True
    tensorboard: bool = True
    project: str = "gsv_accel"
    run_name: str | None = None
    # Media logged at each validation: this many generated utterances (audio + mel image).
    num_samples: int = 2


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(run_dir: Path, rank: int, is_main: bool) -> Path:
    """Send the `gsv_accel` and `recipes` loggers to `<run_dir>/train.log` and the console.

    Every process appends to the same file: the main one at INFO, the others only warnings, so a
    problem on any rank is on record without repeating the main process's messages.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    formatter = logging.Formatter(LOG_FORMAT)
    # On the handlers, not the loggers: logger filters do not see records of child loggers.
    rank_filter = _RankFilter(rank)
    file_handler = logging.FileHandler(log_path, encoding="utf-8")
    file_handler.setFormatter(formatter)
    file_handler.setLevel(logging.INFO if is_main else logging.WARNING)
    file_handler.addFilter(rank_filter)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(rank_filter)
    console.setFormatter(formatter)
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    for name in ("gsv_accel", "recipes", "__main__"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        for handler in (file_handler, console):
            logger.addHandler(handler)
    return log_path


def wandb_mode() -> str:
    """'online' when W&B credentials are available, else 'offline'; WANDB_MODE overrides both."""
    explicit = os.environ.get("WANDB_MODE")
    if explicit:
        return explicit
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def tracker_names(cfg: TrackingConfig) -> list[str]:
    names = []
    if cfg.wandb:
        names.append("wandb")
    if cfg.tensorboard:
        names.append("tensorboard")
    return names


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def start_trackers(accelerator, cfg: TrackingConfig, run_dir: Path, config: dict[str, Any],
                   run_id: str) -> None:
    """Start the trackers the Accelerator was created with (`log_with=tracker_names(cfg)`)."""
    init_kwargs: dict[str, Any] = {}
    if cfg.wandb:
        mode = wandb_mode()
        os.environ.setdefault("WANDB_SILENT", "true")
        init_kwargs["wandb"] = {"id": run_id, "resume": "allow", "dir": str(run_dir), "mode": mode,
                                "name": cfg.run_name or run_dir.name}
        logging.getLogger(__name__).info("W&B run %s in %s mode", run_id, mode)
    accelerator.init_trackers(cfg.project, config=_flatten(config), init_kwargs=init_kwargs)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> flat dotted keys with scalar values (TensorBoard's hparams need scalars)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{dotted}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[dotted] = "None" if value is None else value
        else:
            flat[dotted] = str(value)
    return flat


def mel_to_image(mel: np.ndarray) -> np.ndarray:
    """Log-mel (n_mels, T) -> uint8 greyscale image (n_mels, T, 3), low frequencies at the bottom."""
    low, high = float(mel.min()), float(mel.max())
    scaled = (mel - low) / max(high - low, 1e-6)
    image = (scaled[::-1] * 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2)


def log_media(accelerator, step: int, samples: list[dict[str, Any]], sampling_rate: int) -> None:
    """Log generated audio and mel images: each sample is {name, audio (T,), mel (n_mels, T)}.

    Main process only; a tracker that is not configured is skipped.
    """
    if not accelerator.is_main_process or not samples:
        return
    names = {tracker.name for tracker in accelerator.trackers}
    if "wandb" in names:
        import wandb

        run = accelerator.get_tracker("wandb", unwrap=True)
        payload = {}
        for sample in samples:
            payload[f"val_audio/{sample['name']}"] = wandb.Audio(sample["audio"], sample_rate=sampling_rate)
            payload[f"val_mel/{sample['name']}"] = wandb.Image(mel_to_image(sample["mel"]))
        run.log(payload, step=step)
    if "tensorboard" in names:
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        for sample in samples:
            audio = np.clip(sample["audio"], -1.0, 1.0)[None, :]
            writer.add_audio(f"val_audio/{sample['name']}", audio, step, sample_rate=sampling_rate)
            writer.add_image(f"val_mel/{sample['name']}", mel_to_image(sample["mel"]), step,
                             dataformats="HWC")
