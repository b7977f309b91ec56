"""Target assignment: reference boxes -> IoU -> match -> sample -> class labels and box deltas.

Shorthand: B images, N reference boxes per image (anchors, or proposals), G ground-truth boxes per
image (padded, with a validity mask). Everything runs for the whole batch at once with no
host-device synchronisation, so it can sit inside a CUDA training step without stalling it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detector.boxes import BoxCoder, batched_box_iou
from detector.matcher import Matcher
from detector.sampling import sample_balanced

__all__ = ["AssignedTargets", "assign_targets"]


@dataclass
class AssignedTargets:
    """What each reference box should predict.

    Attributes:
        labels (LongTensor[B, N]): training class per reference box: 0 background, 1..K foreground
            class (1 for the class-agnostic RPN), -1 ignored (between thresholds, outside the image,
            or not drawn by the sampler). Losses use rows with ``labels >= 0``.
        deltas (Tensor[B, N, 4]): float32 regression targets towards the matched ground truth;
            zero wherever ``labels <= 0``.
        matched_idx (LongTensor[B, N]): index of the matched ground truth (meaningful where fg).
    """

    labels: Tensor
    deltas: Tensor
    matched_idx: Tensor


def _gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """values (Tensor[B, G, ...]), index (LongTensor[B, N]) -> (Tensor[B, N, ...]); zeros if G == 0."""
    if values.shape[1] == 0:
        return values.new_zeros((*index.shape, *values.shape[2:]))
    expanded = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(
        *index.shape, *values.shape[2:]
    )
    return values.gather(1, expanded)


def assign_targets(
    reference: Tensor,
    gt_boxes: Tensor,
    gt_valid: Tensor,
    *,
    matcher: Matcher,
    box_coder: BoxCoder,
    gt_labels: Tensor | None = None,
    reference_valid: Tensor | None = None,
    num_samples: int | None = None,
    positive_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> AssignedTargets:
    """Assign classification and regression targets to reference boxes for a batch.

    Args:
        reference (Tensor[B, N, 4] or Tensor[N, 4]): xyxy anchors (shared, 2-D) or proposals.
        gt_boxes (Tensor[B, G, 4]): xyxy ground truth, padded.
        gt_valid (BoolTensor[B, G]): False for padding rows.
        matcher (Matcher): IoU thresholds -> fg/bg/ignore labels.
        box_coder (BoxCoder): encodes the regression targets.
        gt_labels (LongTensor[B, G], optional): class of each ground truth, 1..K; None = all 1 (RPN).
        reference_valid (BoolTensor[B, N], optional): False marks reference boxes to ignore
            (anchors outside the image, padded proposals).
        num_samples (int, optional): sample this many rows per image with ``positive_fraction``
            foreground at most; None keeps every non-ignored row (sampling-free focal loss).
        positive_fraction (float): foreground share of a sample.
        generator (torch.Generator, optional): for the sampler's draws.

    Returns:
        AssignedTargets with labels, deltas and matched indices, all ``[B, N, ...]``.
    """
    iou = batched_box_iou(reference, gt_boxes, gt_valid)
    matched_idx, match = matcher(iou)
    if reference_valid is not None:
        match = match.masked_fill(~reference_valid, -1)
    if num_samples is not None:
        pos, neg = sample_balanced(
            match, num_per_image=num_samples, positive_fraction=positive_fraction,
            generator=generator,
        )
        match = torch.where(pos, 1, torch.where(neg, 0, -1))
    if gt_labels is None:
        fg_class = torch.ones_like(match)
    else:
        fg_class = _gather_rows(gt_labels, matched_idx)
    labels = torch.where(match == 1, fg_class, match)
    if reference.dim() == 2:
        reference = reference.unsqueeze(0).expand(gt_boxes.shape[0], -1, -1)
    matched_boxes = _gather_rows(gt_boxes, matched_idx)
    deltas = box_coder.encode(reference, matched_boxes)
    deltas = torch.where((labels > 0).unsqueeze(-1), deltas, torch.zeros_like(deltas))
    return AssignedTargets(labels=labels, deltas=deltas, matched_idx=matched_idx)
