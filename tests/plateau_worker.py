"""Worker for tests/test_plateau_distributed.py, run under `accelerate launch --num_processes 2 --cpu`.

Each process sees different local validation losses (a different offset and item count per rank,
and a NaN on rank 1 only), reduces them with `reduce_metric`, feeds the controller and writes its
decisions to OUT_DIR/rank_<r>.json. Mid-plateau it saves the controller with `accelerator.save_state`,
wipes it and loads it back, as a kill-and-resume would. A process that took another decision than its
peer would leave the loop early and the other would wait in a collective: the test's timeout catches it.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from torch.optim.lr_scheduler import ExponentialLR

from gsv_accel.plateau import PlateauConfig, PlateauController, reduce_metric

SEQUENCE = [0.72, 0.58, 0.46, 0.41, 0.45, 0.52, 0.40, 0.43, 0.44, 0.42, 0.47, 0.50, 0.55, 0.60]
DELTA = 0.06  # rank r sees SEQUENCE[i] + r * DELTA * (-1) ** i, over r + 1 items
NAN_AT = 8  # rank 1 only: its local loss is NaN here (the reduced mean is NaN on both ranks)
SAVE_AT = 4  # save + wipe + load the controller after this evaluation (1 bad evaluation of 2)
CONFIG = PlateauConfig(patience=2, max_reductions=3, on_divergence="rollback")


def main(out_dir: Path) -> None:
    # The test ends these by id if the launch times out (torchrun puts each worker in its own session).
    (out_dir / f"pid_{os.environ['RANK']}").write_text(str(os.getpid()))
    # A collective that a peer never joins fails after 60 s instead of gloo's default 30 min.
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=60))
    accelerator = Accelerator(cpu=True, kwargs_handlers=[timeout])
    rank = accelerator.process_index
    controller = PlateauController(CONFIG)
    accelerator.register_for_checkpointing(controller)  # saved as custom_checkpoint_0.pkl
    uninterrupted = PlateauController(CONFIG)  # same reduced metrics, never saved/loaded
    local_only = PlateauController(CONFIG)  # what this rank would decide alone (must differ by rank)
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-4}, {"params": [params[1]], "lr": 4e-5}])
    scheduler = ExponentialLR(optimizer, gamma=0.99)  # not prepared: it must step once, not per process

    records, local_actions, expected = [], [], []
    for i, value in enumerate(SEQUENCE):
        step, epoch = 100 * (i + 1), i + 1
        count = rank + 1
        local_mean = float("nan") if (rank == 1 and i == NAN_AT) else value + rank * DELTA * (-1) ** i
        # Every process reduces, every evaluation, before any branch.
        metric = reduce_metric(accelerator, local_mean * count, count)
        decision = controller.update(metric, step=step, epoch=epoch)
        expected.append(uninterrupted.update(metric, step=step, epoch=epoch).action)
        if not local_only.stopped:
            local_actions.append(local_only.update(local_mean, step=step, epoch=epoch).action)
        optimizer.step()  # stands for the epoch's training steps (no gradients: a no-op)
        scheduler.step()
        controller.scale_learning_rates([scheduler])
        records.append({"step": step, "metric": repr(metric), "action": decision.action,
                        "event": decision.event, "is_best": decision.is_best,
                        "restore_best": decision.restore_best, "reason": decision.reason,
                        "lrs": [group["lr"] for group in optimizer.param_groups]})
        if i == SAVE_AT:
            accelerator.save_state(str(out_dir / "checkpoint"))
            # save_state does not wait: rank 0 may still be writing the custom state files.
            accelerator.wait_for_everyone()
            controller.__init__(CONFIG)  # wipe, as a fresh process would start
            accelerator.load_state(str(out_dir / "checkpoint"))
            records[-1]["reloaded_bad_evals"] = controller.bad_evals
        if decision.action == "stop":
            break

    accelerator.wait_for_everyone()  # both processes reach the end: nobody is left in a collective
    result = {"rank": rank, "num_processes": accelerator.num_processes,
              "distributed_type": str(accelerator.distributed_type), "records": records,
              "expected": expected[: len(records)], "local_actions": local_actions, "done": True}
    (out_dir / f"rank_{rank}.json").write_text(json.dumps(result, indent=1))
    # Tear the process group down together: a rank destroying it while the other still writes its
    # result can make gloo abort the slower one at exit.
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # Leave without the interpreter's teardown: with torch 2.13 and gloo, about one exit in ten
    # aborted there ("terminate called without an active exception") after all the work was done
    # and written; os._exit skips it and reports what the worker itself did.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
