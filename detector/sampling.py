"""Balanced sampling of foreground and background rows for the whole batch in one call.

Shorthand: B images, N anchors or proposals per image. The sampler sees only matcher labels
(1 foreground, 0 background, -1 ignore) and never synchronises with the host: per-image counts stay
on the device and selection is a top-k over random keys.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_balanced"]


def _take_random(candidates: Tensor, num_take: Tensor, max_take: int, keys: Tensor) -> Tensor:
    """Pick ``num_take[b]`` uniformly random True entries of each row of ``candidates``.

    Args:
        candidates (BoolTensor[B, N]): rows to choose from.
        num_take (LongTensor[B]): how many to choose per row (<= number of candidates).
        max_take (int): static upper bound on ``num_take``.
        keys (Tensor[B, N]): i.i.d. uniform random keys.

    Returns:
        BoolTensor[B, N]: the chosen rows.
    """
    chosen = torch.zeros_like(candidates)
    k = min(max_take, candidates.shape[1])
    if k == 0:
        return chosen
    masked_keys = torch.where(candidates, keys, torch.full_like(keys, 2.0))
    order = masked_keys.topk(k, dim=1, largest=False).indices  # smallest keys first
    keep = torch.arange(k, device=candidates.device)[None, :] < num_take[:, None]
    return chosen.scatter(1, order, keep)


def sample_balanced(
    labels: Tensor,
    *,
    num_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample up to ``num_per_image`` rows per image, at most ``positive_fraction`` of them positive.

    As in Faster R-CNN: take min(#fg, num_per_image * positive_fraction) foreground rows and fill
    the rest with background rows (as many as exist). Selection is uniform among candidates.

    Args:
        labels (LongTensor[B, N]): 1 foreground, 0 background, -1 ignore.
        num_per_image (int): sample size per image (e.g. 256 for the RPN, 512 for the ROI head).
        positive_fraction (float): largest share of foreground in the sample (0.5 RPN, 0.25 ROI).
        generator (torch.Generator, optional): on ``labels.device``, for reproducible draws.

    Returns:
        pos_mask (BoolTensor[B, N]): sampled foreground rows.
        neg_mask (BoolTensor[B, N]): sampled background rows.
    """
    is_pos, is_neg = labels == 1, labels == 0
    max_pos = int(num_per_image * positive_fraction)
    num_pos = torch.clamp(is_pos.sum(dim=1), max=max_pos)
    num_neg = torch.minimum(is_neg.sum(dim=1), num_per_image - num_pos)
    keys = torch.rand(labels.shape, device=labels.device, generator=generator)
    pos_mask = _take_random(is_pos, num_pos, max_pos, keys)
    neg_mask = _take_random(is_neg, num_neg, num_per_image, keys)
    return pos_mask, neg_mask
