"""Matching: give every anchor/proposal a ground-truth index and a fg/bg/ignore label.

Shorthand: B images, N anchors or proposals per image, M ground-truth boxes per image (padded).
The matcher sees only an IoU matrix; sampling and losses are separate steps (``sampling.py``,
``losses.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Matcher", "best_columns"]


class Matcher:
    """Threshold matcher over a batched IoU matrix.

    Each row (anchor) is matched to its highest-IoU ground truth. Its label comes from the interval
    that IoU falls in: with ``thresholds=(t0, t1)`` and ``labels=(l0, l1, l2)``, IoU < t0 -> l0,
    t0 <= IoU < t1 -> l1, IoU >= t1 -> l2. Labels are 1 (foreground), 0 (background), -1 (ignore).

    RPN (paper): ``thresholds=(0.3, 0.7), labels=(0, -1, 1)``. ROI head with background in
    [0.1, 0.5): ``thresholds=(0.1, 0.5), labels=(-1, 0, 1)``; with background in [0.0, 0.5):
    ``thresholds=(0.5,), labels=(0, 1)``.

    Args:
        thresholds (Sequence[float]): increasing IoU thresholds.
        labels (Sequence[int]): one more label than thresholds, each in {-1, 0, 1}.
        allow_low_quality_matches (bool): also make foreground, for every ground truth, the rows
            whose IoU with it equals its best IoU (ties included), provided that IoU is > 0. This
            guarantees every ground truth at least one positive anchor (paper's condition (i)).
    """

    def __init__(
        self,
        *,
        thresholds: Sequence[float],
        labels: Sequence[int],
        allow_low_quality_matches: bool = False,
    ) -> None:
        thresholds = [float(t) for t in thresholds]
        labels = [int(v) for v in labels]
        if len(labels) != len(thresholds) + 1:
            raise ValueError(f"need len(labels) == len(thresholds) + 1, got {labels}, {thresholds}")
        if any(b < a for a, b in zip(thresholds, thresholds[1:], strict=False)):
            raise ValueError(f"thresholds must be increasing, got {thresholds}")
        if any(v not in (-1, 0, 1) for v in labels):
            raise ValueError(f"labels must be -1, 0 or 1, got {labels}")
        self.thresholds = thresholds
        self.labels = labels
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"Matcher(thresholds={self.thresholds}, labels={self.labels}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, iou: Tensor) -> tuple[Tensor, Tensor]:
        """Match rows to columns.

        Args:
            iou (Tensor[B, N, M]): IoU of each anchor with each ground truth; padded ground truth
                columns hold a negative value (as ``batched_box_iou`` writes them) and never match.
                Fastest as a transposed view of a contiguous ``[B, M, N]`` tensor, which is what
                ``batched_box_iou`` and ``AnchorGenerator.iou`` return.

        Returns:
            matched_idx (LongTensor[B, N]): column of the best ground truth, the first one on ties
                (0 when there is none; meaningful only where the label is 1).
            labels (LongTensor[B, N]): 1 foreground, 0 background, -1 ignore.
        """
        batch, rows, cols = iou.shape
        if cols == 0 or rows == 0:
            return iou.new_zeros((batch, rows), dtype=torch.long), self.labels_only(iou)
        scores = iou.transpose(1, 2)  # (B, M, N)
        best = scores.amax(dim=1, keepdim=True)  # (B, 1, N)
        return _first_true_(scores == best), self._labels(scores, best)

    def labels_only(self, iou: Tensor) -> Tensor:
        """The labels of ``__call__`` without the matched indices (one pass over ``iou`` fewer).

        For callers that need the indices of a few rows only: ``best_columns`` gives those.

        Args:
            iou (Tensor[B, N, M]): as for ``__call__``.

        Returns:
            LongTensor[B, N]: 1 foreground, 0 background, -1 ignore.
        """
        batch, rows, cols = iou.shape
        if cols == 0 or rows == 0:
            return self._interval_labels(iou.new_zeros((batch, rows))).long()
        scores = iou.transpose(1, 2)  # (B, M, N)
        return self._labels(scores, scores.amax(dim=1, keepdim=True))

    def _labels(self, scores: Tensor, best: Tensor) -> Tensor:
        """scores (Tensor[B, M, N]) and their column maxima best (Tensor[B, 1, N]) -> labels."""
        # Reductions run over the ground-truth axis of a [B, M, N] view. On CPU, index-returning
        # reductions over a non-innermost axis (max(dim).indices, argmax, any) are an order of
        # magnitude slower than amax, so the argmax and the "any" are amaxes of uint8 masks.
        labels = self._interval_labels(best.squeeze(1))
        if self.allow_low_quality_matches:
            best_per_gt = scores.amax(dim=2, keepdim=True)  # (B, M, 1)
            # IoU never exceeds 1, so a target of 2 excludes ground truth without a positive
            # overlap (no overlapping row, or padding).
            target = best_per_gt.masked_fill(best_per_gt <= 0, 2.0)
            is_best = (scores == target).view(torch.uint8).amax(dim=1)  # (B, N)
            labels.masked_fill_(is_best.view(torch.bool), 1)
        return labels.long()

    def _interval_labels(self, best_iou: Tensor) -> Tensor:
        """best_iou (Tensor[B, N]) -> (Int8Tensor[B, N]): the label of the interval it falls in.

        A negative IoU (padding only) counts as 0. The thresholds stay Python floats: a tensor built
        from them would be a host-to-device copy on every call.
        """
        if self.thresholds[0] <= 0:
            best_iou = best_iou.clamp(min=0)
        labels = torch.full_like(best_iou, self.labels[0], dtype=torch.int8)  # .long() by callers
        for threshold, label in zip(self.thresholds, self.labels[1:], strict=True):
            labels.masked_fill_(best_iou >= threshold, label)
        return labels


def _first_true_(mask: Tensor) -> Tensor:
    """mask (BoolTensor[B, M, N]) with a True in every column -> (LongTensor[B, N]): first True row.

    Row m of the mask is weighted M - m (in place: the mask is overwritten), so the largest weight
    present marks the first True row. A column without a True (NaN IoU) gets row M - 1 rather than
    an out-of-range index.
    """
    rows = mask.shape[1]
    if rows <= torch.iinfo(torch.uint8).max:
        weights = torch.arange(rows, 0, -1, dtype=torch.uint8, device=mask.device)
        weighted = mask.view(torch.uint8).mul_(weights.view(1, rows, 1))
    else:
        weights = torch.arange(rows, 0, -1, dtype=torch.int32, device=mask.device)
        weighted = mask * weights.view(1, rows, 1)
    return (rows - weighted.amax(dim=1).long()).clamp_(max=rows - 1)


def best_columns(iou: Tensor, rows: Tensor) -> Tensor:
    """``Matcher``'s matched index for a few rows: the best column, the first one on ties.

    Args:
        iou (Tensor[B, N, M]): as for ``Matcher``.
        rows (LongTensor[B, P]): rows of each image to look up.

    Returns:
        LongTensor[B, P]: column index (0 when M == 0).
    """
    batch, num = rows.shape
    if iou.shape[2] == 0:
        return rows.new_zeros((batch, num))
    picked = iou.gather(1, rows.unsqueeze(-1).expand(-1, -1, iou.shape[2]))  # (B, P, M)
    return _first_true_((picked == picked.amax(dim=2, keepdim=True)).transpose(1, 2))
