"""Gradient checkpointing of model regions: their activations are recomputed in the backward pass
instead of being kept from the forward pass (less memory, one more forward of the region).

`torch.utils.checkpoint.checkpoint(use_reentrant=False)` restores the random state for the
recomputation, so dropout draws the same masks and the gradients are those of the plain pass. The
switch is a plain attribute of the modules that have checkpointed regions (`grad_ckpt`, set by the
model's `set_grad_checkpointing`): it is not part of any state dict, so weights and exports do not
change. Regions run as usual without autograd (validation, inference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint


def checkpointed(function: Callable[..., Any], *args: Any, enabled: bool, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, checkpointed when `enabled` and autograd records the pass."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False, **kwargs)
    return function(*args, **kwargs)
