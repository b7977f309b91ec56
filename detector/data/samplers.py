"""Aspect-ratio grouped batches: portrait and landscape images never share a batch.

Mixing them pads each to the other's long side and wastes most of the batch on zeros.

The order of an epoch is a pure function of ``(seed, epoch)``, so a run can be resumed from
``(epoch, batches already taken)`` at the index level (no image is loaded for the skipped
batches), and every process of a distributed run draws the same permutation and keeps its own
disjoint shard of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

__all__ = ["AspectRatioGroupedBatchSampler", "aspect_ratio_groups", "mix_seed"]


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers, e.g. ``(seed, epoch, index)``."""
    state = np.random.SeedSequence([int(v) % 2**63 for v in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def aspect_ratio_groups(aspect_ratios: Tensor) -> Tensor:
    """LongTensor[N]: 1 for landscape or square images (w / h >= 1), 0 for portrait."""
    return (aspect_ratios >= 1.0).long()


class AspectRatioGroupedBatchSampler(Sampler[list[int]]):
    """Shuffled batches of indices, each drawn from one aspect-ratio group.

    Every epoch: shuffle the indices, split them by group, cut each group into batches of
    `batch_size` (the last one of a group may be short unless `drop_last`), then shuffle the
    order of the batches. Each index appears once per epoch (dropped ones aside).

    The shuffles of epoch ``e`` come from a generator seeded with ``mix_seed(seed, e)``. Iterating
    uses the epoch set by ``set_epoch`` and advances it once the epoch is exhausted, so a plain
    loop over the sampler still reshuffles every epoch. With ``num_replicas > 1`` the epoch's batch list is padded (by
    repeating its first batches) to a multiple of ``num_replicas`` and rank ``r`` takes batches
    ``r, r + num_replicas, ...``: equal counts per rank, disjoint unless padded.

    Args:
        aspect_ratios (Tensor[N]): width / height per dataset index.
        batch_size: images per batch (per process).
        shuffle: False keeps index order within groups and groups in order (for debugging).
        drop_last: drop each group's short last batch.
        generator: torch generator that draws ``seed`` when it is not given.
        seed: the order of epoch ``e`` depends only on ``(seed, e)``; default: drawn from
            ``generator`` (or torch's global generator).
        num_replicas: processes sharing the epoch (distributed training).
        rank: this process's shard, in ``[0, num_replicas)``.
        epoch_keys: yield ``(epoch, index)`` pairs instead of indices (for datasets whose
            augmentation is a function of both, see ``detector.data.loader.SeededSamples``).
    """

    def __init__(
        self,
        *,
        aspect_ratios: Tensor,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_keys: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.groups = aspect_ratio_groups(torch.as_tensor(aspect_ratios, dtype=torch.float32))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        if seed is None:
            seed = int(torch.randint(2**62, (), generator=generator))
        self.seed = int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch_keys = epoch_keys
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        """The next iteration yields epoch ``epoch``, starting after its first ``skip`` batches
        (of this rank's shard)."""
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.epoch, self._skip = int(epoch), int(skip)

    def _group_sizes(self) -> Tensor:
        return torch.bincount(self.groups, minlength=2)

    def _num_global_batches(self) -> int:
        sizes = self._group_sizes()
        if self.drop_last:
            return int((sizes // self.batch_size).sum())
        return int(((sizes + self.batch_size - 1) // self.batch_size).sum())

    def __len__(self) -> int:
        """Batches per epoch of this rank (skipped ones included)."""
        return -(-self._num_global_batches() // self.num_replicas)

    def global_batches(self, epoch: int) -> list[Tensor]:
        """All batches of ``epoch`` (every rank's), in order: LongTensor[<= batch_size] each."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        n = len(self.groups)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        batches: list[Tensor] = []
        for group in (0, 1):
            members = order[self.groups[order] == group]
            chunks = [c for c in torch.split(members, self.batch_size) if len(c)]
            if self.drop_last and chunks and len(chunks[-1]) < self.batch_size:
                chunks.pop()
            batches += chunks
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return batches

    def epoch_batches(self, epoch: int) -> list[Tensor]:
        """This rank's batches of ``epoch``."""
        batches = self.global_batches(epoch)
        if self.num_replicas == 1 or not batches:
            return batches
        padded = [batches[i % len(batches)] for i in range(len(self) * self.num_replicas)]
        return padded[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        # A generator: the epoch is read at the first batch (DataLoader may call iter() twice
        # before taking one) and advanced only when the epoch is exhausted.
        epoch, skip = self.epoch, self._skip
        self._skip = 0
        for batch in self.epoch_batches(epoch)[skip:]:
            yield [(epoch, i) for i in batch.tolist()] if self.epoch_keys else batch.tolist()
        if self.epoch == epoch:
            self.epoch = epoch + 1
