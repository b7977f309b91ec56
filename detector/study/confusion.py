"""The confusion matrix of a detector at one operating point: which class each ground truth box
was detected as, and what fired on background.

Detections scored at least ``min_score`` are matched to ground truth regardless of class: in
descending score (per image), each takes the unmatched, non-crowd box with which it has the
highest IoU (>= ``iou``). Rows are the true class (K classes, then "background"), columns the
predicted one (K classes, then "background"):

- a matched detection counts at (its box's class, its class): the diagonal when right;
- an unmatched detection at (background, its class): fired on nothing, or a duplicate;
- an unmatched box at (its class, background): missed.

Shorthand: K classes, N detections, G ground truth boxes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from detector.ops.boxes import box_iou
from detector.study.errors import Boxes

__all__ = ["confusion_matrix"]


def _match_image(gt_boxes: np.ndarray, det_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """ndarray[n] int64: the ground truth row each detection (in score order) takes, or -1."""
    taken = np.full(len(det_boxes), -1, dtype=np.int64)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return taken
    iou = box_iou(torch.from_numpy(det_boxes), torch.from_numpy(gt_boxes)).numpy()
    free = np.ones(len(gt_boxes), dtype=bool)
    for i in range(len(det_boxes)):
        candidates = np.where(free & (iou[i] >= iou_threshold), iou[i], -1.0)
        if candidates.max() >= iou_threshold:
            taken[i] = int(candidates.argmax())
            free[taken[i]] = False
    return taken


def confusion_matrix(gt: Boxes, det: Boxes, *, category_ids: Sequence[int],
                     min_score: float = 0.5, iou: float = 0.5) -> np.ndarray:
    """ndarray[K + 1, K + 1] int64 of counts (see the module docstring).

    Args:
        gt, det: ground truth and detections (``labels``: category ids).
        category_ids: the K category ids, in row/column order; others are left out.
    """
    k = len(category_ids)
    index = {int(c): i for i, c in enumerate(category_ids)}
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    det = det.subset((det.scores >= min_score) & np.isin(det.labels, list(index)))
    gt = gt.subset(~gt.crowd & np.isin(gt.labels, list(index)))
    for image_id in np.union1d(gt.image_ids, det.image_ids):
        g_rows = np.flatnonzero(gt.image_ids == image_id)
        d_rows = np.flatnonzero(det.image_ids == image_id)
        d_rows = d_rows[np.argsort(-det.scores[d_rows], kind="stable")]
        taken = _match_image(gt.boxes[g_rows], det.boxes[d_rows], iou)
        pred = np.asarray([index[int(c)] for c in det.labels[d_rows]], dtype=np.int64)
        true = np.asarray([index[int(c)] for c in gt.labels[g_rows]], dtype=np.int64)
        hit = taken >= 0
        np.add.at(matrix, (true[taken[hit]], pred[hit]), 1)
        np.add.at(matrix, (np.full((~hit).sum(), k), pred[~hit]), 1)
        unmatched = np.setdiff1d(np.arange(len(g_rows)), taken[hit])
        np.add.at(matrix, (true[unmatched], np.full(len(unmatched), k)), 1)
    return matrix
