"""Copies of training state (state dicts with tensors) in host memory, for background checkpoint writes.

A background writer must not read the live tensors: the next optimizer step changes them while the
files are written. `HostCopier.copy(state)` returns a deep copy of `state` whose tensors live in host
memory (pinned on a GPU, so the device-to-host copies run asynchronously and are waited for once).

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
from collections import defaultdict
from typing import Any

import torch

__all__ = ["HostCopier"]


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


class HostCopier:
    """Copies nested state into reusable host buffers (see the module docstring). Not thread-safe: one
    copy at a time, made on the training thread; `release` after the writer finished with it."""

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

    def copy(self, state: Any) -> Any:
        """A deep copy of `state` with every tensor (in nested dicts/lists/tuples) in host memory."""
        tensors: list[torch.Tensor] = []
        _tensors_in(state, tensors)
        storages: dict[tuple[str, int], torch.UntypedStorage] = {}
        # deepcopy looks objects up by id() in its memo first: the tensors map to our copies, and
        # everything else (containers, numbers, OrderedDict metadata) is copied as deepcopy does.
        memo: dict[int, Any] = {}
        any_device = False
        for tensor in tensors:
            if id(tensor) in memo:
                continue
            source = tensor.untyped_storage()
            key = (str(source.device), source.data_ptr())
            target = storages.get(key)
            if target is None or source.nbytes() == 0:
                on_device = source.device.type != "cpu"
                any_device |= on_device
                target = self._buffer(source.nbytes(), pinned=on_device and torch.cuda.is_available())
                target.copy_(source, non_blocking=on_device)
                storages[key] = target
            copied = torch.empty((0,), dtype=tensor.dtype)
            copied.set_(target, tensor.storage_offset(), tensor.size(), tensor.stride())
            memo[id(tensor)] = copied
        if any_device and torch.cuda.is_available():
            torch.cuda.synchronize()  # the non-blocking copies must be done before anyone reads them
        memo[id(memo)] = tensors  # deepcopy keeps its originals alive here; so do we (ids stay unique)
        return copy.deepcopy(state, memo)

    def release(self) -> None:
        """The writer is done with the last copy: its buffers serve the next one."""
        for key, buffer in self._in_use:
            self._free[key].append(buffer)
        self._in_use = []
