"""Target assignment: reference boxes -> IoU -> match -> sample -> class labels and box deltas.

Shorthand: B images, N reference boxes per image (anchors, or proposals), G ground-truth boxes per
image (padded, with a validity mask). Everything runs for the whole batch at once with no
host-device synchronisation, so it can sit inside a CUDA training step without stalling it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detector.ops.boxes import BoxCoder, batched_box_iou
from detector.ops.matcher import Matcher, best_columns
from detector.ops.sampling import BalancedSample, draw_balanced

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
        matched_idx (LongTensor[B, N]): index of the matched ground truth, meaningful where
            ``labels > 0`` (with sampling it is computed for the drawn foreground only, and is 0
            elsewhere).
    """

    labels: Tensor
    deltas: Tensor
    matched_idx: Tensor


def _gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """values (Tensor[B, G, ...]), index (LongTensor[B, N]) -> (Tensor[B, N, ...]); zeros if G == 0.

    One ``index_select`` over the flattened batch: a ``gather`` with an index expanded over the
    trailing dimensions is about twice as slow on CPU.
    """
    batch, num_gt = values.shape[:2]
    if num_gt == 0:
        return values.new_zeros((*index.shape, *values.shape[2:]))
    offsets = torch.arange(batch, device=index.device).unsqueeze(1) * num_gt
    rows = values.flatten(0, 1).index_select(0, (index + offsets).flatten())
    return rows.view(*index.shape, *values.shape[2:])


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
    iou: Tensor | None = None,
) -> AssignedTargets:
    """Assign classification and regression targets to reference boxes for a batch.

    Args:
        reference (Tensor[B, N, 4] or Tensor[N, 4]): xyxy anchors (shared, 2-D) or proposals.
        gt_boxes (Tensor[B, G, 4]): xyxy ground truth, padded.
        gt_valid (BoolTensor[B, G]): False for padding rows.
        matcher (Matcher): IoU thresholds -> fg/bg/ignore labels.
        box_coder (BoxCoder): encodes the regression targets.
        gt_labels (LongTensor[B, G], optional): class of each ground truth, 1..K; None: all 1
            (the class-agnostic RPN).
        reference_valid (BoolTensor[B, N], optional): False marks reference boxes to ignore
            (anchors outside the image, padded proposals).
        num_samples (int, optional): sample this many rows per image with ``positive_fraction``
            foreground at most; None keeps every non-ignored row (sampling-free focal loss).
        positive_fraction (float): foreground share of a sample.
        generator (torch.Generator, optional): for the sampler's draws.
        iou (Tensor[B, N, G], optional): ``batched_box_iou(reference, gt_boxes, gt_valid)`` when the
            caller has it already, e.g. from ``AnchorGenerator.iou`` (the fast path for anchors).

    Returns:
        AssignedTargets with labels, deltas and matched indices, all ``[B, N, ...]``.
    """
    if iou is None:
        iou = batched_box_iou(reference, gt_boxes, gt_valid)
    if num_samples is None:
        matched_idx, match = matcher(iou)
        match = match if reference_valid is None else match.masked_fill(~reference_valid, -1)
        fg = match == 1
        fg_class = fg.long() if gt_labels is None else _gather_rows(gt_labels, matched_idx)
        labels = torch.where(fg, fg_class, match)
        deltas = _dense_deltas(reference, gt_boxes, matched_idx, fg, box_coder)
        return AssignedTargets(labels=labels, deltas=deltas, matched_idx=matched_idx)
    match = matcher.labels_only(iou)
    match = match if reference_valid is None else match.masked_fill(~reference_valid, -1)
    sample = draw_balanced(
        match, num_per_image=num_samples, positive_fraction=positive_fraction, generator=generator
    )
    return _sampled_targets(reference, gt_boxes, gt_labels, iou, sample, box_coder)


def _sampled_targets(
    reference: Tensor, gt_boxes: Tensor, gt_labels: Tensor | None, iou: Tensor,
    sample: BalancedSample, box_coder: BoxCoder,
) -> AssignedTargets:
    """Targets for a balanced draw: only the drawn foreground rows (at most P per image) need a
    matched ground truth, a class and deltas, so those are computed for them alone and scattered
    into per-row tensors."""
    num_rows = iou.shape[1]
    fg, bg = sample.masks(num_rows)
    rows, taken = sample.pos_index, sample.pos_taken  # (B, P); untaken entries are not foreground
    row_gt = best_columns(iou, rows) * taken  # (B, P)
    matched_idx = torch.zeros_like(fg, dtype=torch.long).scatter_(1, rows, row_gt)
    if gt_labels is None:
        fg_class = 1
    else:
        fg_class = torch.zeros_like(matched_idx).scatter_(1, rows, _gather_rows(gt_labels, row_gt))
    labels = torch.where(fg, fg_class, bg.long() - 1)  # class, 0 background, -1 not drawn
    deltas = _sampled_deltas(reference, gt_boxes, rows, row_gt, taken, box_coder)
    return AssignedTargets(labels=labels, deltas=deltas, matched_idx=matched_idx)


def _dense_deltas(
    reference: Tensor, gt_boxes: Tensor, matched_idx: Tensor, fg: Tensor, box_coder: BoxCoder
) -> Tensor:
    """Encode every row against its match, zero off the foreground (fg BoolTensor[B, N])."""
    # A 2-D reference (shared anchors) broadcasts against the per-image matched boxes.
    deltas = box_coder.encode(reference, _gather_rows(gt_boxes, matched_idx))
    return torch.where(fg.unsqueeze(-1), deltas, 0.0)


def _sampled_deltas(
    reference: Tensor, gt_boxes: Tensor, rows: Tensor, row_gt: Tensor, taken: Tensor,
    box_coder: BoxCoder,
) -> Tensor:
    """Encode only the drawn foreground rows and scatter them into zeros.

    Args:
        rows (LongTensor[B, P]): drawn rows (``BalancedSample.pos_index``).
        row_gt (LongTensor[B, P]): their matched ground truth.
        taken (BoolTensor[B, P]): which entries count; the others are never foreground rows.

    Returns:
        Tensor[B, N, 4] float32.
    """
    if reference.dim() == 2:
        ref = reference[rows]  # (B, P, 4)
    else:
        ref = reference.gather(1, rows.unsqueeze(-1).expand(-1, -1, 4))
    encoded = box_coder.encode(ref, _gather_rows(gt_boxes, row_gt))
    fg_deltas = torch.where(taken.unsqueeze(-1), encoded, 0.0)
    deltas = fg_deltas.new_zeros((rows.shape[0], reference.shape[-2], 4))
    return deltas.scatter_(1, rows.unsqueeze(-1).expand(-1, -1, 4), fg_deltas)
