"""AspectRatioGroupedBatchSampler: no mixed batches, every index once, reproducible."""

import pytest
import torch

from detector.data.samplers import AspectRatioGroupedBatchSampler


def _epoch(sampler):
    return [list(b) for b in sampler]


def test_hand_computed_groups():
    ratios = torch.tensor([2.0, 0.5, 1.0, 0.5, 3.0])  # landscape {0, 2, 4}, portrait {1, 3}
    sampler = AspectRatioGroupedBatchSampler(aspect_ratios=ratios, batch_size=2, shuffle=False)
    assert _epoch(sampler) == [[1, 3], [0, 2], [4]] and len(sampler) == 3
    dropping = AspectRatioGroupedBatchSampler(aspect_ratios=ratios, batch_size=2, shuffle=False,
                                              drop_last=True)
    assert _epoch(dropping) == [[1, 3], [0, 2]] and len(dropping) == 2


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_property_random_ratios(batch_size):
    gen = torch.Generator().manual_seed(batch_size)
    ratios = torch.rand(53, generator=gen) * 2 + 0.25
    sampler = AspectRatioGroupedBatchSampler(aspect_ratios=ratios, batch_size=batch_size,
                                             generator=gen)
    for _ in range(2):
        batches = _epoch(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(53))
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            landscape = ratios[batch] >= 1
            assert landscape.all() or not landscape.any()


def test_same_seed_same_order_and_epochs_differ():
    ratios = torch.linspace(0.5, 2.0, 40)

    def sampler(seed):
        return AspectRatioGroupedBatchSampler(aspect_ratios=ratios, batch_size=4,
                                              generator=torch.Generator().manual_seed(seed))

    a, b = sampler(0), sampler(0)
    first = _epoch(a)
    assert first == _epoch(b)
    assert _epoch(a) != first  # the next epoch is shuffled anew


def test_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        AspectRatioGroupedBatchSampler(aspect_ratios=torch.ones(3), batch_size=0)
