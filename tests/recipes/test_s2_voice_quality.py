"""Voice-quality validation on the demo S2 recipe: `val/speaker_sim` (tiny speaker model of the demo
config) and `val/cer` (tiny random Whisper) in train.log, TensorBoard, W&B (offline, read back) and
metrics.jsonl; `val/score`; the samples in the run folder and W&B's table; early stop on speaker
similarity; `gsv-accel report` opened in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from gsv_accel.checkpoint import verify_checkpoint

from ..chromium_cdp import Chromium, find_chromium
from .conftest import REPO, S2Run

TINY_ASR = REPO / "demo" / "tiny_asr"
SCORE = "validation.score={val/mel_loss: -1.0, val/speaker_sim: 10.0}"
_VALIDATION = re.compile(r"step (\d+) epoch \d+: (.*) \((.*)\)\n")


def validations(log: str) -> list[tuple[int, dict[str, float], str]]:
    """(step, {metric: value}, reason) of each validation line of train.log."""
    return [(int(step), {k: float(v) for k, v in re.findall(r"([\w/]+) = ([-0-9.]+)", metrics)}, reason)
            for step, metrics, reason in _VALIDATION.findall(log)]


@pytest.fixture(scope="module")
def quality_run(tmp_path_factory, demo_dataset) -> S2Run:
    """Two epochs of the demo with both metrics, a score, W&B (offline) and TensorBoard."""
    run = S2Run(tmp_path_factory.mktemp("voice_quality") / "run", demo_dataset, "train.epochs=2",
                f"validation.asr_model={TINY_ASR}", SCORE, "tracking.wandb=true", "tracking.tensorboard=true")
    run.run()
    return run


def test_speaker_sim_cer_and_score_reach_train_log_tensorboard_wandb_and_metrics_log(quality_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ..wandb_offline import history

    run = quality_run
    in_log = validations(run.log)
    assert [step for step, _, _ in in_log] == [11, 22]
    for _, metrics, _ in in_log:
        assert set(metrics) == {"val/mel_loss", "val/speaker_sim", "val/cer", "val/score"}
        assert -1 <= metrics["val/speaker_sim"] <= 1 and metrics["val/cer"] >= 0
        # train.log prints 5 decimals: the score is -1 * mel + 10 * similarity of the printed values.
        expected = -metrics["val/mel_loss"] + 10 * metrics["val/speaker_sim"]
        assert metrics["val/score"] == pytest.approx(expected, abs=1e-4)
    assert "speaker similarity with" in run.log and "speech recognition with" in run.log
    assert re.search(r"validation of 4 utterance\(s\) on this process: generation [0-9.]+ s, speaker "
                     r"similarity [0-9.]+ s, speech recognition [0-9.]+ s", run.log)

    [run_file] = (run.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = history(run_file)
    for key in ("val/speaker_sim", "val/cer", "val/score"):
        logged = [(row["_step"], row[key]) for row in rows if key in row]
        assert [step for step, _ in logged] == [11, 22], key
        for (_, value), (_, metrics, _) in zip(logged, in_log, strict=True):
            assert value == pytest.approx(metrics[key], abs=5e-6)
    # One samples table per validation, saved as a W&B table file with the samples' rows.
    tables = sorted((run_file.parent / "files").rglob("val_samples_*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[-1].read_text())
    assert table["columns"][:7] == ["step", "name", "text", "real audio", "generated audio", "generated mel",
                                    "transcript"]
    assert {"val/speaker_sim", "val/cer", "val/mel_loss"} <= set(table["columns"])
    assert len(table["data"]) == 2 and {row[0] for row in table["data"]} == {22}

    scalars = set()
    for events in {p.parent for p in (run.run_dir / "tensorboard").rglob("events.out.tfevents.*")}:
        scalars |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    assert {"val/speaker_sim", "val/cer", "val/score", "val/mel_loss"} <= scalars

    # metrics.jsonl: every training row and both validations.
    lines = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in lines if "train/loss_mel" in row] == list(range(1, 23))
    assert [(row["step"], row["epoch"]) for row in lines if "val/speaker_sim" in row] == [(11, 1), (22, 2)]


def test_samples_are_kept_in_the_run_folder_at_each_validation(quality_run):
    samples = quality_run.run_dir / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["real", "step_00000011", "step_00000022"]
    record = json.loads((samples / "step_00000022" / "metrics.json").read_text())
    assert record["step"] == 22 and record["epoch"] == 2
    assert set(record["metrics"]) == {"val/mel_loss", "val/speaker_sim", "val/cer", "val/score"}
    assert len(record["samples"]) == 2
    for sample in record["samples"]:
        folder = samples / "step_00000022"
        generated, rate = sf.read(folder / sample["audio"])
        real, real_rate = sf.read(folder / sample["real_audio"])
        assert rate == real_rate == 32000 and len(generated) > 0 and len(real) > 0
        assert (folder / sample["mel"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (folder / sample["real_mel"]).is_file()
        assert sample["text"] and isinstance(sample["transcript"], str)
        assert set(sample["metrics"]) == {"val/mel_loss", "val/speaker_sim", "val/cer"}


def test_early_stop_on_speaker_similarity_exports_the_most_similar_model(s2_run):
    run = s2_run("by_speaker_sim", "train.epochs=30", "validation.every_n_steps=1",
                 "validation.every_n_epochs=null", "checkpoint.every_n_epochs=null",
                 "plateau.max_reductions=0", "plateau.patience=1", "plateau.monitor=val/speaker_sim",
                 "plateau.mode=max")
    run.run()
    evaluations = validations(run.log)
    assert "training stopped: early_stop" in run.log
    assert evaluations[-1][0] < 30 * 11 and "stopping" in evaluations[-1][2]
    best_step, best_metrics, _ = max(evaluations, key=lambda e: e[1]["val/speaker_sim"])
    [best_export] = run.exports.glob("demo_best_e*_s*.pth")
    assert best_export.name.endswith(f"_s{best_step}.pth")
    manifest_metrics = verify_checkpoint(run.run_dir / "checkpoints" / f"step_{best_step:08d}").metrics
    assert manifest_metrics["val/speaker_sim"] == pytest.approx(best_metrics["val/speaker_sim"], abs=5e-6)


@pytest.mark.parametrize(("overrides", "message"), [
    (("validation.score={val/mel_loss: -1.0, val/nope: 2.0}",),
     "validation.score weights val/nope, which this recipe does not report; it reports val/mel_loss, "
     "val/speaker_sim"),
    ((SCORE, "plateau.monitor=val/score"),
     "plateau.monitor=val/score is higher-is-better: set plateau.mode=max"),
    (("plateau.monitor=val/cer",),
     "plateau.monitor='val/cer' is not a metric this recipe reports; it reports val/mel_loss, "
     "val/speaker_sim"),
])
def test_a_score_or_monitor_the_recipe_cannot_give_is_refused_before_training(s2_run, overrides, message):
    run = s2_run("refused", *overrides)
    result = run.run(expect=2)
    assert result.stderr.strip().splitlines() == [f"s2: error: {message}"]
    assert not (run.run_dir / "checkpoints").exists() and not (run.run_dir / "metrics.jsonl").exists()


def test_report_opens_in_headless_chromium_with_plots_and_playable_audio(quality_run, tmp_path):
    from gsv_accel.cli import main as cli_main

    # A moved run: the report reads only the run folder.
    moved = tmp_path / "moved_run"
    shutil.copytree(quality_run.run_dir, moved)
    assert cli_main(["report", str(moved)]) == 0
    page_path = moved / "report.html"
    page = page_path.read_text(encoding="utf-8")
    assert page.count('<svg class="chart"') >= 4 + 7  # 4 validation metrics, the training losses
    assert "best" in page and "demo_best_e2_s22.pth" in page
    # The audio sources are WAVs that decode: the generated and real samples of both validations.
    sources = re.findall(r'<audio controls preload="metadata" src="data:audio/wav;base64,([^"]+)"', page)
    assert len(sources) == 2 * 2 * 2
    for source in sources:
        audio, rate = sf.read(io.BytesIO(base64.b64decode(source)))
        assert rate == 32000 and len(audio) > 0 and np.isfinite(audio).all()

    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the browser half of this test "
                    "did not run")
    browser = Chromium(binary, tmp_path / "chromium-profile")
    try:
        # The error collector itself works: a page with a console error and a broken image is caught.
        bad = browser.open("data:text/html,<script>console.error('x')</script><img src='missing.png'>")
        assert bad.errors()
        report = browser.open(page_path.as_uri())
        durations = report.evaluate("""Promise.all([...document.querySelectorAll('audio')].map(a =>
            a.readyState >= 1 ? a.duration : new Promise(resolve => {
                a.addEventListener('loadedmetadata', () => resolve(a.duration));
                a.addEventListener('error', () => resolve(-1));
                a.load(); })))""")
        assert len(durations) == 8 and all(d > 0 for d in durations), durations
        drawn = report.evaluate("[...document.querySelectorAll('svg.chart')].map(s => s.getBBox().width)")
        assert len(drawn) >= 11 and all(width > 100 for width in drawn)
        images = report.evaluate("[...document.images].map(i => i.complete && i.naturalWidth)")
        assert images and all(images)
        shot = report.screenshot(tmp_path / "report.png")
        assert shot.stat().st_size > 10_000
        assert report.errors() == []
    finally:
        browser.close()
