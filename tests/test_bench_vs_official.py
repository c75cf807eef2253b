"""The side-by-side benchmarks against the official code (benchmarks/vs_official/): their shared helper
logic, and that every script starts, answers --help and skips cleanly without an official checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_official"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402

SCRIPTS = ("s2_step.py", "loader.py", "checkpoint_save.py", "run_all.py")


def test_median_ratio_is_the_median_of_pair_ratios():
    # Pairs 2/1, 3/2, 10/4: ratios 2.0, 1.5, 2.5 -> median 2.0 (not the ratio of the medians, 3/2).
    assert harness.median_ratio([2.0, 3.0, 10.0], [1.0, 2.0, 4.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same non-zero number"):
        harness.median_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        harness.median_ratio([1.0], [0.0])


def test_alternate_swaps_the_order_each_pair_and_times_each_call():
    calls: list[str] = []
    now = [0.0]

    def clock() -> float:
        return now[0]

    def ours() -> None:
        calls.append("ours")
        now[0] += 1.0

    def official() -> None:
        calls.append("official")
        now[0] += 4.0

    result = harness.alternate(ours, official, pairs=3, warmup=1, clock=clock)
    assert calls == ["ours", "official",  # warm-up, untimed
                     "ours", "official", "official", "ours", "ours", "official"]
    assert result.ours == [1.0, 1.0, 1.0] and result.official == [4.0, 4.0, 4.0]
    assert result.ratios() == [0.25] * 3 and result.median_ratio() == 0.25
    with pytest.raises(ValueError):
        harness.alternate(ours, official, pairs=0)


@pytest.mark.parametrize(("value", "target", "expected"), [
    (0.9, "<= 0.9", True), (0.91, "<= 0.9", False), (10.0, ">= 10", True), (9.99, ">= 10", False),
    (0.49, "< 0.5", True), (0.5, "< 0.5", False), (1.1, "> 1", True)])
def test_meets_reads_the_target_text(value, target, expected):
    assert harness.meets(value, target) is expected


def test_meets_refuses_a_target_without_a_comparison():
    with pytest.raises(ValueError, match="must start with"):
        harness.meets(1.0, "0.9")


def test_table_rows_and_their_json_round_trip(tmp_path):
    rows = [harness.Row("S2 v2 training step (D+G)", "2 x 2 s", "3.100 s", "4.000 s", 0.775, "<= 0.9", True),
            harness.Row("checkpoint save: total", "v2", "2.000 s", "1.000 s", 2.0)]
    table = harness.markdown_table(rows).splitlines()
    assert table[0] == "| what | shape | ours | official | ratio | target | pass/fail |"
    assert table[1] == "|---|---|---|---|---|---|---|"
    assert table[2] == "| S2 v2 training step (D+G) | 2 x 2 s | 3.100 s | 4.000 s | 0.775 | <= 0.9 | pass |"
    assert table[3] == "| checkpoint save: total | v2 | 2.000 s | 1.000 s | 2.000 |  |  |"
    assert harness.verdict(False) == "FAIL"
    path = tmp_path / "rows.json"
    harness.write_rows(path, rows, device="cpu")
    assert harness.read_rows(path) == rows


def test_official_root_from_the_environment(tmp_path):
    assert harness.official_root({}) is None
    assert harness.official_root({"GSV_OFFICIAL": "  "}) is None
    with pytest.raises(harness.OfficialCheckoutError, match="GPT_SoVITS/module/models.py not found"):
        harness.official_root({"GSV_OFFICIAL": str(tmp_path)})
    (tmp_path / "GPT_SoVITS" / "module").mkdir(parents=True)
    (tmp_path / "GPT_SoVITS" / "module" / "models.py").write_text("")
    assert harness.official_root({"GSV_OFFICIAL": str(tmp_path)}) == tmp_path.resolve()


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GSV_OFFICIAL"}
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_answer_help_without_the_official_checkout(script):
    result = _run(script, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "GSV_OFFICIAL" in result.stdout


def test_runner_skips_with_a_clear_message_and_exit_0_without_the_checkout():
    result = _run("run_all.py")
    assert result.returncode == 0, result.stderr
    assert "skipped, GSV_OFFICIAL is not set" in result.stdout
    assert "official_checkout.sh" in result.stdout


def test_a_script_skips_without_the_checkout_after_checking_its_options():
    result = _run("s2_step.py", "--shapes", "1x1", "--pairs", "1")
    assert result.returncode == 0, result.stderr
    assert "S2 step vs official: skipped, GSV_OFFICIAL is not set" in result.stdout
    bad = _run("s2_step.py", "--shapes", "2by2")
    assert bad.returncode != 0 and "'2by2' is not BATCHxSECONDS" in bad.stderr
