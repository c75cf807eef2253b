"""Validation samples kept in the run folder, for people to listen to (and for `gsv-accel report`).

At each validation the session (main process) writes the recipe's media (`ValidationResult.media`):

    <run>/samples/step_<8 digits>/
        <name>.wav            the generated utterance (16-bit PCM at the validation's sampling rate)
        <name>.mel.png        its log-mel image (low frequencies at the bottom)
        metrics.json          step, epoch, the validation's metrics, the plateau decision, and per
                              sample: name, files, text, transcript, the sample's own metrics
    <run>/samples/real/
        <name>.wav            the real utterance (written once: it never changes)
        <name>.mel.png

A step folder is built as `.incomplete-step_<8 digits>/` and renamed into place when complete, so a
reader never sees half of one; a validation of the same step again (after a resume) replaces it, and
what a killed process left half-written is removed at the next save. The real files are written
atomically. `<name>` is the utterance name without its audio extension, with
characters other than letters, digits, `-`, `_` and `.` replaced by `_`.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write, fsync_dir
from .tracking import media_key, mel_to_image

SAMPLES_DIR = "samples"
REAL_DIR = "real"
METRICS_FILE = "metrics.json"


def step_folder_name(step: int) -> str:
    return f"step_{step:08d}"


def sample_stem(name: str) -> str:
    """File-name stem of a validation utterance (see the module docstring)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", media_key(str(name))).lstrip(".")
    return stem or "sample"


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit greyscale (H, W) or RGB (H, W, 3) uint8 image as PNG bytes (zlib, no dependency)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    height, width = image.shape[:2]
    color_type = 0 if image.ndim == 2 else 2

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    rows = image.reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def mel_png(mel: np.ndarray) -> bytes:
    return png_bytes(mel_to_image(np.asarray(mel, dtype=np.float32))[:, :, 0])


def wav_bytes(audio: np.ndarray, sampling_rate: int) -> bytes:
    """16-bit PCM WAV bytes of a float waveform (clipped to [-1, 1])."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sampling_rate, format="WAV",
             subtype="PCM_16")
    return buffer.getvalue()


def _write_synced(path: Path, data: bytes) -> None:
    """Write and fsync one file of the step folder (the folder's rename makes the whole set visible)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _finite(values: dict[str, Any]) -> dict[str, float | None]:
    """Metrics as JSON numbers (NaN/inf become null: strict JSON has no such numbers)."""
    out = {}
    for key, value in values.items():
        number = float(value)
        out[key] = number if np.isfinite(number) else None
    return out


def save_validation_samples(run_dir: Path, *, step: int, epoch: int, media: list[dict[str, Any]],
                            sampling_rate: int, metrics: dict[str, float], decision: str = "") -> Path:
    """Write one validation's samples and metrics under `<run>/samples/` (see the module docstring);
    returns the step folder. Call on the main process only."""
    root = Path(run_dir) / SAMPLES_DIR
    real_dir = root / REAL_DIR
    real_dir.mkdir(parents=True, exist_ok=True)
    final = root / step_folder_name(step)
    # Left by a process killed while writing (only the main process writes here).
    for leftover in (*root.glob(".incomplete-step_*"), *root.glob(".stale-step_*")):
        shutil.rmtree(leftover, ignore_errors=True)
    partial = root / f".incomplete-{final.name}"
    partial.mkdir()
    entries = []
    used: set[str] = set()
    for sample in media:
        stem = sample_stem(sample["name"])
        while stem in used:
            stem += "_"
        used.add(stem)
        entry: dict[str, Any] = {"name": str(sample["name"])}
        if sample.get("audio") is not None:  # mel-only models (v3/v4 without a vocoder) have none
            entry["audio"] = f"{stem}.wav"
            _write_synced(partial / entry["audio"], wav_bytes(sample["audio"], sampling_rate))
        if sample.get("mel") is not None:
            entry["mel"] = f"{stem}.mel.png"
            _write_synced(partial / entry["mel"], mel_png(sample["mel"]))
        if sample.get("real_audio") is not None:
            entry["real_audio"] = f"../{REAL_DIR}/{stem}.wav"
            if not (real_dir / f"{stem}.wav").is_file():
                data = wav_bytes(sample["real_audio"], sampling_rate)
                atomic_write(real_dir / f"{stem}.wav", lambda f, data=data: f.write(data), binary=True)
        if sample.get("real_mel") is not None:
            entry["real_mel"] = f"../{REAL_DIR}/{stem}.mel.png"
            if not (real_dir / f"{stem}.mel.png").is_file():
                data = mel_png(sample["real_mel"])
                atomic_write(real_dir / f"{stem}.mel.png", lambda f, data=data: f.write(data), binary=True)
        for key in ("text", "transcript"):
            if sample.get(key) is not None:
                entry[key] = str(sample[key])
        if sample.get("metrics"):
            entry["metrics"] = _finite(sample["metrics"])
        entries.append(entry)
    record = {"step": step, "epoch": epoch, "sampling_rate": sampling_rate, "metrics": _finite(metrics),
              "decision": decision, "samples": entries}
    _write_synced(partial / METRICS_FILE, json.dumps(record, indent=2, ensure_ascii=False).encode("utf-8"))
    fsync_dir(partial)
    if final.exists():  # the same step validated again (a resumed run): the new one replaces it
        stale = root / f".stale-{final.name}"
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    partial.rename(final)
    fsync_dir(root)
    return final
