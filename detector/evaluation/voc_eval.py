"""The Pascal VOC detection metric, computed as the VOC devkit (and py-faster-rcnn's
``voc_eval.py``) computes it, from a COCO ground truth and COCO-format results.

Per class: the detections of all evaluated images are sorted by descending score (a stable sort:
equal scores keep their input order; the devkit's unstable ``argsort`` leaves that unspecified).
Walking down that list, a detection is a true positive when its IoU with the best-overlapping
ground-truth box of its image (the first of equals, in annotation order) is > 0.5 (strictly) and
that box is not yet taken; otherwise a false positive. A *difficult* ground truth (VOC XML
``<difficult>``; ``iscrowd=1`` or ``difficult=1`` in a COCO JSON) is never counted among the
positives, and a detection whose best overlap (> 0.5) is a difficult box is neither TP nor FP.
AP is the 11-point interpolated average (VOC2007, ``"voc07"``: recall thresholds
``np.arange(0.0, 1.1, 0.1)``, the very doubles of py-faster-rcnn's and detectron2's ports, whose
third is 0.30000000000000004, not reached by a recall of 3/10) or the area under the monotone
precision envelope at every recall change (VOC2010+, ``"voc"``). mAP is the mean over the classes
with at least one positive; a class without any has AP ``None`` (shown as ``-``) and is left out.

IoU is taken on continuous boxes: ``inter / (area_a + area_b - inter)`` with
``w = x2 - x1``. The devkit instead takes inclusive integer pixel boxes and adds 1 to every
width and height. The project reads a VOC box ``(xmin, ymin, xmax, ymax)`` as the continuous
box ``(xmin - 1, ymin - 1, xmax, ymax)`` (``detector.data.voc.voc_to_xyxy``), so for integer
coordinates a continuous width ``xmax - (xmin - 1)`` equals the devkit's ``xmax - xmin + 1``, and
an intersection width ``min(xmax) - max(xmin - 1)`` equals the devkit's
``min(xmax) - max(xmin) + 1`` (clipped at 0 in both). Intersection and union are then the same
integers, held exactly in float64, so their ratio is the same double and every ``> 0.5``
decision is the devkit's, for detections that follow the same convention (a devkit detection
file's 1-based ``(x1 + 1, y1 + 1, x2, y2)`` as py-faster-rcnn writes it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from detector.errors import UserError
from detector.untrusted import finite_number, read_json, shown

__all__ = ["VOC_METRICS", "ResultsFileError", "evaluate_voc", "format_voc_table",
           "read_results_file", "voc_ap"]

#: metric name -> the key prefix of its entries in a metrics dict.
VOC_METRICS: dict[str, str] = {"voc07": "VOC07", "voc": "VOC"}
IOU_THRESHOLD = 0.5
MAX_RESULTS_BYTES = 1 << 30  # a results file (COCO val2017 at 100 detections/image: ~50 MB)


class ResultsFileError(UserError, ValueError):
    """A COCO results file that cannot be scored: not a list of results entries, or naming an
    image or category the ground truth does not have. The message names the file and entry."""


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool) -> float:
    """The devkit's ``voc_ap``: AP from cumulative recall and precision (float64[D] each, in
    detection order). 11-point: mean over t in 0, 0.1, ..., 1 of the highest precision at
    recall >= t (0 where none); else the area under the precision envelope."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            reached = recall >= t
            ap += (float(np.max(precision[reached])) if reached.any() else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the monotone (non-increasing) envelope
    change = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def _iou(box: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """float64[G]: IoU of one xyxy box (float64[4]) with each of ``gt`` (float64[G, 4]); 0
    where the union is empty (two zero-area boxes)."""
    iw = np.maximum(np.minimum(gt[:, 2], box[2]) - np.maximum(gt[:, 0], box[0]), 0.0)
    ih = np.maximum(np.minimum(gt[:, 3], box[3]) - np.maximum(gt[:, 1], box[1]), 0.0)
    inter = iw * ih
    union = ((box[2] - box[0]) * (box[3] - box[1])
             + (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) - inter)
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _xyxy(xywh: Sequence[Sequence[float]]) -> np.ndarray:
    boxes = np.asarray(xywh, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def _ground_truth(coco_gt: COCO, img_ids: Sequence[int]) -> dict[int, tuple[dict, int]]:
    """{category id: ({image id: (boxes float64[G, 4] xyxy, difficult bool[G])}, number of
    positives)} over ``img_ids``, boxes in annotation order (one pass over the annotations)."""
    grouped: dict[int, dict[int, list]] = {}
    for img_id in img_ids:
        for ann in coco_gt.imgToAnns.get(img_id, []):
            grouped.setdefault(ann["category_id"], {}).setdefault(img_id, []).append(ann)
    per_cat = {}
    for cat_id, images in grouped.items():
        per_image, positives = {}, 0
        for img_id, anns in images.items():
            difficult = np.array([bool(a.get("iscrowd", 0) or a.get("difficult", 0))
                                  for a in anns])
            per_image[img_id] = (_xyxy([a["bbox"] for a in anns]), difficult)
            positives += int((~difficult).sum())
        per_cat[cat_id] = (per_image, positives)
    return per_cat


def _match(dets: list[Mapping[str, Any]], gt: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp), float64[D] each, of one category's detections in descending score order (the
    devkit's greedy walk; a detection on a difficult box has tp = fp = 0)."""
    scores = np.array([d["score"] for d in dets], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    boxes = _xyxy([dets[i]["bbox"] for i in order])
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    taken = {img_id: np.zeros(len(difficult), bool) for img_id, (_, difficult) in gt.items()}
    for rank, index in enumerate(order):
        img_id = dets[index]["image_id"]
        if img_id not in gt:
            fp[rank] = 1.0
            continue
        gt_boxes, difficult = gt[img_id]
        ious = _iou(boxes[rank], gt_boxes)
        best = int(np.argmax(ious))
        if ious[best] <= IOU_THRESHOLD:
            fp[rank] = 1.0
        elif not difficult[best]:
            tp[rank], fp[rank] = (0.0, 1.0) if taken[img_id][best] else (1.0, 0.0)
            taken[img_id][best] = True
    return tp, fp


def _class_ap(dets: list[Mapping[str, Any]], gt: dict, positives: int, *,
              use_07_metric: bool) -> float | None:
    if positives == 0:
        return None
    tp, fp = _match(dets, gt)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, use_07_metric=use_07_metric)


def evaluate_voc(
    coco_gt: COCO,
    results: Sequence[Mapping[str, Any]],
    *,
    metric: str = "voc07",
    img_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Pascal VOC AP per class and mAP (see the module docstring for the rules).

    Args:
        coco_gt: the ground truth (original category ids; ``iscrowd``/``difficult`` = difficult).
        results: COCO results entries ``{"image_id", "category_id", "bbox": [x, y, w, h],
            "score"}`` (e.g. ``detections_to_coco_results`` or :func:`read_results_file`).
        metric: ``"voc07"`` (11-point) or ``"voc"`` (all-point).
        img_ids: the evaluated images (default: all of ``coco_gt``); results on other images are
            left out, and the GT of these images counts even where nothing was detected.

    Returns:
        With ``P`` = ``"VOC07"`` or ``"VOC"``: ``{P: mAP or None, P + "_per_class": {name: AP or
        None}, P + "_positives": {name: number of non-difficult GT boxes}}``, classes in
        category-id order.
    """
    if metric not in VOC_METRICS:
        raise ValueError(f"metric must be one of {sorted(VOC_METRICS)}, got {metric!r}")
    prefix = VOC_METRICS[metric]
    img_ids = sorted(coco_gt.getImgIds()) if img_ids is None else [int(i) for i in img_ids]
    kept = set(img_ids)
    by_cat: dict[int, list] = {}
    for r in results:
        if r["image_id"] in kept:
            by_cat.setdefault(r["category_id"], []).append(r)
    ground_truth = _ground_truth(coco_gt, img_ids)
    per_class, positives = {}, {}
    for cat_id in sorted(coco_gt.getCatIds()):
        name = str(coco_gt.cats[cat_id].get("name", cat_id))
        gt, positives[name] = ground_truth.get(cat_id, ({}, 0))
        per_class[name] = _class_ap(by_cat.get(cat_id, []), gt, positives[name],
                                    use_07_metric=metric == "voc07")
    defined = [ap for ap in per_class.values() if ap is not None]
    return {prefix: float(np.mean(defined)) if defined else None,
            f"{prefix}_per_class": per_class, f"{prefix}_positives": positives}


def format_voc_table(metrics: Mapping[str, Any], metric: str) -> str:
    """``<P> mAP <value>`` and a per-class table (class, AP, positives); undefined: ``-``."""
    prefix = VOC_METRICS[metric]
    per_class = metrics[f"{prefix}_per_class"]
    positives = metrics[f"{prefix}_positives"]
    value = metrics[prefix]
    width = max([len("class"), *(len(name) for name in per_class)])
    lines = [f"{prefix} mAP {'-' if value is None else f'{value:.4f}'}",
             f"{'class':<{width}}  AP      positives", f"{'-' * width}  ------  ---------"]
    for name, ap in per_class.items():
        shown_ap = "-" if ap is None else f"{ap:.4f}"
        lines.append(f"{name:<{width}}  {shown_ap:<6}  {positives[name]:>9d}")
    return "\n".join(lines)


def read_results_file(path: str | Path, coco_gt: COCO) -> list[dict]:
    """A COCO results file (a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}``), checked against ``coco_gt``, read bounded (``detector.untrusted.read_json``).

    Returns:
        the entries as plain dicts (int ids, float bbox and score; other keys dropped).

    Raises:
        ResultsFileError: missing, unreadable, not JSON, not such a list, or an entry with a
            missing or non-finite value, a negative width or height, or an image or category
            id the ground truth does not have (one sentence naming the file and the entry).
    """
    path = Path(path)
    try:
        data = read_json(path, limit=MAX_RESULTS_BYTES)
    except UserError as error:
        raise ResultsFileError(str(error)) from None
    if data is None:
        raise ResultsFileError(f"results file {shown(path)} does not exist")
    if not isinstance(data, list):
        raise ResultsFileError(f"results file {shown(path)} must hold a JSON list of COCO results "
                               f"entries, not a {type(data).__name__}")
    images, cats = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    return [_result_entry(entry, f"results file {shown(path)}: entry {i}", images, cats)
            for i, entry in enumerate(data)]


def _result_entry(entry: Any, where: str, images: set, cats: set) -> dict:
    if not isinstance(entry, dict):
        raise ResultsFileError(f"{where} is a {type(entry).__name__}, not an object")
    for key, known, what in (("image_id", images, "an image"), ("category_id", cats, "a category")):
        value = entry.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ResultsFileError(f"{where}: {key} must be an integer, got {shown(value, limit=40)}")
        if value not in known:
            raise ResultsFileError(f"{where}: {key} {value} is not {what} of the ground truth")
    bbox, score = entry.get("bbox"), finite_number(entry.get("score"))
    box = [finite_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
    if box is None or None in box or box[2] < 0 or box[3] < 0:
        raise ResultsFileError(f"{where}: bbox must be [x, y, w, h] of finite numbers with w, h "
                               f">= 0, got {shown(bbox, limit=60)}")
    if score is None:
        raise ResultsFileError(f"{where}: score must be a finite number, got "
                               f"{shown(entry.get('score'), limit=40)}")
    return {"image_id": entry["image_id"], "category_id": entry["category_id"], "bbox": box,
            "score": score}
