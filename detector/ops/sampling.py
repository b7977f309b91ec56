"""Balanced sampling of foreground and background rows for the whole batch in one call.

Shorthand: B images, N anchors or proposals per image, S sample size per image, P the most
foreground rows a sample may hold (S and P capped at N in index shapes). The sampler sees only
matcher labels (1 foreground, 0 background, -1 ignore) and never synchronises with the host:
per-image counts stay on the device and selection is a top-k over random keys, so every tensor
has a static shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BalancedSample", "draw_balanced"]


@dataclass
class BalancedSample:
    """A balanced draw as fixed-size index lists; entry j of a row counts only where ``*_taken``.

    The entries of a row are distinct rows of that image. A ``pos_index`` entry that is not taken
    is never a foreground row (when fewer than P exist, all of them are taken), so values computed
    for every entry can be scattered back with the untaken ones zeroed.

    Attributes:
        pos_index (LongTensor[B, P]): sampled foreground rows first, in random order.
        pos_taken (BoolTensor[B, P]): True for the first min(#fg, P) entries.
        neg_index (LongTensor[B, S]): sampled background rows first, in random order.
        neg_taken (BoolTensor[B, S]): True for the first min(#bg, S - #taken fg) entries.
    """

    pos_index: Tensor
    pos_taken: Tensor
    neg_index: Tensor
    neg_taken: Tensor

    def masks(self, num_rows: int) -> tuple[Tensor, Tensor]:
        """num_rows (int): N -> pos_mask, neg_mask (BoolTensor[B, N]): the sampled rows."""
        return _to_mask(self.pos_index, self.pos_taken, num_rows), _to_mask(
            self.neg_index, self.neg_taken, num_rows
        )


def _to_mask(index: Tensor, taken: Tensor, num_rows: int) -> Tensor:
    """index (LongTensor[B, k]), taken (BoolTensor[B, k]) -> (BoolTensor[B, num_rows])."""
    mask = torch.zeros((index.shape[0], num_rows), dtype=torch.bool, device=index.device)
    return mask.scatter_(1, index, taken)


def _take_random(
    candidates: Tensor, num_take: Tensor, max_take: int, keys: Tensor
) -> tuple[Tensor, Tensor]:
    """Pick ``num_take[b]`` uniformly random True entries of each row of ``candidates``.

    Args:
        candidates (BoolTensor[B, N]): rows to choose from.
        num_take (LongTensor[B]): how many to choose per row (<= number of candidates).
        max_take (int): static upper bound on ``num_take``.
        keys (Tensor[B, N]): i.i.d. uniform random keys in [0, 1).

    Returns:
        index (LongTensor[B, k]) and taken (BoolTensor[B, k]), k = min(max_take, N).
    """
    k = min(max_take, candidates.shape[1])
    # Non-candidates get a key above every random one, so the k smallest keys list the candidates
    # first, in random order; the first num_take of them are a uniform draw without replacement.
    index = torch.where(candidates, keys, 2.0).topk(k, dim=1, largest=False).indices
    taken = torch.arange(k, device=candidates.device) < num_take.unsqueeze(1)
    return index, taken


def draw_balanced(
    labels: Tensor,
    *,
    num_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> BalancedSample:
    """Sample up to ``num_per_image`` rows per image, at most ``positive_fraction`` of them fg.

    As in Faster R-CNN: take min(#fg, P) foreground rows, P = int(num_per_image *
    positive_fraction), and fill the rest with background rows (as many as exist). Selection is
    uniform among candidates.

    Args:
        labels (LongTensor[B, N]): 1 foreground, 0 background, -1 ignore.
        num_per_image (int): sample size per image (e.g. 256 for the RPN, 512 for the ROI head).
        positive_fraction (float): largest share of foreground in the sample (0.5 RPN, 0.25 ROI).
        generator (torch.Generator, optional): on ``labels.device``, for reproducible draws.

    Returns:
        BalancedSample: the draw as index lists.
    """
    is_pos, is_neg = labels == 1, labels == 0
    max_pos = int(num_per_image * positive_fraction)
    num_pos = is_pos.sum(dim=1).clamp_(max=max_pos)
    num_neg = torch.minimum(is_neg.sum(dim=1), num_per_image - num_pos)
    keys = torch.rand(labels.shape, device=labels.device, generator=generator)
    pos_index, pos_taken = _take_random(is_pos, num_pos, max_pos, keys)
    neg_index, neg_taken = _take_random(is_neg, num_neg, num_per_image, keys)
    return BalancedSample(pos_index, pos_taken, neg_index, neg_taken)

