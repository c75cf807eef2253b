"""Run logging and experiment trackers (W&B and TensorBoard through Accelerate).

* `train.log` in the run folder receives every log record of the main process (and warnings of the
  others, tagged with their rank), from the first one on, once the run's inputs were found good;
  the console shows INFO on stdout, warnings and errors on stderr, above the progress bar.
* W&B runs online only when credentials exist; otherwise it runs offline (files under
  `<run>/wandb/`, upload later with `wandb sync`). An explicit `WANDB_MODE` always wins. A resumed
  run passes the saved run id with `resume="allow"`, so online it continues the same W&B run.
* TensorBoard event files go to `<run>/tensorboard/<project>/`.
* `<run>/metrics.jsonl` (`append_metrics_log`): one JSON object per log call of the main process,
  `{"step", "epoch", "time", <name>: <value>, ...}` (training rows every `log_every_n_steps`,
  validation rows with the `plateau/*` values), appended and flushed line by line. A resumed run
  appends the steps after its checkpoint again: for a step, the last line holding a key wins.
  `gsv-accel report` reads it; it needs no tracker.
* At each validation W&B also gets a `val_samples` table (step, name, text, real audio, generated
  audio, mel image, transcript, the sample's metrics), so epochs can be compared by ear.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import netrc
import os
import sys
import time
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


class _ConsoleFilter(logging.Filter):
    """Console handlers skip records logged with `extra={"console": False}` (a user error that the
    command line prints once itself) and keep to their level band (stdout below WARNING)."""

    def __init__(self, below: int | None = None) -> None:
        super().__init__()
        self.below = below

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):
            return False
        return self.below is None or record.levelno < self.below


class _TqdmStreamHandler(logging.StreamHandler):
    """Writes through `tqdm.write`, so a log line never lands on the same line as a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 (logging must never raise; the stdlib handler does the same)
            self.handleError(record)


_LOGGERS = ("gsv_accel", "recipes", "__main__")


def setup_logging(rank: int, is_main: bool) -> None:
    """Console logging for the `gsv_accel` and `recipes` loggers, and a buffer for `train.log`.

    Information goes to stdout, warnings and errors to stderr (other ranks: warnings only). Nothing
    is written to the run folder yet: records are kept in memory until `open_log_file`, which the
    session calls once the run's inputs are known to be good, so a run refused for bad input leaves
    no trace in the run folder.
    """
    rank_filter = _RankFilter(rank)
    formatter = logging.Formatter(LOG_FORMAT)
    level = logging.INFO if is_main else logging.WARNING
    stdout = _TqdmStreamHandler(sys.stdout)
    stdout.addFilter(_ConsoleFilter(below=logging.WARNING))
    stderr = _TqdmStreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING)
    stderr.addFilter(_ConsoleFilter())
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    buffer.setLevel(level)
    for handler in (stdout, stderr, buffer):
        handler.addFilter(rank_filter)
        handler.setFormatter(formatter)
    stdout.setLevel(level)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        for handler in (stdout, stderr, buffer):
            logger.addHandler(handler)


def open_log_file(run_dir: Path) -> Path:
    """Start appending to `<run_dir>/train.log` (created with the folder), beginning with the records
    buffered since `setup_logging`. Every process appends to the same file: the main one at INFO,
    the others only warnings, tagged with their rank."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    file_handler: logging.FileHandler | None = None
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if not isinstance(handler, logging.handlers.MemoryHandler):
                continue
            if file_handler is None:
                file_handler = logging.FileHandler(log_path, encoding="utf-8")
                file_handler.setLevel(handler.level)
                file_handler.setFormatter(handler.formatter)
                for log_filter in handler.filters:
                    file_handler.addFilter(log_filter)
                handler.setTarget(file_handler)
                handler.flush()
            logger.removeHandler(handler)
            logger.addHandler(file_handler)
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


def media_key(name: str) -> str:
    """Tracker key part of a validation utterance: its name without the audio file's extension."""
    return Path(name).stem if Path(name).suffix.lower() in AUDIO_SUFFIXES else name


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma")


METRICS_LOG = "metrics.jsonl"


def append_metrics_log(run_dir: Path, step: int, epoch: int, values: dict[str, Any]) -> None:
    """Append one row to `<run>/metrics.jsonl` (main process; see the module docstring). Non-finite
    values are written as null (strict JSON)."""
    row: dict[str, Any] = {"step": step, "epoch": epoch, "time": round(time.time(), 3)}
    for key, value in values.items():
        number = float(value)
        row[key] = number if math.isfinite(number) else None
    with open(Path(run_dir) / METRICS_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


SAMPLE_TABLE_COLUMNS = ("step", "name", "text", "real audio", "generated audio", "generated mel",
                        "transcript")


def samples_table(wandb, step: int, samples: list[dict[str, Any]], sampling_rate: int):
    """The `val_samples` W&B table of one validation: one row per sample, a column per metric."""
    metric_names = sorted({key for sample in samples for key in (sample.get("metrics") or {})})
    table = wandb.Table(columns=[*SAMPLE_TABLE_COLUMNS, *metric_names])
    for sample in samples:
        real = sample.get("real_audio")
        metrics = sample.get("metrics") or {}
        table.add_data(step, media_key(sample["name"]), sample.get("text", ""),
                       None if real is None else wandb.Audio(real, sample_rate=sampling_rate),
                       None if sample.get("audio") is None else wandb.Audio(sample["audio"],
                                                                            sample_rate=sampling_rate),
                       wandb.Image(mel_to_image(sample["mel"])), sample.get("transcript", ""),
                       *[metrics.get(name) for name in metric_names])
    return table


def log_media(accelerator, step: int, samples: list[dict[str, Any]], sampling_rate: int) -> None:
    """Log generated audio and mel images: each sample is {name, audio (T,), mel (n_mels, T)} and
    optionally real_audio (T',), text, transcript and metrics ({name: value} of that sample). A sample
    without `audio` (a mel-only model without a vocoder) logs its mel image only.

    W&B: `val_audio/<name>`, `val_mel/<name>` and the `val_samples` table; TensorBoard: the audio and
    mel images. Main process only; a tracker that is not configured is skipped.
    """
    if not accelerator.is_main_process or not samples:
        return
    names = {tracker.name for tracker in accelerator.trackers}
    if "wandb" in names:
        import wandb

        run = accelerator.get_tracker("wandb", unwrap=True)
        payload = {}
        for sample in samples:
            key = media_key(sample["name"])
            if sample.get("audio") is not None:
                payload[f"val_audio/{key}"] = wandb.Audio(sample["audio"], sample_rate=sampling_rate)
            payload[f"val_mel/{key}"] = wandb.Image(mel_to_image(sample["mel"]))
        payload["val_samples"] = samples_table(wandb, step, samples, sampling_rate)
        run.log(payload, step=step)
    if "tensorboard" in names:
        writer = accelerator.get_tracker("tensorboard", unwrap=True)
        for sample in samples:
            key = media_key(sample["name"])
            if sample.get("audio") is not None:
                audio = np.clip(sample["audio"], -1.0, 1.0)[None, :]
                writer.add_audio(f"val_audio/{key}", audio, step, sample_rate=sampling_rate)
            writer.add_image(f"val_mel/{key}", mel_to_image(sample["mel"]), step, dataformats="HWC")
