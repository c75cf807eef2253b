"""The length-bucketed sampler: coverage, sharding, determinism and mid-epoch resume."""

from __future__ import annotations

import random

import pytest

from gsv_accel.data.sampler import LengthBucketBatchSampler

BOUNDARIES = [32, 100, 200, 300, 400]


def _lengths(n: int = 53, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(33, 400) for _ in range(n)]


def _rank_batches(lengths, world: int, epoch: int = 0, seed: int = 7, batch_size: int = 4):
    out = []
    for rank in range(world):
        sampler = LengthBucketBatchSampler(lengths, batch_size, BOUNDARIES, num_replicas=world, rank=rank,
                                           seed=seed)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_item_exactly_once_per_epoch_across_ranks(world):
    lengths = _lengths()
    per_rank = _rank_batches(lengths, world)
    seen = sorted(i for batches in per_rank for batch in batches for i in batch)
    assert seen == list(range(len(lengths)))
    # Every process runs the same number of steps, or DDP would hang.
    assert len({len(batches) for batches in per_rank}) == 1
    assert all(batch for batches in per_rank for batch in batches)


def test_batches_stay_within_one_bucket_except_redealt_tail():
    lengths = _lengths()
    sampler = LengthBucketBatchSampler(lengths, 4, BOUNDARIES)
    for batch in sampler.global_batches():
        buckets = {sampler._bucket_of(lengths[i]) for i in batch}
        assert len(buckets) == 1
        assert len(batch) <= 4


def test_out_of_range_items_dropped_and_reported():
    lengths = [10, 50, 150, 401, 32, 33]
    sampler = LengthBucketBatchSampler(lengths, 2, BOUNDARIES)
    assert sampler.dropped_indices == [0, 3, 4]
    assert sorted(i for b in sampler for i in b) == [1, 2, 5]


def test_same_seed_same_order_and_epochs_differ():
    lengths = _lengths()
    assert _rank_batches(lengths, 2, epoch=3) == _rank_batches(lengths, 2, epoch=3)
    assert _rank_batches(lengths, 2, epoch=3) != _rank_batches(lengths, 2, epoch=4)
    assert _rank_batches(lengths, 2, seed=1) != _rank_batches(lengths, 2, seed=2)


@pytest.mark.parametrize("world", [1, 2])
def test_mid_epoch_resume_yields_exactly_the_remaining_batches(world):
    lengths = _lengths()
    full = _rank_batches(lengths, world, epoch=2)
    steps_done = 3
    for rank in range(world):
        first = LengthBucketBatchSampler(lengths, 4, BOUNDARIES, num_replicas=world, rank=rank, seed=7)
        first.set_epoch(2)
        first.advance(steps_done)
        state = first.state_dict()
        resumed = LengthBucketBatchSampler(lengths, 4, BOUNDARIES, num_replicas=world, rank=rank, seed=0)
        resumed.load_state_dict(state)
        assert list(resumed) == full[rank][steps_done:]
        assert len(resumed) == len(full[rank]) - steps_done


def test_resume_with_fewer_processes_neither_skips_nor_repeats():
    # The two world sizes share the global batch order except possibly the re-dealt tail, which lies
    # after the 4 batches consumed here.
    lengths = _lengths(n=64)
    two = [LengthBucketBatchSampler(lengths, 4, BOUNDARIES, num_replicas=2, rank=r, seed=5) for r in range(2)]
    consumed = []
    for sampler in two:
        sampler.set_epoch(1)
        consumed.extend(i for batch in list(sampler)[:2] for i in batch)
        sampler.advance(2)
    one = LengthBucketBatchSampler(lengths, 4, BOUNDARIES, num_replicas=1, rank=0, seed=5)
    one.load_state_dict(two[0].state_dict())
    rest = [i for batch in one for i in batch]
    assert sorted(consumed + rest) == sorted(i for b in one.global_batches() for i in b)


def test_too_few_items_for_the_processes_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than the 2 processes"):
        LengthBucketBatchSampler([50], 4, BOUNDARIES, num_replicas=2, rank=0)
