"""Aspect-ratio grouped batches: portrait and landscape images never share a batch.

Mixing them pads each to the other's long side and wastes most of the batch on zeros.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import Sampler


def aspect_ratio_groups(aspect_ratios: Tensor) -> Tensor:
    """LongTensor[N]: 1 for landscape or square images (w / h >= 1), 0 for portrait."""
    return (aspect_ratios >= 1.0).long()


class AspectRatioGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of indices, each drawn from one aspect-ratio group.

    Every epoch: shuffle the indices, split them by group, cut each group into batches of
    `batch_size` (the last one of a group may be short unless `drop_last`), then shuffle the
    order of the batches. Each index appears once per epoch (dropped ones aside).

    Args:
        aspect_ratios (Tensor[N]): width / height per dataset index.
        batch_size: images per batch.
        shuffle: False keeps index order within groups and groups in order (for debugging).
        drop_last: drop each group's short last batch.
        generator: torch generator for the shuffles (reproducible epochs).
    """

    def __init__(
        self,
        *,
        aspect_ratios: Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.groups = aspect_ratio_groups(torch.as_tensor(aspect_ratios, dtype=torch.float32))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator

    def _group_sizes(self) -> Tensor:
        return torch.bincount(self.groups, minlength=2)

    def __len__(self) -> int:
        sizes = self._group_sizes()
        if self.drop_last:
            return int((sizes // self.batch_size).sum())
        return int(((sizes + self.batch_size - 1) // self.batch_size).sum())

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.groups)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        batches: list[Tensor] = []
        for group in (0, 1):
            members = order[self.groups[order] == group]
            chunks = [c for c in torch.split(members, self.batch_size) if len(c)]
            if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
                chunks.pop()
            batches += chunks
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator)]
        for batch in batches:
            yield batch.tolist()
