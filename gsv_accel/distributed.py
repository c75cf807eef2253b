"""Agreement between processes: the few collectives the library itself issues.

Every helper here must be called on ALL processes at the same point (never inside a branch that
only some processes take), or the others wait forever in the collective. With one process they
issue nothing.
"""

from __future__ import annotations

import torch


def any_process(accelerator, *flags: bool) -> list[bool]:
    """Each flag OR-ed over all processes (one small all-reduce when there are several), so that
    every process takes the same decision: skip a step, stop, treat a save as failed."""
    if accelerator.num_processes == 1:
        return [bool(flag) for flag in flags]
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=accelerator.device)
    return [bool(v > 0) for v in accelerator.reduce(values, reduction="sum").tolist()]


def agree(accelerator, flag: bool) -> bool:
    """One flag OR-ed over all processes."""
    return any_process(accelerator, flag)[0]


def sum_over_processes(accelerator, values: torch.Tensor) -> torch.Tensor:
    """`values` summed over all processes (validation totals: sums and counts, then divide)."""
    if accelerator.num_processes == 1:
        return values
    return accelerator.reduce(values, reduction="sum")
