"""Copies of training state (state dicts with tensors) in host memory, for background checkpoint writes.

A background writer must not read the live tensors: the next optimizer step changes them while the
files are written. `HostCopier.copy(state, deferred)` returns a `HostCopy`: a deep copy of `state`
whose tensors live in host memory (pinned on a GPU). Storages in `deferred` (the parameters and the
optimizer states: only an optimizer step changes them) are copied later, by `HostCopy.complete()` in
the writer thread, while the loop runs the next forward and backward passes; until then every
optimizer's `step` waits (a global step pre-hook), so the copy still holds the values of the call.
Everything else (buffers such as running statistics or codebooks, which a forward pass may change,
and all non-tensor state) is copied at the call.

Two details keep the copy cheap and the files identical to a save of the live state:

* storages, not tensors, are copied, and tensors that shared a storage share the copy (same offsets,
  sizes and strides): `torch.save` and safetensors' duplicate removal see the same structure, so the
  files hold the same bytes;
* the host buffers of one copy are reused by the next (`release` gives them back once the writer is
  done with them). A fresh 1.1 GB allocation costs ~0.42 s in page faults on a 2-core CPU box, a copy
  into buffers already touched ~0.17 s. The price: one copy of the state stays allocated between saves.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import defaultdict
from typing import Any

import torch

__all__ = ["HostCopier", "HostCopy", "optimizer_steps_waited"]

# Copies whose deferred part is not done yet; the step pre-hook waits for them.
_outstanding: set[threading.Event] = set()
_hook_lock = threading.Lock()
_hook_installed = False
_waited = [0.0, 0]  # seconds and number of optimizer steps that waited for a copy (this process)


def optimizer_steps_waited() -> tuple[float, int]:
    """(seconds, count) that optimizer steps of this process waited for a deferred host copy."""
    return _waited[0], _waited[1]


def _wait_for_copies(optimizer, args, kwargs) -> None:
    pending = [event for event in list(_outstanding) if not event.is_set()]
    if not pending:
        return
    started = time.perf_counter()
    for event in pending:
        event.wait()
    _waited[0] += time.perf_counter() - started
    _waited[1] += 1


def _install_step_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            from torch.optim.optimizer import register_optimizer_step_pre_hook

            register_optimizer_step_pre_hook(_wait_for_copies)
            _hook_installed = True


def _tensors_in(obj: Any, found: list[torch.Tensor]) -> None:
    """Every tensor in nested dicts, lists and tuples (what state dicts are made of)."""
    if isinstance(obj, torch.Tensor):
        found.append(obj)
    elif isinstance(obj, dict):
        for value in obj.values():
            _tensors_in(value, found)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _tensors_in(value, found)


def storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    """Identifies a tensor's storage (tensors sharing it have the same key)."""
    storage = tensor.untyped_storage()
    return str(storage.device), storage.data_ptr()


class HostCopy:
    """The result of `HostCopier.copy`: `state` is complete once `complete()` returned."""

    def __init__(self, state: Any, deferred: list[tuple[torch.UntypedStorage, torch.UntypedStorage]]) -> None:
        self.state = state
        self._deferred = deferred
        self._done = threading.Event()
        if deferred:
            _install_step_hook()
            _outstanding.add(self._done)
        else:
            self._done.set()

    def complete(self) -> None:
        """Copy the deferred storages (any thread), then let optimizer steps run again. Also call it
        (or let the writer call it) when the copy is abandoned: steps wait until it ran."""
        try:
            devices = set()
            for target, source in self._deferred:
                on_device = source.device.type != "cpu"
                target.copy_(source, non_blocking=on_device)
                if on_device:
                    devices.add(source.device)
            for device in devices:
                torch.cuda.synchronize(device)  # non-blocking copies: done before anyone reads them
        finally:
            self._deferred = []
            self._done.set()
            _outstanding.discard(self._done)


class HostCopier:
    """Copies nested state into reusable host buffers (see the module docstring). One copy at a time,
    made on the training thread; `release` after the writer finished with it."""

    def __init__(self) -> None:
        self._free: dict[tuple[int, bool], list[torch.UntypedStorage]] = defaultdict(list)
        self._in_use: list[tuple[tuple[int, bool], torch.UntypedStorage]] = []

    @property
    def held_bytes(self) -> int:
        """Host memory held by the buffers (free and in use)."""
        return sum(s.nbytes() for _, s in self._in_use) + sum(
            s.nbytes() for buffers in self._free.values() for s in buffers)

    def _buffer(self, nbytes: int, pinned: bool) -> torch.UntypedStorage:
        free = self._free[(nbytes, pinned)]
        if free:
            buffer = free.pop()
        elif pinned:
            buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True).untyped_storage()
        else:
            buffer = torch.UntypedStorage(nbytes)
        self._in_use.append(((nbytes, pinned), buffer))
        return buffer

    def copy(self, state: Any, deferred: set[tuple[str, int]] = frozenset()) -> HostCopy:
        """A deep copy of `state` with every tensor (in nested dicts/lists/tuples) in host memory; the
        storages whose `storage_key` is in `deferred` are filled by `HostCopy.complete()`."""
        tensors: list[torch.Tensor] = []
        _tensors_in(state, tensors)
        storages: dict[tuple[str, int], torch.UntypedStorage] = {}
        later: list[tuple[torch.UntypedStorage, torch.UntypedStorage]] = []
        # deepcopy looks objects up by id() in its memo first: the tensors map to our copies, and
        # everything else (containers, numbers, OrderedDict metadata) is copied as deepcopy does.
        memo: dict[int, Any] = {}
        devices = set()
        for tensor in tensors:
            if id(tensor) in memo:
                continue
            source = tensor.untyped_storage()
            key = storage_key(tensor)
            target = storages.get(key)
            if target is None or source.nbytes() == 0:
                on_device = source.device.type != "cpu"
                target = self._buffer(source.nbytes(), pinned=on_device and torch.cuda.is_available())
                if key in deferred:
                    later.append((target, source))
                else:
                    target.copy_(source, non_blocking=on_device)
                    if on_device:
                        devices.add(source.device)
                storages[key] = target
            copied = torch.empty((0,), dtype=tensor.dtype)
            copied.set_(target, tensor.storage_offset(), tensor.size(), tensor.stride())
            memo[id(tensor)] = copied
        for device in devices:
            torch.cuda.synchronize(device)  # the immediate copies are done when the call returns
        memo[id(memo)] = tensors  # deepcopy keeps its originals alive here; so do we (ids stay unique)
        return HostCopy(copy.deepcopy(state, memo), later)

    def release(self) -> None:
        """The writer is done with the last copy: its buffers serve the next one."""
        for key, buffer in self._in_use:
            self._free[key].append(buffer)
        self._in_use = []
