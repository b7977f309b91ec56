"""Recall of the RPN's proposals: which ground-truth boxes the second stage could ever detect.

A box no proposal overlaps is lost before the ROI head sees it, whatever its classifier learns.
This splits that loss by class and by COCO size bucket, at IoU 0.5 and 0.7 and for the first N
proposals (proposals come score-ordered), so a change of RPN loss (sampled cross-entropy vs
sampling-free focal), anchors or stride can be judged on the stage it changes.

Shorthand: G ground-truth boxes of one image, R proposals of that image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from detector.ops.boxes import xywh_to_xyxy

__all__ = ["best_proposal_iou", "format_proposal_recall_table", "proposal_recall"]

# COCO's area buckets (pixels^2 of the original image): small < 32^2 <= medium < 96^2 <= large
_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


def best_proposal_iou(gt_boxes: Tensor, proposals: Tensor, limits: Sequence[int]) -> Tensor:
    """Best IoU of each ground-truth box with the first ``n`` proposals, for each ``n`` of ``limits``.

    Args:
        gt_boxes (Tensor[G, 4]): xyxy.
        proposals (Tensor[R, 4]): xyxy, best-scored first.
        limits (sequence of int >= 1): numbers of proposals; an ``n`` above R uses all R.

    Returns:
        Tensor[G, len(limits)] float32, 0 where no proposal overlaps (or there is none).
    """
    gt_boxes, proposals = gt_boxes.float(), proposals.float()
    if gt_boxes.shape[0] == 0 or proposals.shape[0] == 0:
        return gt_boxes.new_zeros(gt_boxes.shape[0], len(limits))
    best_so_far = box_iou(gt_boxes, proposals).cummax(dim=1).values  # [G, R]
    columns = torch.tensor([min(int(n), proposals.shape[0]) - 1 for n in limits])
    return best_so_far[:, columns]


def proposal_recall(
    coco,
    proposals: dict[int, Tensor],
    *,
    cat_id_to_name: dict[int, str],
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    limits: Sequence[int] = (100, 300),
) -> dict:
    """Share of the ground-truth boxes some proposal overlaps at each IoU threshold.

    Args:
        coco: a pycocotools ``COCO`` with the ground truth (crowd boxes are left out).
        proposals: image id -> ``Tensor[R, 4]`` xyxy proposals in original-image pixels,
            best-scored first; only these images are counted.
        cat_id_to_name: category id -> class name (the rows of the per-class table).
        iou_thresholds: IoU a proposal must reach for its box to count as recalled.
        limits: numbers of proposals (first n per image).

    Returns:
        ``{"limits": [...], "iou_thresholds": [...], "rows": {row: {"boxes": n,
        "recall": [[r per limit] per threshold], "mean_best_iou": [per limit]}}}`` with rows
        ``all``, each class name, and ``small``/``medium``/``large``; recall is None for a row
        without boxes.
    """
    ious, cats, areas = [], [], []
    for image_id, boxes in proposals.items():
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        gt = xywh_to_xyxy(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).view(-1, 4))
        ious.append(best_proposal_iou(gt, boxes, limits))
        cats.extend(a["category_id"] for a in anns)
        areas.extend(float(a["bbox"][2]) * float(a["bbox"][3]) for a in anns)
    best = torch.cat(ious) if ious else torch.zeros(0, len(limits))
    cats_t = torch.tensor(cats, dtype=torch.long)
    areas_t = torch.tensor(areas, dtype=torch.float32)
    rows = {"all": torch.ones(best.shape[0], dtype=torch.bool)}
    for cat_id, name in cat_id_to_name.items():
        rows[str(name)] = cats_t == int(cat_id)
    for bucket, low, high in _BUCKETS:
        rows[bucket] = (areas_t >= low) & (areas_t < high)
    table = {}
    for row, mask in rows.items():
        picked = best[mask]
        count = int(picked.shape[0])
        table[row] = {
            "boxes": count,
            "recall": [[float((picked[:, j] >= thr).float().mean()) if count else None
                        for j in range(len(limits))] for thr in iou_thresholds],
            "mean_best_iou": [float(picked[:, j].mean()) if count else None
                              for j in range(len(limits))],
        }
    return {"limits": [int(n) for n in limits], "iou_thresholds": [float(t) for t in iou_thresholds],
            "rows": table}


def format_proposal_recall_table(result: dict) -> str:
    """Plain-text table of ``proposal_recall``'s result: one line per row, one column per
    (threshold, limit)."""
    limits, thresholds = result["limits"], result["iou_thresholds"]
    heads = [f"R{int(t * 100)}@{n}" for t in thresholds for n in limits]
    width = max([len("proposal recall")] + [len(r) for r in result["rows"]])
    lines = [f"{'proposal recall':<{width}}  {'boxes':>6}  " + "  ".join(f"{h:>8}" for h in heads)]
    for row, entry in result["rows"].items():
        cells = [v for per_thr in entry["recall"] for v in per_thr]
        shown = "  ".join(f"{'-':>8}" if v is None else f"{v:>8.3f}" for v in cells)
        lines.append(f"{row:<{width}}  {entry['boxes']:>6}  {shown}")
    return "\n".join(lines)
