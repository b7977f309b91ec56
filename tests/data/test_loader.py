"""build_dataloader: Batch dicts, grouping, sequential eval, seeded reproducibility."""

import pytest
import torch
from torch.utils.data import Subset

from detector.data.coco import CocoDetection
from detector.data.loader import build_dataloader, dataset_aspect_ratios
from detector.data.transforms import build_transforms


@pytest.fixture
def mixed_root(make_coco, helpers):
    """8 images: ids 1-4 landscape 30x40, ids 5-8 portrait 40x30, one box each."""
    images = [helpers.coco_image(i, 30, 40) for i in range(1, 5)]
    images += [helpers.coco_image(i, 40, 30) for i in range(5, 9)]
    anns = [helpers.coco_ann(i, i, [2, 2, 10 + i, 12]) for i in range(1, 9)]
    return make_coco(images, anns)


def _train_set(root):
    t = build_transforms(train=True, min_size=40, max_size=80, hflip_prob=0.5, color_jitter=0.3)
    return CocoDetection(root=root, split="train", transforms=t)


def test_train_batches_are_grouped_and_padded(mixed_root):
    loader = build_dataloader(dataset=_train_set(mixed_root), batch_size=3, train=True, seed=0)
    seen = []
    for batch in loader:
        assert batch["images"].shape[-2] % 32 == 0 and batch["images"].shape[-1] % 32 == 0
        ids = batch["image_ids"]
        assert (ids <= 4).all() or (ids >= 5).all()  # never portrait and landscape together
        assert batch["box_valid"].all(dim=1).all()
        seen += ids.tolist()
    assert sorted(seen) == list(range(1, 9)) and len(loader) == 4


def test_eval_is_sequential_and_complete(mixed_root):
    ds = CocoDetection(root=mixed_root, split="train", transforms=build_transforms(train=False))
    loader = build_dataloader(dataset=ds, batch_size=3, train=False)
    assert [b["image_ids"].tolist() for b in loader] == [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert loader.pin_memory == torch.cuda.is_available()


def _epochs(root, seed, num_workers, epochs=2):
    loader = build_dataloader(dataset=_train_set(root), batch_size=2, train=True, seed=seed,
                              num_workers=num_workers)
    return [(b["image_ids"].tolist(), b["images"].clone()) for _ in range(epochs) for b in loader]


def _same(a, b):
    return all(ia == ib and torch.equal(xa, xb) for (ia, xa), (ib, xb) in zip(a, b, strict=True))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_reproduces_order_and_augmentation(mixed_root, num_workers):
    first = _epochs(mixed_root, 7, num_workers)
    assert _same(first, _epochs(mixed_root, 7, num_workers))
    assert not _same(first, _epochs(mixed_root, 8, num_workers))


def test_subset_aspect_ratios(mixed_root):
    ds = _train_set(mixed_root)
    subset = Subset(ds, [6, 0])
    torch.testing.assert_close(dataset_aspect_ratios(subset), torch.tensor([0.75, 40 / 30]))


@pytest.mark.gpu
def test_pinned_batches_on_cuda(mixed_root, cuda_device):
    loader = build_dataloader(dataset=_train_set(mixed_root), batch_size=2, train=True)
    batch = next(iter(loader))
    assert batch["images"].is_pinned() and batch["boxes"].is_pinned()
    assert batch["images"].to(cuda_device, non_blocking=True).is_cuda
