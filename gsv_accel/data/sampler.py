"""Length-bucketed batch sampler that shards across processes and resumes mid-epoch.

Items are grouped into buckets by length (spectrogram frames) so a batch holds similar lengths and
little padding, as in GPT-SoVITS' `DistributedBucketSampler`, with three differences that matter for a
framework that must resume exactly:

* The epoch's *global* batch sequence depends only on (seed, epoch, lengths, batch size), never on the
  number of processes. Process `rank` of `world_size` takes global batches rank, rank + W, ...; a
  training step consumes W global batches. The position saved in a checkpoint is the number of global
  batches consumed, so a run can resume with another number of processes without skipping or repeating
  data.
* Every kept item is used exactly once per epoch: buckets are not padded with duplicates (a bucket's
  last batch may be smaller), and when the number of batches is not a multiple of W the items of the
  leftover batches are dealt round-robin into W smaller batches, so every process runs the same number
  of steps (a requirement of DDP, which would otherwise hang).
* Items outside the bucket boundaries are dropped, as the official sampler does, and listed in
  `dropped_indices` so the caller can report them.

After an out-of-memory error (`gsv_accel.memory`) the sampler cuts every batch into micro-batches of
at most `micro_batch_size` items: the loader then yields the pieces, while the position still counts
whole batches, so a step covers the same items as before. The micro-batch size is part of the state.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

import torch

# Official GPT-SoVITS S2 boundaries, in spectrogram frames (50 per second at 32 kHz, hop 640).
DEFAULT_BOUNDARIES = (32, 300, 400, 500, 600, 700, 800, 900, 1000, 1100, 1200, 1300, 1400, 1500,
                      1600, 1700, 1800, 1900)


class LengthBucketBatchSampler:
    """Yields this process's batches (lists of dataset indices) for the current epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int,
                 boundaries: Sequence[int] = DEFAULT_BOUNDARIES, *, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        if list(boundaries) != sorted(boundaries) or len(boundaries) < 2:
            raise ValueError(f"bucket boundaries must be >= 2 increasing numbers, got {list(boundaries)}")
        self.batch_size = batch_size
        # Items per piece the loader yields; below batch_size only after an out-of-memory error.
        self.micro_batch_size = batch_size
        self.boundaries = list(boundaries)
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        # Global batches of the current epoch already consumed (by all processes together).
        self.consumed_batches = 0
        self.buckets: list[list[int]] = [[] for _ in range(len(self.boundaries) - 1)]
        self.dropped_indices: list[int] = []
        for index, length in enumerate(lengths):
            bucket = self._bucket_of(int(length))
            if bucket is None:
                self.dropped_indices.append(index)
            else:
                self.buckets[bucket].append(index)
        self.num_items = sum(len(b) for b in self.buckets)
        if self.num_items < num_replicas:
            raise ValueError(
                f"only {self.num_items} item(s) fall inside the bucket boundaries "
                f"[{self.boundaries[0]}, {self.boundaries[-1]}] frames, fewer than the {num_replicas} "
                "processes; add data or widen data.bucket_boundaries")

    def _bucket_of(self, length: int) -> int | None:
        # Bucket i holds boundaries[i] < length <= boundaries[i + 1], as the official sampler does.
        if length <= self.boundaries[0] or length > self.boundaries[-1]:
            return None
        return bisect.bisect_left(self.boundaries, length) - 1

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of an epoch, in order, before sharding (independent of num_replicas except for
        the final re-dealing of leftover batches)."""
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(self.seed + epoch)
        batches: list[list[int]] = []
        for bucket in self.buckets:
            if not bucket:
                continue
            order = torch.randperm(len(bucket), generator=generator).tolist() if self.shuffle \
                else range(len(bucket))
            items = [bucket[i] for i in order]
            batches.extend(items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size))
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        leftover = len(batches) % self.num_replicas
        if leftover:
            tail_items = [item for batch in batches[-leftover:] for item in batch]
            batches = batches[:-leftover]
            batches.extend(tail_items[r::self.num_replicas] for r in range(self.num_replicas))
        return batches

    def _remaining_batches(self) -> list[list[int]]:
        """This process's batches of the current epoch not consumed yet."""
        # Start at the first batch not yet consumed that belongs to this rank's slot.
        return self.global_batches()[self.consumed_batches + self.rank::self.num_replicas]

    def split(self, batch: list[int]) -> list[list[int]]:
        """A batch cut into micro-batches of at most `micro_batch_size` items, in order."""
        size = self.micro_batch_size
        return [batch[i:i + size] for i in range(0, len(batch), size)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._remaining_batches():
            yield from self.split(batch)

    def __len__(self) -> int:
        """Micro-batches this process still yields in the current epoch (batches, unless split)."""
        total = len(self.global_batches()) // self.num_replicas
        remaining = self._remaining_batches()[:total - self.consumed_batches // self.num_replicas]
        return sum(len(self.split(batch)) for batch in remaining)

    def step_shares(self, batches_per_step: int) -> Iterator[list[float]]:
        """For each step left in this epoch (`batches_per_step` batches), the share of its batch's
        items that each micro-batch the loader yields for it holds (all 1.0 unless batches are split).
        The number of entries is the number of micro-batches the step takes from the loader."""
        remaining = self._remaining_batches()
        for start in range(0, len(remaining) - batches_per_step + 1, batches_per_step):
            yield [len(piece) / len(batch) for batch in remaining[start:start + batches_per_step]
                   for piece in self.split(batch)]

    def halve_micro_batch(self) -> int:
        """Cut batches into micro-batches of half as many items (rounded up); returns the new size."""
        if self.micro_batch_size <= 1:
            raise ValueError("micro-batches hold one item already")
        self.micro_batch_size = (self.micro_batch_size + 1) // 2
        return self.micro_batch_size

    def steps_per_epoch(self) -> int:
        return len(self.global_batches()) // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning."""
        self.epoch = epoch
        self.consumed_batches = 0

    def advance(self, steps: int = 1) -> None:
        """Record that every process finished `steps` more batches (call once per training step)."""
        self.consumed_batches += steps * self.num_replicas

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed_batches": self.consumed_batches, "seed": self.seed,
                "micro_batch_size": self.micro_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where a checkpoint stopped; `consumed_batches` counts global batches, so it stays
        valid when the number of processes changes (rounded down to a whole step of this world size,
        which may repeat at most num_replicas - 1 batches and never skips one)."""
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))
        consumed = int(state["consumed_batches"])
        self.consumed_batches = consumed - consumed % self.num_replicas
        # Checkpoints written before micro-batches existed have none: whole batches.
        self.micro_batch_size = min(int(state.get("micro_batch_size", self.batch_size)), self.batch_size)
