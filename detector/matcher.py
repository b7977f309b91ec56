"""Matching: give every anchor/proposal a ground-truth index and a foreground/background/ignore label.

Shorthand: B images, N anchors or proposals per image, M ground-truth boxes per image (padded).
The matcher sees only an IoU matrix; sampling and losses are separate steps (``sampling.py``,
``losses.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["Matcher"]


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

        Returns:
            matched_idx (LongTensor[B, N]): column of the best ground truth (0 when there is none;
                meaningful only where the label is 1).
            labels (LongTensor[B, N]): 1 foreground, 0 background, -1 ignore.
        """
        batch, rows, cols = iou.shape
        if cols == 0:
            iou = iou.new_full((batch, rows, 1), -1.0)
        best_iou, matched_idx = iou.max(dim=2)
        boundaries = iou.new_tensor(self.thresholds)
        label_table = torch.tensor(self.labels, device=iou.device, dtype=torch.long)
        labels = label_table[torch.bucketize(best_iou.clamp(min=0), boundaries, right=True)]
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values  # (B, 1, M)
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            labels = torch.where(is_best.any(dim=2), torch.ones_like(labels), labels)
        return matched_idx, labels
