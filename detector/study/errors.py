"""Where the AP goes: every false positive and missed object sorted into the error types of TIDE
(Bolya et al., ECCV 2020), and the AP50 gained by fixing each type with an oracle, measured by
pycocotools' COCOeval on the corrected detections.

Shorthand: N detections, G ground-truth boxes (over all images); ``t_f`` the foreground IoU
(0.5), ``t_b`` the background IoU (0.1).

First detections are matched as COCOeval matches them at ``t_f``: per image and class, in
descending score, each takes the unmatched ground truth of its class with the highest IoU
(>= ``t_f``); those are true positives, and one that overlaps a crowd box (>= ``t_f``) is
ignored. Every other detection is one error, tested in this order on its IoU with the image's
ground truth:

- ``bkg``:  IoU < ``t_b`` with every ground truth box (it fired on background);
- ``cls``:  IoU >= ``t_f`` with a box of another class (right place, wrong class);
- ``dupe``: IoU >= ``t_f`` with a box of its class that a higher-scoring detection took;
- ``loc``:  ``t_b`` <= IoU < ``t_f`` with a box of its class (right class, poor box);
- ``both``: ``t_b`` <= IoU < ``t_f`` with a box of another class only.

A ``miss`` is a ground truth box no detection found that is not the box of a ``cls`` or ``loc``
error (fixing those finds it). The oracle of each type, applied alone: a ``cls`` error takes the
class of its box and a ``loc`` error its box's coordinates (the highest-scoring one per box, when
no true positive has it; the others are removed, as duplicates would be); ``both``, ``dupe`` and
``bkg`` errors are removed; missed boxes leave the ground truth. dAP = AP50 after - AP50 before.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from detector.evaluation.coco_eval import evaluate_coco
from detector.ops.boxes import box_iou, xywh_to_xyxy, xyxy_to_xywh

__all__ = ["ERROR_TYPES", "FP_TYPES", "Boxes", "ErrorAnalysis", "classify_errors", "coco_from_dict",
           "error_dap", "ground_truth", "detections"]

TP, CLS, LOC, BOTH, DUPE, BKG, IGNORED = range(7)
FP_TYPES = ("cls", "loc", "both", "dupe", "bkg")  # in the order of the codes 1..5
ERROR_TYPES = (*FP_TYPES, "miss")


@dataclass
class Boxes:
    """Boxes of many images, one row each (ground truth or detections).

    Attributes:
        image_ids (ndarray[N] int64), boxes (ndarray[N, 4] float64: xyxy pixels),
        labels (ndarray[N] int64: category ids), scores (ndarray[N] float64; 1 for ground
        truth), crowd (ndarray[N] bool; False for detections).
    """

    image_ids: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    crowd: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, keep: np.ndarray) -> Boxes:
        return Boxes(self.image_ids[keep], self.boxes[keep], self.labels[keep],
                     self.scores[keep], self.crowd[keep])


def _boxes(rows: Sequence[Mapping[str, Any]], *, score_key: str | None) -> Boxes:
    xywh = np.asarray([r["bbox"] for r in rows], dtype=np.float64).reshape(-1, 4)
    return Boxes(
        image_ids=np.asarray([r["image_id"] for r in rows], dtype=np.int64),
        boxes=xywh_to_xyxy(torch.from_numpy(xywh)).numpy(),
        labels=np.asarray([r["category_id"] for r in rows], dtype=np.int64),
        scores=np.asarray([r[score_key] if score_key else 1.0 for r in rows], dtype=np.float64),
        crowd=np.asarray([bool(r.get("iscrowd", 0)) for r in rows], dtype=bool))


def ground_truth(coco_dict: Mapping[str, Any]) -> Boxes:
    """The annotations of a COCO instances dict (xywh -> xyxy)."""
    return _boxes(coco_dict["annotations"], score_key=None)


def detections(results: Sequence[Mapping[str, Any]]) -> Boxes:
    """COCO results (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) as Boxes."""
    return _boxes(results, score_key="score")


@dataclass
class ErrorAnalysis:
    """The verdict on every detection and ground truth box.

    Attributes:
        kind (ndarray[N] int64): TP, CLS, LOC, BOTH, DUPE, BKG or IGNORED (0..6).
        target (ndarray[N] int64): the ground truth row a TP, ``cls`` or ``loc`` detection is
            about (the box whose IoU decided it); -1 for the others.
        matched (ndarray[G] bool): found by a true positive.
        missed (ndarray[G] bool): a miss (see the module docstring); crowd boxes never are.
    """

    kind: np.ndarray
    target: np.ndarray
    matched: np.ndarray
    missed: np.ndarray

    def counts(self) -> dict[str, int]:
        """Number of errors of each type (``ERROR_TYPES``) and of true positives (``tp``)."""
        found = {name: int((self.kind == code).sum()) for code, name in enumerate(FP_TYPES, 1)}
        return {**found, "miss": int(self.missed.sum()), "tp": int((self.kind == TP).sum())}


def _rows_by_image(image_ids: np.ndarray) -> dict[int, np.ndarray]:
    if len(image_ids) == 0:
        return {}
    order = np.argsort(image_ids, kind="stable")
    ids, starts = np.unique(image_ids[order], return_index=True)
    return {int(i): rows for i, rows in zip(ids, np.split(order, starts[1:]), strict=True)}


def _classify_image(gt: Boxes, g_rows: np.ndarray, det: Boxes, d_rows: np.ndarray,
                    out: ErrorAnalysis, t_f: float, t_b: float) -> None:
    """One image: ``d_rows`` in descending score; writes ``out`` in place."""
    if len(g_rows):
        iou = box_iou(torch.from_numpy(det.boxes[d_rows]),
                      torch.from_numpy(gt.boxes[g_rows])).numpy()  # [n, g]
    else:
        iou = np.zeros((len(d_rows), 0))
    crowd = gt.crowd[g_rows]
    same = det.labels[d_rows][:, None] == gt.labels[g_rows][None, :]
    taken = np.zeros(len(g_rows), dtype=bool)
    for i in range(len(d_rows)):  # COCOeval's greedy matching, by score
        free = np.where(same[i] & ~crowd & ~taken & (iou[i] >= t_f), iou[i], -1.0)
        if free.max(initial=-1.0) >= t_f:
            j = int(free.argmax())
            taken[j] = True
            out.kind[d_rows[i]], out.target[d_rows[i]] = TP, g_rows[j]
        elif (same[i] & crowd & (iou[i] >= t_f)).any():
            out.kind[d_rows[i]] = IGNORED
    real = ~crowd
    for i in np.flatnonzero(out.kind[d_rows] == -1):
        row = d_rows[i]
        same_iou = np.where(same[i] & real, iou[i], -1.0)
        other_iou = np.where(~same[i] & real, iou[i], -1.0)
        if max(same_iou.max(initial=-1.0), other_iou.max(initial=-1.0)) < t_b:
            out.kind[row] = BKG
        elif other_iou.max() >= t_f:
            out.kind[row], out.target[row] = CLS, g_rows[int(other_iou.argmax())]
        elif same_iou.max(initial=-1.0) >= t_f:
            out.kind[row] = DUPE
        elif same_iou.max(initial=-1.0) >= t_b:
            out.kind[row], out.target[row] = LOC, g_rows[int(same_iou.argmax())]
        else:
            out.kind[row] = BOTH
    out.matched[g_rows[taken]] = True


def classify_errors(gt: Boxes, det: Boxes, *, t_f: float = 0.5, t_b: float = 0.1,
                    max_per_class: int = 100) -> ErrorAnalysis:
    """Sort ``det`` into true positives and the TIDE error types, and find the misses.

    Args:
        gt: ground truth (crowd boxes are matched as COCOeval ignores them).
        det: detections; beyond the ``max_per_class`` best of an image and class (COCOeval's
            maxDets) they are IGNORED.
    """
    out = ErrorAnalysis(kind=np.full(len(det), -1, dtype=np.int64),
                        target=np.full(len(det), -1, dtype=np.int64),
                        matched=np.zeros(len(gt), dtype=bool), missed=np.zeros(len(gt), dtype=bool))
    gt_rows = _rows_by_image(gt.image_ids)
    for image_id, rows in _rows_by_image(det.image_ids).items():
        rows = rows[np.argsort(-det.scores[rows], kind="stable")]
        rank = np.zeros(len(rows), dtype=np.int64)  # rank within its class
        for label in np.unique(det.labels[rows]):
            mine = det.labels[rows] == label
            rank[mine] = np.arange(mine.sum())
        out.kind[rows[rank >= max_per_class]] = IGNORED
        rows = rows[rank < max_per_class]
        _classify_image(gt, gt_rows.get(image_id, np.zeros(0, np.int64)), det, rows, out, t_f, t_b)
    found = out.target[np.isin(out.kind, (CLS, LOC))]
    out.missed = ~out.matched & ~gt.crowd
    out.missed[found] = False
    return out


# --- the oracle ------------------------------------------------------------------------------


def _fixed_detections(gt: Boxes, det: Boxes, analysis: ErrorAnalysis, kind: int) -> Boxes:
    """``det`` with the errors of ``kind`` corrected (see the module docstring)."""
    keep = analysis.kind != kind
    labels, boxes = det.labels.copy(), det.boxes.copy()
    if kind in (CLS, LOC):
        claimed = analysis.matched.copy()
        for row in np.flatnonzero(analysis.kind == kind)[np.argsort(
                -det.scores[analysis.kind == kind], kind="stable")]:
            target = analysis.target[row]
            if claimed[target]:
                continue  # its box is found already: a duplicate, removed
            claimed[target], keep[row] = True, True
            if kind == CLS:
                labels[row] = gt.labels[target]
            else:
                boxes[row] = gt.boxes[target]
    fixed = Boxes(det.image_ids, boxes, labels, det.scores, det.crowd)
    return fixed.subset(keep)


def _results(det: Boxes) -> list[dict]:
    xywh = xyxy_to_xywh(torch.from_numpy(det.boxes)).tolist()
    return [{"image_id": int(i), "category_id": int(c), "bbox": b, "score": float(s)}
            for i, c, b, s in zip(det.image_ids, det.labels, xywh, det.scores,
                                  strict=True)]


def coco_from_dict(coco_dict: Mapping[str, Any]) -> COCO:
    """A pycocotools COCO over an instances dict (its index prints swallowed)."""
    coco = COCO()
    coco.dataset = copy.deepcopy(dict(coco_dict))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ap50(coco: COCO, det: Boxes, img_ids: Sequence[int]) -> float:
    with warnings.catch_warnings():  # "no detections": AP 0, as it should be
        warnings.simplefilter("ignore", UserWarning)
        value = evaluate_coco(coco, _results(det), img_ids=img_ids)["AP50"]
    return 0.0 if value is None else value


def error_dap(coco_dict: Mapping[str, Any], det: Boxes, *,
              analysis: ErrorAnalysis | None = None) -> dict[str, float]:
    """``{"AP50": before, <type>: AP50 gained by fixing that type alone}`` for ``ERROR_TYPES``,
    each by a COCOeval run on the corrected detections (or, for ``miss``, ground truth).

    Args:
        coco_dict: the ground truth instances dict (every image of it is evaluated).
        det: the detections; ``analysis``: ``classify_errors`` of them (computed if None).
    """
    gt = ground_truth(coco_dict)
    analysis = analysis or classify_errors(gt, det)
    coco = coco_from_dict(coco_dict)
    img_ids = sorted(coco.getImgIds())
    before = _ap50(coco, det, img_ids)
    gains = {"AP50": before}
    for code, name in enumerate(FP_TYPES, 1):
        gains[name] = _ap50(coco, _fixed_detections(gt, det, analysis, code), img_ids) - before
    kept = [a for a, missed in zip(coco_dict["annotations"], analysis.missed, strict=True)
            if not missed]
    gains["miss"] = _ap50(coco_from_dict({**coco_dict, "annotations": kept}), det,
                          img_ids) - before
    return gains
