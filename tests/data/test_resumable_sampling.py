"""Resumable, shardable sampling: the epoch order is a function of (seed, epoch), a resumed epoch
skips batches by index, ranks get disjoint equal shards, and each sample's augmentation is a
function of (seed, epoch, index) whatever worker loads it."""

from __future__ import annotations

import pytest
import torch

from detector.data.coco import CocoDetection
from detector.data.loader import SeededSamples, build_dataloader
from detector.data.samplers import AspectRatioGroupedBatchSampler, mix_seed
from detector.data.transforms import build_transforms

RATIOS = torch.tensor([2.0, 0.5, 1.0, 0.5, 3.0, 1.5, 0.7, 1.0, 0.9, 1.2, 1.1])  # 11 images


def _sampler(**kwargs) -> AspectRatioGroupedBatchSampler:
    return AspectRatioGroupedBatchSampler(aspect_ratios=RATIOS, batch_size=2, **kwargs)


def _epoch(sampler, epoch, skip=0):
    sampler.set_epoch(epoch, skip=skip)
    return list(sampler)


def test_order_is_a_function_of_seed_and_epoch():
    a, b = _sampler(seed=3), _sampler(seed=3)
    assert _epoch(a, 5) == _epoch(b, 5)
    assert _epoch(a, 5) != _epoch(a, 6)
    assert _epoch(a, 5) != _epoch(_sampler(seed=4), 5)
    list(b)  # consuming other epochs on b changes nothing about epoch 5
    assert _epoch(b, 5) == _epoch(a, 5)


def test_plain_loops_advance_the_epoch_only_when_it_is_exhausted():
    sampler = _sampler(seed=0)
    first = list(sampler)
    assert list(sampler) == _epoch(_sampler(seed=0), 1)
    partial = iter(sampler)  # epoch 2, abandoned after one batch: the epoch does not advance
    next(partial)
    assert sampler.epoch == 2 and first == _epoch(sampler, 0)


def test_iterators_made_before_the_first_batch_read_the_epoch_lazily():
    sampler = _sampler(seed=0)
    early = iter(sampler)  # DataLoader may create the iterator twice before taking a batch
    sampler.set_epoch(4)
    assert list(early) == _epoch(_sampler(seed=0), 4)


@pytest.mark.parametrize("skip", [0, 1, 4, 6])
def test_skip_resumes_inside_the_epoch(skip):
    full = _epoch(_sampler(seed=1), 2)
    assert _epoch(_sampler(seed=1), 2, skip=skip) == full[skip:]


def test_skip_applies_to_one_epoch_only():
    sampler = _sampler(seed=1)
    _epoch(sampler, 0, skip=3)
    assert sampler.epoch == 1 and list(sampler) == _epoch(_sampler(seed=1), 1)


@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_distributed_shards_are_disjoint_equal_and_cover_the_epoch(replicas):
    single = _sampler(seed=2)
    shards = [_epoch(_sampler(seed=2, num_replicas=replicas, rank=r), 3) for r in range(replicas)]
    assert len({len(s) for s in shards}) == 1  # every rank takes as many steps
    assert all(len(s) == len(_sampler(seed=2, num_replicas=replicas, rank=0)) for s in shards)
    global_batches = _epoch(single, 3)
    padding = len(shards[0]) * replicas - len(global_batches)
    taken = [b for s in shards for b in s]
    assert sorted(map(tuple, taken)) == sorted(
        map(tuple, global_batches + global_batches[:padding]))
    for r, shard in enumerate(shards):  # rank r takes batches r, r + replicas, ...
        padded = global_batches + global_batches[:padding]
        assert shard == padded[r::replicas]


def test_more_replicas_than_batches_still_gives_every_rank_a_batch():
    shards = [_epoch(AspectRatioGroupedBatchSampler(aspect_ratios=torch.ones(3), batch_size=4,
                                                    seed=0, num_replicas=3, rank=r), 0)
              for r in range(3)]
    assert [len(s) for s in shards] == [1, 1, 1]


def test_epoch_keys_tag_indices_with_their_epoch():
    keyed = _epoch(_sampler(seed=0, epoch_keys=True), 7)
    plain = _epoch(_sampler(seed=0), 7)
    assert keyed == [[(7, i) for i in batch] for batch in plain]


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        _sampler(num_replicas=2, rank=2)


def test_mix_seed_is_deterministic_and_spreads():
    assert mix_seed(0, 1, 2) == mix_seed(0, 1, 2)
    values = {mix_seed(0, epoch, index) for epoch in range(4) for index in range(50)}
    assert len(values) == 200 and all(0 <= v < 2**63 for v in values)


# ---------------------------------------------------------------------------- loader level
@pytest.fixture
def jitter_set(make_coco, helpers):
    """6 landscape images, augmented with a random flip and colour jitter."""
    images = [helpers.coco_image(i, 30, 40) for i in range(1, 7)]
    anns = [helpers.coco_ann(i, i, [2, 2, 10 + i, 12]) for i in range(1, 7)]
    root = make_coco(images, anns)
    transforms = build_transforms(train=True, min_size=32, max_size=64, hflip_prob=0.5,
                                  color_jitter=0.4)
    return CocoDetection(root=root, split="train", transforms=transforms)


def test_a_samples_augmentation_depends_on_seed_epoch_and_index_only(jitter_set):
    view = SeededSamples(dataset=jitter_set, seed=5)
    forward = [view[(1, i)]["image"] for i in range(6)]
    backward = [view[(1, i)]["image"] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward, strict=True))
    assert not torch.equal(view[(2, 0)]["image"], forward[0])  # another epoch, another draw
    other_seed = SeededSamples(dataset=jitter_set, seed=6)[(1, 0)]["image"]
    assert not torch.equal(other_seed, forward[0])
    assert view.class_names == jitter_set.class_names  # attributes come from the dataset


def _batches(loader, count):
    out = []
    for batch in loader:
        out.append((batch["image_ids"].tolist(), batch["images"]))
        if len(out) == count:
            break
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_loader_resumed_mid_epoch_yields_the_rest_of_the_epoch(jitter_set, num_workers):
    def loader():
        return build_dataloader(dataset=jitter_set, batch_size=2, train=True, seed=9,
                                num_workers=num_workers)

    straight = loader()
    straight.batch_sampler.set_epoch(1)
    full = _batches(straight, 3)
    resumed = loader()
    resumed.batch_sampler.set_epoch(1, skip=1)
    rest = _batches(resumed, 2)
    assert [ids for ids, _ in rest] == [ids for ids, _ in full[1:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, full[1:], strict=True))


def test_eval_shards_cover_every_image_once(jitter_set):
    ids = []
    for rank in range(4):
        loader = build_dataloader(dataset=jitter_set, batch_size=2, train=False, num_replicas=4,
                                  rank=rank)
        ids += [i for b in loader for i in b["image_ids"].tolist()]
    assert sorted(ids) == list(range(1, 7))
