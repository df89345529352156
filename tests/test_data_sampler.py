"""Length-grouped, rank-aware batch sampling."""

import random

import pytest
import torch

from caslie.data.sampler import LengthGroupedBatchSampler, padding_share


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_gives_every_rank_equal_batches_covering_all_rows(world):
    lengths = [random.Random(i).randint(5, 500) for i in range(103)]
    per_rank = [
        list(LengthGroupedBatchSampler(lengths, 4, seed=1, rank=r, world_size=world))
        for r in range(world)
    ]
    assert len({len(b) for b in per_rank}) == 1
    assert all(len(batch) == 4 for batches in per_rank for batch in batches)
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert set(seen) == set(range(103))
    assert len(seen) - 103 < 4 * world  # only the last global batch is topped up


def test_sampler_epochs_reshuffle_and_longest_batch_comes_first():
    lengths = list(range(1, 201))
    s = LengthGroupedBatchSampler(lengths, 8, seed=0, group=4)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1  # a new order each epoch
    assert max(lengths[i] for i in e0[0]) == 200


def test_length_grouping_cuts_padding():
    lengths = [random.Random(i).randint(20, 900) for i in range(4000)]
    grouped = list(LengthGroupedBatchSampler(lengths, 8, seed=0))
    plain = list(LengthGroupedBatchSampler(lengths, 8, seed=0, group_by_length=False))
    assert padding_share(lengths, grouped) < 0.05 < padding_share(lengths, plain)


def test_eval_sampler_is_deterministic_longest_first():
    lengths = [3, 9, 1, 7]
    batches = list(LengthGroupedBatchSampler(lengths, 2, shuffle=False))
    assert batches == [[1, 3], [0, 2]]
    assert torch.equal(
        torch.tensor(batches),
        torch.tensor(list(LengthGroupedBatchSampler(lengths, 2, shuffle=False))),
    )
