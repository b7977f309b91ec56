"""DataLoaders for detection: grouped batches for training, seeded workers, pinned memory on CUDA.

Reproducibility and exact resume: a training epoch's batch order is a pure function of
``(seed, epoch)`` (`AspectRatioGroupedBatchSampler`), and each training sample's augmentation a
pure function of ``(seed, epoch, index)`` (`SeededSamples` re-seeds the albumentations pipeline,
which keeps its own random state, before every sample). So neither depends on which worker
loads a sample nor on how many samples came before it: a run resumed from ``(epoch, batches
taken)`` sees exactly the batches an uninterrupted run would, with any ``num_workers``. Workers
still re-seed numpy and `random` from their torch seed (`seed_worker`) for anything else.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    Sampler,
    SequentialSampler,
    Subset,
    get_worker_info,
)

from detector.data.collate import collate_batch
from detector.data.samplers import AspectRatioGroupedBatchSampler, mix_seed
from detector.data.worker_signals import StopSafeDataLoader, ignore_stop_signals

__all__ = ["SeededSamples", "build_batch_sampler", "build_dataloader", "dataset_aspect_ratios",
           "seed_transforms", "seed_worker"]


def seed_transforms(dataset: Dataset, seed: int) -> None:
    """Seed the augmentation pipeline(s) of `dataset`, looking through Subset/ConcatDataset."""
    if isinstance(dataset, Subset):
        seed_transforms(dataset.dataset, seed)
    elif isinstance(dataset, ConcatDataset):
        for i, part in enumerate(dataset.datasets):
            seed_transforms(part, seed + i)
    elif hasattr(getattr(dataset, "transforms", None), "set_seed"):
        dataset.transforms.set_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: derive every RNG of this worker from its torch seed, and
    leave SIGINT/SIGTERM to the main process (``detector.data.worker_signals``)."""
    ignore_stop_signals()
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = get_worker_info()
    if info is not None:
        seed_transforms(info.dataset, seed)


class SeededSamples(Dataset):
    """A training view of ``dataset`` whose sample ``(epoch, index)`` is augmented with the seed
    ``mix_seed(seed, epoch, index)``; pair it with a sampler built with ``epoch_keys=True``.

    Plain integer keys load ``dataset[index]`` with the pipeline's current random state. Other
    attributes (``class_names``, ``coco``, ...) are the wrapped dataset's.

    Args:
        dataset (Dataset): a detection dataset (or a Subset/ConcatDataset of them).
        seed (int): the run's data seed.
    """

    def __init__(self, *, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        if isinstance(key, tuple):
            epoch, index = key
            seed_transforms(self.dataset, mix_seed(self.seed, epoch, index) % 2**32)
            return self.dataset[index]
        return self.dataset[key]

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("dataset", "seed"):  # unpickling: not yet set
            raise AttributeError(name)
        return getattr(self.dataset, name)


def dataset_aspect_ratios(dataset: Dataset) -> Tensor:
    """FloatTensor[len(dataset)]: width / height per index, through Subset/ConcatDataset."""
    if isinstance(dataset, Subset):
        return dataset_aspect_ratios(dataset.dataset)[torch.as_tensor(list(dataset.indices))]
    if isinstance(dataset, ConcatDataset):
        return torch.cat([dataset_aspect_ratios(part) for part in dataset.datasets])
    return torch.as_tensor(dataset.image_aspect_ratios(), dtype=torch.float32)


def build_batch_sampler(
    *, dataset: Dataset, batch_size: int, train: bool, generator: torch.Generator | None = None,
    group_aspect_ratio: bool = True, drop_last: bool = False, seed: int | None = None,
    num_replicas: int = 1, rank: int = 0, epoch_keys: bool = False,
) -> Sampler:
    """Train: shuffled (aspect-ratio grouped unless ``group_aspect_ratio=False``) batches, order
    a function of ``(seed, epoch)``, rank ``rank``'s shard of ``num_replicas``. Eval: sequential
    batches of the indices ``rank, rank + num_replicas, ...`` (every image exactly once over all
    ranks)."""
    if not train:
        if num_replicas == 1:
            return BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
        return BatchSampler(range(rank, len(dataset), num_replicas), batch_size, drop_last=False)
    ratios = dataset_aspect_ratios(dataset) if group_aspect_ratio else torch.ones(len(dataset))
    return AspectRatioGroupedBatchSampler(
        aspect_ratios=ratios, batch_size=batch_size, drop_last=drop_last, generator=generator,
        seed=seed, num_replicas=num_replicas, rank=rank, epoch_keys=epoch_keys)


def build_dataloader(
    *,
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    group_aspect_ratio: bool = True,
    drop_last: bool = False,
    pin_memory: bool | None = None,
    persistent_workers: bool = False,
    size_divisible: int = 32,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader:
    """A DataLoader yielding Batch dicts (docs/design.md) from a detection dataset.

    Args:
        dataset: a `DetectionDataset` (or a Subset/ConcatDataset of them).
        batch_size: images per batch.
        train: shuffled, aspect-ratio grouped batches; else sequential, all images once.
        num_workers: worker processes (0: load in the main process).
        seed: seeds the batch order, worker RNGs and augmentation pipelines.
        group_aspect_ratio: keep portrait and landscape images in separate batches (train).
        drop_last: drop short batches (train).
        pin_memory: default: whether CUDA is available.
        persistent_workers: keep workers alive between epochs (needs num_workers > 0).
        size_divisible: padded batch height/width are multiples of this.
        num_replicas, rank: distributed training: this process's shard (train: same epoch
            order on every rank, disjoint batches; eval: every ``num_replicas``-th image).

    Workers ignore SIGINT and SIGTERM (a signal to the whole process group stops training
    through the main process, see ``detector.data.worker_signals``).

    Train loaders wrap ``dataset`` in `SeededSamples` (``loader.dataset.dataset`` is the original)
    and their batch sampler is an `AspectRatioGroupedBatchSampler` (``set_epoch(epoch, skip=k)``
    resumes inside an epoch).
    """
    generator = torch.Generator().manual_seed(seed)
    if num_workers == 0:
        seed_transforms(dataset, seed)
    batch_sampler = build_batch_sampler(
        dataset=dataset, batch_size=batch_size, train=train, generator=generator,
        group_aspect_ratio=group_aspect_ratio, drop_last=drop_last, seed=seed,
        num_replicas=num_replicas, rank=rank, epoch_keys=train)
    if train:
        dataset = SeededSamples(dataset=dataset, seed=seed)
    return StopSafeDataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate_batch, size_divisible=size_divisible),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=generator,
        persistent_workers=persistent_workers and num_workers > 0,
    )
