"""Two CPU processes (gloo) that see different local validation losses take the same plateau
decisions at the same steps, and both end cleanly (see tests/plateau_worker.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("plateau_worker.py")
TIMEOUT_S = 120  # a process stuck in a collective must fail the test, never hang CI


def launch(out_dir: Path, nprocs: int = 2) -> tuple[int, str]:
    """Run the worker on `nprocs` processes; return (exit code, output)."""
    # torchrun, not `accelerate launch --cpu`: in Accelerate 1.15 `--cpu` takes the single-process
    # launcher whatever --num_processes says. `--standalone` picks a free rendezvous port.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}",
           str(WORKER), str(out_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    log_path = out_dir / "launch.log"  # a file, not a pipe: an orphaned worker cannot block the read
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            stop_launch(proc, out_dir)
            pytest.fail(f"plateau workers did not finish within {TIMEOUT_S} s (a hang?):\n"
                        f"{log_path.read_text()[-4000:]}")
    return proc.returncode, log_path.read_text()


def stop_launch(proc: subprocess.Popen, out_dir: Path) -> None:
    """End the launcher (SIGTERM makes torchrun stop its workers), then any worker left, by its id."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid_file in out_dir.glob("pid_*"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass  # already gone


@pytest.mark.multiprocess
def test_two_processes_take_identical_decisions(tmp_path):
    returncode, output = launch(tmp_path)
    assert returncode == 0, output[-4000:]
    ranks = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert all(rank["done"] and rank["num_processes"] == 2 for rank in ranks)
    assert ranks[0]["distributed_type"].endswith("MULTI_CPU")

    # The test means something: alone, the two ranks would have decided differently.
    assert ranks[0]["local_actions"] != ranks[1]["local_actions"]

    # Same reduced metric (NaN included), same decisions, same LRs, at the same steps.
    records_0, records_1 = ranks[0]["records"], ranks[1]["records"]
    assert records_0 == records_1
    events = [record["event"] for record in records_0]
    assert events == ["improved"] * 4 + ["continue", "reduce_lr", "continue", "reduce_lr", "rollback",
                                         "continue", "stop"]
    rollback = records_0[events.index("rollback")]
    assert rollback["metric"] == "nan" and rollback["restore_best"]  # NaN on rank 1 only, seen by both
    assert records_0[-1]["restore_best"]

    # Saved and reloaded through accelerator.save_state/load_state mid-plateau (1 bad evaluation of 2),
    # the controller decided exactly as one that was never interrupted.
    assert records_0[4]["reloaded_bad_evals"] == 1
    assert [record["action"] for record in records_0] == ranks[0]["expected"] == ranks[1]["expected"]
    assert (tmp_path / "checkpoint" / "custom_checkpoint_0.pkl").is_file()
