"""DataLoaders for detection: grouped batches for training, seeded workers, pinned memory on CUDA.

Reproducibility: one `torch.Generator` seeded with `seed` drives the batch order and the
per-worker seeds; each worker re-seeds numpy, `random` and the dataset's albumentations
pipeline (which keeps its own random state) from its torch seed.
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
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    get_worker_info,
)

from detector.data.collate import collate_batch
from detector.data.samplers import AspectRatioGroupedBatchSampler


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
    """DataLoader ``worker_init_fn``: derive every RNG of this worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = get_worker_info()
    if info is not None:
        seed_transforms(info.dataset, seed)


def dataset_aspect_ratios(dataset: Dataset) -> Tensor:
    """FloatTensor[len(dataset)]: width / height per index, through Subset/ConcatDataset."""
    if isinstance(dataset, Subset):
        return dataset_aspect_ratios(dataset.dataset)[torch.as_tensor(list(dataset.indices))]
    if isinstance(dataset, ConcatDataset):
        return torch.cat([dataset_aspect_ratios(part) for part in dataset.datasets])
    return torch.as_tensor(dataset.image_aspect_ratios(), dtype=torch.float32)


def build_batch_sampler(
    *, dataset: Dataset, batch_size: int, train: bool, generator: torch.Generator,
    group_aspect_ratio: bool = True, drop_last: bool = False,
) -> Sampler:
    """Train: shuffled (aspect-ratio grouped) batches. Eval: sequential batches."""
    if not train:
        return BatchSampler(SequentialSampler(dataset), batch_size, drop_last=False)
    if group_aspect_ratio:
        return AspectRatioGroupedBatchSampler(
            aspect_ratios=dataset_aspect_ratios(dataset), batch_size=batch_size,
            drop_last=drop_last, generator=generator)
    return BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last)


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
    """
    generator = torch.Generator().manual_seed(seed)
    if num_workers == 0:
        seed_transforms(dataset, seed)
    batch_sampler = build_batch_sampler(dataset=dataset, batch_size=batch_size, train=train,
                                        generator=generator,
                                        group_aspect_ratio=group_aspect_ratio, drop_last=drop_last)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate_batch, size_divisible=size_divisible),
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=generator,
        persistent_workers=persistent_workers and num_workers > 0,
    )
