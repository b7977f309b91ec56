"""COCO-style evaluation: detections -> COCO results -> pycocotools COCOeval -> a metrics dict.

Shorthand: D detections in one image, K foreground classes (contiguous labels ``1..K``),
T = 10 IoU thresholds (0.50:0.05:0.95), R = 101 recall thresholds, A = 4 area ranges
(all, small, medium, large), M = 3 max-detection limits (1, 10, 100).

Undefined values. pycocotools reports ``-1`` for a statistic with no ground truth to average over
(e.g. ``APs`` when no GT box is small) and keeps ``-1`` in ``eval["precision"]`` for classes with
no GT. Here every such value is ``None`` (JSON ``null``), never ``-1`` and never NaN, in the
12 standard stats, in ``per_class`` and in ``pr_iou50`` alike.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.fileio import atomic_writer
from detector.ops.boxes import xyxy_to_xywh

#: Names of ``COCOeval.stats[0..11]`` in pycocotools' order.
STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)

# (title, IoU range, area label, maxDets) for each stat, as pycocotools prints them.
_STAT_ROWS: tuple[tuple[str, str, str, int], ...] = (
    ("Average Precision  (AP)", "0.50:0.95", "all", 100),
    ("Average Precision  (AP)", "0.50", "all", 100),
    ("Average Precision  (AP)", "0.75", "all", 100),
    ("Average Precision  (AP)", "0.50:0.95", "small", 100),
    ("Average Precision  (AP)", "0.50:0.95", "medium", 100),
    ("Average Precision  (AP)", "0.50:0.95", "large", 100),
    ("Average Recall     (AR)", "0.50:0.95", "all", 1),
    ("Average Recall     (AR)", "0.50:0.95", "all", 10),
    ("Average Recall     (AR)", "0.50:0.95", "all", 100),
    ("Average Recall     (AR)", "0.50:0.95", "small", 100),
    ("Average Recall     (AR)", "0.50:0.95", "medium", 100),
    ("Average Recall     (AR)", "0.50:0.95", "large", 100),
)

_BOX_DECIMALS = 2  # COCO annotations themselves carry 2 decimals
_SCORE_DECIMALS = 5


def detections_to_coco_results(
    detections: Sequence[Mapping[str, Any]], *, label_to_cat_id: Mapping[int, int]
) -> list[dict]:
    """Convert per-image detections to COCO results entries.

    Args:
        detections: one dict per image with ``image_id`` (int), ``boxes`` (Tensor[D, 4]: xyxy,
            original-image pixels), ``scores`` (Tensor[D]) and ``labels`` (LongTensor[D]: 1..K).
        label_to_cat_id: contiguous label -> original COCO category id.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]`` with original
        category ids, bbox rounded to 0.01 px and score to 1e-5.
    """
    lut = _label_lookup(label_to_cat_id)
    results: list[dict] = []
    for det in detections:
        image_id = int(det["image_id"])
        rows = _detection_rows(det["boxes"], det["scores"], det["labels"], lut)
        results.extend(
            {"image_id": image_id, "category_id": int(r[5]), "bbox": r[:4], "score": r[4]}
            for r in rows
        )
    return results


def _label_lookup(label_to_cat_id: Mapping[int, int]) -> torch.Tensor:
    """LongTensor[max_label + 1]: category id per label, -1 where a label has no category."""
    lut = torch.full((max(label_to_cat_id, default=0) + 1,), -1, dtype=torch.long)
    for label, cat_id in label_to_cat_id.items():
        lut[int(label)] = int(cat_id)
    return lut


def _detection_rows(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, lut: torch.Tensor
) -> list[list[float]]:
    """One image's detections as rows ``[x, y, w, h, score, cat_id]`` (a single ``.tolist()``).

    Args:
        boxes (Tensor[D, 4]): xyxy pixels. scores (Tensor[D]). labels (LongTensor[D]): 1..K.
        lut (LongTensor[L]): label -> category id, -1 for unmapped labels.
    """
    boxes = torch.as_tensor(boxes).detach().to("cpu", torch.float64).reshape(-1, 4)
    scores = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
    labels = torch.as_tensor(labels).detach().to("cpu", torch.long).reshape(-1)
    if labels.numel() and (labels.min() < 0 or labels.max() >= len(lut) or (lut[labels] < 0).any()):
        raise ValueError(f"labels {sorted(set(labels.tolist()))} not all in label_to_cat_id")
    xywh = xyxy_to_xywh(boxes)
    # round(x * 10^d) / 10^d: the division is correctly rounded, so each value is the double
    # nearest to its short decimal form (prints as e.g. 250.82, like the GT JSON).
    xywh = torch.round(xywh * 10**_BOX_DECIMALS) / 10**_BOX_DECIMALS
    scores = torch.round(scores * 10**_SCORE_DECIMALS) / 10**_SCORE_DECIMALS
    cat_ids = lut[labels].to(torch.float64)
    return torch.cat([xywh, scores[:, None], cat_ids[:, None]], dim=1).tolist()


def evaluate_coco(
    coco_gt: COCO,
    detections_or_results: Sequence[Mapping[str, Any]],
    *,
    label_to_cat_id: Mapping[int, int] | None = None,
    class_names: Sequence[str] | None = None,
    img_ids: Sequence[int] | None = None,
    iou_type: str = "bbox",
) -> dict[str, Any]:
    """Run pycocotools' COCOeval and return its numbers as a dict (its prints are swallowed).

    Args:
        coco_gt: ground truth (original category ids).
        detections_or_results: either per-image detection dicts (see
            :func:`detections_to_coco_results`; needs ``label_to_cat_id``) or ready COCO results
            entries (``image_id``, ``category_id``, ``bbox`` xywh, ``score``). May be empty.
        label_to_cat_id: contiguous label -> COCO category id; needed for detection dicts and
            for ``class_names``.
        class_names: K names, ``class_names[label - 1]``; default: the GT category names.
        img_ids: images to evaluate; default all GT images (images without detections count
            as misses, so pass the evaluated subset when evaluating on part of a set).
        iou_type: ``"bbox"`` or ``"segm"``.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
        "ARl"}`` as floats in [0, 1] or ``None`` where undefined (no GT in that area range),
        ``"per_class"`` (name -> AP@[.5:.95], area all, 100 dets; ``None`` for classes without
        GT), ``"pr_iou50"`` (see :func:`pr_curves`), ``"num_images"`` and
        ``"num_detections"``.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    results = _as_results(detections_or_results, label_to_cat_id)
    evaluator = _run_cocoeval(coco_gt, results, img_ids=img_ids, iou_type=iou_type)
    metrics: dict[str, Any] = {
        name: _defined(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=True)
    }
    names = _category_names(coco_gt, evaluator.params.catIds, class_names, label_to_cat_id)
    metrics["per_class"] = _per_class_ap(evaluator, names)
    metrics["pr_iou50"] = pr_curves(evaluator, names)
    metrics["num_images"] = len(evaluator.params.imgIds)
    metrics["num_detections"] = len(results)
    return metrics


def _as_results(
    items: Sequence[Mapping[str, Any]], label_to_cat_id: Mapping[int, int] | None
) -> list[dict]:
    """Detection dicts -> COCO results; results pass through (copied: pycocotools edits them)."""
    if items and "boxes" in items[0]:
        if label_to_cat_id is None:
            raise ValueError("per-image detections need label_to_cat_id to map labels")
        return detections_to_coco_results(items, label_to_cat_id=label_to_cat_id)
    return [dict(r) for r in items]


def _run_cocoeval(
    coco_gt: COCO, results: list[dict], *, img_ids: Sequence[int] | None, iou_type: str
) -> COCOeval:
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results name images absent from the ground truth: {sorted(unknown)[:5]}")
    if not results:
        warnings.warn("no detections to evaluate: every AP/AR is 0", stacklevel=3)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        if img_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in img_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _empty_results(coco_gt: COCO) -> COCO:
    """A results COCO with no annotations (``COCO.loadRes`` fails on an empty list)."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def _defined(value: float) -> float | None:
    """pycocotools' ``-1`` ("nothing to average") -> None; anything else -> float."""
    return None if value < 0 else float(value)


def _category_names(
    coco_gt: COCO,
    cat_ids: Sequence[int],
    class_names: Sequence[str] | None,
    label_to_cat_id: Mapping[int, int] | None,
) -> list[str]:
    """Display name per evaluated category id, in ``cat_ids`` order."""
    names = {cid: coco_gt.cats[cid].get("name", str(cid)) for cid in cat_ids}
    if class_names is not None:
        if label_to_cat_id is None:
            raise ValueError("class_names are indexed by label: pass label_to_cat_id too")
        for label, cid in label_to_cat_id.items():
            if cid in names and 1 <= label <= len(class_names):
                names[cid] = class_names[label - 1]
    return [names[cid] for cid in cat_ids]


def _per_class_ap(evaluator: COCOeval, names: Sequence[str]) -> dict[str, float | None]:
    """AP@[.5:.95] per category from ``eval["precision"]`` (Tensor[T, R, K, A, M])."""
    params = evaluator.params
    area = params.areaRngLbl.index("all")
    max_det = params.maxDets.index(100)
    precision = evaluator.eval["precision"][:, :, :, area, max_det]  # [T, R, K]
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(names):
        p = precision[:, :, k]
        p = p[p > -1]
        per_class[name] = float(np.mean(p)) if p.size else None
    return per_class


def pr_curves(evaluator: COCOeval, names: Sequence[str], *, iou: float = 0.5) -> dict[str, Any]:
    """Precision-recall points per class at one IoU threshold (area all, 100 detections).

    Args:
        evaluator: an accumulated COCOeval; ``eval["precision"]`` is Tensor[T, R, K, A, M].
        names: K display names in ``params.catIds`` order.
        iou: one of ``params.iouThrs``.

    Returns:
        ``{"iou": iou, "recall": [R recall thresholds], "precision": {name: [R values] or None}}``:
        COCOeval's interpolated precision at each recall threshold (0 beyond the highest recall
        reached); ``None`` for a class without GT (pycocotools' ``-1``).
    """
    params = evaluator.params
    t = int(np.argmin(np.abs(np.asarray(params.iouThrs) - iou)))
    if not np.isclose(params.iouThrs[t], iou):
        raise ValueError(f"IoU {iou} is not one of COCOeval's thresholds {list(params.iouThrs)}")
    area, max_det = params.areaRngLbl.index("all"), params.maxDets.index(100)
    precision = evaluator.eval["precision"][t, :, :, area, max_det]  # [R, K]
    return {
        "iou": float(params.iouThrs[t]),
        "recall": [float(r) for r in params.recThrs],
        "precision": {name: (None if (precision[:, k] < 0).all() else precision[:, k].tolist())
                      for k, name in enumerate(names)},
    }


def format_coco_table(metrics: Mapping[str, Any]) -> str:
    """The 12 standard stats laid out like pycocotools' ``summarize()``; ``None`` prints as n/a."""
    lines = []
    for name, (title, iou, area, max_dets) in zip(STAT_NAMES, _STAT_ROWS, strict=True):
        value = metrics.get(name)
        shown = "  n/a" if value is None else f"{value:0.3f}"
        lines.append(f" {title} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {shown}")
    return "\n".join(lines)


def format_per_class_table(metrics: Mapping[str, Any]) -> str:
    """Two columns, class name and AP, in the order of ``metrics["per_class"]``."""
    per_class: Mapping[str, float | None] = metrics.get("per_class", {})
    width = max([len("class"), *(len(name) for name in per_class)])
    lines = [f"{'class':<{width}}  AP", f"{'-' * width}  -----"]
    for name, ap in per_class.items():
        lines.append(f"{name:<{width}}  {'  n/a' if ap is None else f'{ap:0.3f}'}")
    return "\n".join(lines)


def save_results(path: str | os.PathLike, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write COCO results entries as a JSON list (atomically: temp file, then rename)."""
    return _write_json_atomic(path, list(results))


def save_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path:
    """Write a metrics dict as indented JSON (atomically); undefined stats are ``null``."""
    return _write_json_atomic(path, dict(metrics), indent=2)


def _write_json_atomic(path: str | os.PathLike, payload: Any, *, indent: int | None = None) -> Path:
    path = Path(path)
    with atomic_writer(path, text=True) as f:
        json.dump(payload, f, indent=indent, allow_nan=False)
    return path
