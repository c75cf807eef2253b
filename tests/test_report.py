"""The run folder's samples (`gsv_accel.samples`), the validation score (`gsv_accel.session`) and
`gsv-accel report` on hand-made run folders (a run without metrics.jsonl, a run being written)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import soundfile as sf

from gsv_accel.cli import main as cli_main
from gsv_accel.config import ConfigError, ValidationConfig, load_config
from gsv_accel.report import build_report, choose_validations, line_chart, read_run
from gsv_accel.samples import png_bytes, save_validation_samples
from gsv_accel.session import add_score, scored_metrics


def _media(name: str, seconds: float = 0.5, rate: int = 32000) -> dict:
    t = np.arange(int(seconds * rate)) / rate
    return {"name": name, "audio": 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32),
            "mel": np.random.default_rng(0).normal(size=(16, 25)).astype(np.float32),
            "real_audio": 0.3 * np.sin(2 * np.pi * 330 * t).astype(np.float32),
            "real_mel": np.zeros((16, 25), np.float32), "text": "你好, world", "transcript": "ni hao",
            "metrics": {"val/mel_loss": 1.5, "val/cer": float("nan")}}


def test_samples_of_a_validation_are_written_and_a_later_one_of_the_same_step_replaces_them(tmp_path):
    folder = save_validation_samples(tmp_path, step=7, epoch=1, media=[_media("sub/zh 001.flac")],
                                     sampling_rate=32000, metrics={"val/mel_loss": 1.5}, decision="improved")
    assert folder == tmp_path / "samples" / "step_00000007"
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "zh_001.mel.png", "zh_001.wav"]
    record = json.loads((folder / "metrics.json").read_text())
    [sample] = record["samples"]
    assert sample["metrics"] == {"val/mel_loss": 1.5, "val/cer": None}  # NaN: strict JSON null
    audio, rate = sf.read(folder / sample["audio"])
    assert rate == 32000 and len(audio) == 16000
    real, _ = sf.read(folder / sample["real_audio"])
    assert np.abs(real).max() == pytest.approx(0.3, abs=1e-3)
    (tmp_path / "samples" / ".incomplete-step_00000003").mkdir()  # left by a killed process
    save_validation_samples(tmp_path, step=7, epoch=1, media=[_media("other.wav")], sampling_rate=32000,
                            metrics={"val/mel_loss": 1.0})
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "other.mel.png", "other.wav"]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["real", "step_00000007"]


def test_png_writer_gives_a_valid_greyscale_png():
    image = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
    data = png_bytes(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # IHDR: 4 x 3, 8 bits, greyscale; IDAT decompresses to the rows, each after a filter byte 0.
    assert data[16:24] == (4).to_bytes(4, "big") + (3).to_bytes(4, "big") and data[24:26] == b"\x08\x00"
    length = int.from_bytes(data[33:37], "big")
    assert zlib.decompress(data[41:41 + length]) == b"".join(b"\x00" + row.tobytes() for row in image)


def test_score_is_the_weighted_sum_and_names_only_reported_metrics():
    assert scored_metrics(("val/mel_loss",), {}) == ("val/mel_loss",)
    assert scored_metrics(("val/mel_loss", "val/speaker_sim"), {"val/speaker_sim": 10.0}) == \
        ("val/mel_loss", "val/speaker_sim", "val/score")
    with pytest.raises(ConfigError, match="weights val/cer, which this recipe does not report; it reports "
                                          "val/mel_loss, val/speaker_sim"):
        scored_metrics(("val/mel_loss", "val/speaker_sim"), {"val/cer": -1.0})
    metrics = {"val/mel_loss": 2.5, "val/speaker_sim": 0.9}
    add_score(metrics, {"val/mel_loss": -1.0, "val/speaker_sim": 10.0})
    assert metrics["val/score"] == pytest.approx(6.5)


def test_score_config_refuses_weighting_itself_and_non_finite_weights(tmp_path):
    with pytest.raises(ValueError, match="cannot weight val/score itself"):
        ValidationConfig(score={"val/score": 1.0})
    with pytest.raises(ConfigError, match="validation.score.val/x must be a finite number"):
        load_config(ValidationConfig, None, ["score.val/x=.nan"])


def _run_folder(tmp_path, *, with_metrics_log: bool):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("plateau:\n  monitor: val/mel_loss\n  mode: min\n")
    prefix = "2026-01-01 00:00:00,000 INFO [rank 0] gsv_accel.session: "
    log = [prefix + "step 5 epoch 1: val/mel_loss = 3.00000; val/speaker_sim = 0.50000 (val/mel_loss "
           "improved to 3)",
           prefix + "step 10 epoch 2: val/mel_loss = 2.00000; val/speaker_sim = 0.60000 (val/mel_loss "
           "improved to 2 (previous best 3 at step 5))",
           prefix + "step 15 epoch 3: val/mel_loss = 2.50000; val/speaker_sim = 0.70000 (no improvement "
           "for 1/1 evaluations; LR scale 1 -> 0.5 (reduction 1/1))",
           prefix + "step 20 epoch 4: val/mel_loss = 2.70000; val/speaker_sim = 0.40000 (no improvement "
           "for 1/1 evaluations; stopping after 1 LR reduction)"]
    (run / "train.log").write_text("\n".join(log) + "\n")
    if with_metrics_log:
        rows = [{"step": s, "epoch": s // 5, "time": 0, "train/loss_mel": 10.0 / s} for s in range(1, 21)]
        rows += [{"step": 10, "epoch": 2, "time": 0, "val/mel_loss": 2.0, "plateau/event": 1.0},
                 {"step": 15, "epoch": 3, "time": 0, "val/mel_loss": 2.5, "plateau/event": 2.0}]
        text = "\n".join(json.dumps(r) for r in rows) + '\n{"step": 21, "train/loss_m'  # being written
        (run / "metrics.jsonl").write_text(text)
    return run


def test_report_of_a_run_without_metrics_log_reads_the_validation_lines_of_train_log(tmp_path):
    data = read_run(_run_folder(tmp_path, with_metrics_log=False))
    assert data.series["val/mel_loss"] == {5: 3.0, 10: 2.0, 15: 2.5, 20: 2.7}
    assert data.best_step("val/mel_loss") == 10 and data.best_step("val/speaker_sim") == 15
    assert data.events() == [(15, "LR reduced", "#d97706"), (20, "early stop", "#dc2626")]
    page = build_report(data.run_dir)
    assert "best 2 @ 10" in page and "early stop" in page and "no samples saved yet" in page


def test_report_of_a_run_being_written_skips_the_partial_line(tmp_path):
    data = read_run(_run_folder(tmp_path, with_metrics_log=True))
    assert sorted(data.series["train/loss_mel"]) == list(range(1, 21))
    assert data.events() == [(15, "LR reduced", "#d97706")]
    assert "running or interrupted (last logged step 20)" in build_report(data.run_dir)


def test_report_command_writes_the_page_and_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    run = _run_folder(tmp_path, with_metrics_log=True)
    assert cli_main(["report", str(run), "--out", str(tmp_path / "out" / "r.html")]) == 0
    assert (tmp_path / "out" / "r.html").read_text().startswith("<!DOCTYPE html>")
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gsv-accel report: error: ") and "not a run folder" in err[0]


def test_validations_shown_include_the_best_and_the_last():
    chosen = choose_validations(list(range(10, 110, 10)), best=30, limit=4)
    assert len(chosen) == 4 and {10, 30, 100} <= set(chosen) and chosen == sorted(chosen)
    assert choose_validations([5, 10], best=None, limit=8) == [5, 10]
    assert choose_validations([5, 10], best=5, limit=0) == []


def test_chart_marks_the_best_and_survives_a_single_or_non_finite_point():
    svg = line_chart("val/x", [(1, 2.0), (2, float("nan")), (3, 1.0)], best=3,
                     events=[(2, "LR reduced", "#f00")])
    assert svg.startswith("<svg") and "best 1 @ 3" in svg and "LR reduced" in svg
    assert "<svg" in line_chart("one", [(5, 1.0)]) and "no finite values" in line_chart("none", [])
