"""Measurements of a dataset before training (``tools/inspect_data.py``): boxes per class and
the imbalance, images without boxes, tiny and duplicate boxes, the loaders' own data problems, and
how well the anchors cover the ground truth (each box's best anchor IoU on the real grid).

Shorthand: N ground-truth boxes (at model-input scale: after the resize of the training
transforms), M images, K classes. Boxes are xyxy pixels; labels are 1..K.

Everything takes plain tensors and values (no Hydra): ``inspect_dataset`` measures a built
dataset, the functions below it measure tensors. ``data_report`` turns the result into text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from detector.data.anchor_choice import fit_grid
from detector.data.box_stats import BoxTable, model_input_boxes
from detector.data.report import DatasetError
from detector.errors import OptionError
from detector.inspection.rpn_positives import RPNPositives, rpn_positives
from detector.ops.anchor_fit import anchor_coverage, anchor_shapes, best_anchor_iou, shape_iou
from detector.ops.boxes import batched_box_iou, box_area

__all__ = ["AUTO", "BUCKETS", "COVERAGE_TARGET", "COVERAGE_THRESHOLDS", "DEFAULT_RATIOS",
           "DEFAULT_SIZES", "DUPLICATE_IOU", "TINY_SIDE", "AnchorSet", "Coverage", "DataInspection", "Uncovered", "class_counts",
           "coverage_rows", "duplicate_mask", "fitted_alternative", "images_without_boxes",
           "imbalance_ratio", "inspect_dataset", "measure_coverage", "resolve_anchors",
           "size_buckets", "tiny_box_mask", "uncovered_boxes"]

TINY_SIDE = 8.0  # a box with either side under this many model-input pixels is "tiny"
DUPLICATE_IOU = 0.95  # same image, same class, IoU above this: a duplicate of the earlier box
COVERAGE_THRESHOLDS = (0.5, 0.7)  # the RPN's positive IoU thresholds (matched / best anchor)
# COCO's size buckets by area (model-input pixels): small < 32^2 <= medium < 96^2 <= large
BUCKETS = ("small", "medium", "large")
BUCKET_AREAS = (32.0**2, 96.0**2)
COVERAGE_TARGET = 0.95  # under this coverage at IoU 0.5, the fitted anchors are measured too


@dataclass(frozen=True)
class AnchorSet:
    """The RPN's anchors: ``sizes`` (sqrt of the area, px) x ``ratios`` (height / width) at every
    ``stride`` px from ``offset`` (cell fraction); ``source`` says where they come from."""

    sizes: tuple[float, ...]
    ratios: tuple[float, ...]
    stride: int
    offset: float
    source: str = "config"


@dataclass
class Coverage:
    """Anchor coverage of the N boxes: each box's best anchor IoU (Tensor[N]), the fraction at or
    over each threshold overall, and rows ``(group, boxes, {threshold: fraction})`` per class and
    per size bucket (a group without boxes has fraction None)."""

    anchors: AnchorSet
    best_iou: Tensor
    overall: dict[float, float | None]
    per_class: list[tuple[str, int, dict[float, float | None]]]
    per_bucket: list[tuple[str, int, dict[float, float | None]]]


@dataclass(frozen=True)
class Uncovered:
    """The boxes whose best anchor stays under IoU 0.5: how many, their size (sqrt of the area,
    model-input px: median, 10th and 90th percentile), their median aspect ratio (h/w), and
    the share of them that an anchor SHAPE fits (IoU >= 0.5 were an anchor centred on the box):
    those are missed by position, between the grid's anchor centres, not by shape."""

    count: int
    size_median: float
    size_p10: float
    size_p90: float
    ratio_median: float
    shape_fits: float


def uncovered_boxes(boxes: Tensor, best_iou: Tensor, anchors: AnchorSet,
                    threshold: float = 0.5) -> Uncovered | None:
    """boxes (Tensor[N, 4], xyxy) and their best anchor IoU on the grid (Tensor[N]) -> the
    ``Uncovered`` summary of those under ``threshold``; None when every box reaches it."""
    low = best_iou < threshold
    if not bool(low.any()):
        return None
    wh = (boxes[low, 2:] - boxes[low, :2]).double().clamp(min=1e-6)
    size = wh.prod(dim=1).sqrt()
    q = torch.quantile(size, torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64))
    ratio = (wh[:, 1] / wh[:, 0]).median()
    centred = shape_iou(wh, anchor_shapes(anchors.sizes, anchors.ratios)).amax(dim=1)
    return Uncovered(count=int(low.sum()), size_median=float(q[0]), size_p10=float(q[1]),
                     size_p90=float(q[2]), ratio_median=float(ratio),
                     shape_fits=float((centred >= threshold).double().mean()))


@dataclass
class DataInspection:
    """The measurements of one split (see ``inspect_dataset``)."""

    name: str
    split: str
    class_names: list[str]
    num_images: int
    image_size_range: tuple[int, int]  # smallest and largest side of the model-input images
    counts: list[int]  # boxes per class, K
    imbalance: float | None  # largest / smallest class count; inf: a class without boxes
    empty_images: int  # images without boxes (kept ones + those the loader filtered out)
    tiny: int
    duplicates: int
    problems: dict[str, int]  # the loader's DataReport counters
    problems_text: str  # its summary()
    coverage: Coverage
    fitted: Coverage | None = None  # the anchors fit_anchors would give, and their coverage
    uncovered: Uncovered | None = None  # the boxes no anchor reaches at IoU 0.5
    rpn: RPNPositives | None = None  # positive anchors per image under the RPN's matcher

    @property
    def num_boxes(self) -> int:
        return int(sum(self.counts))


# --- measurements on tensors ------------------------------------------------------------------
def class_counts(labels: Tensor, num_classes: int) -> Tensor:
    """labels (LongTensor[N]): 1..K -> LongTensor[K]: boxes per class."""
    return torch.bincount(labels.long() - 1, minlength=num_classes)[:num_classes]


def imbalance_ratio(counts: Tensor) -> float | None:
    """counts (Tensor[K]) -> largest / smallest count; inf when a class has no box; None when no
    class has any (nothing to compare)."""
    if counts.numel() == 0 or int(counts.max()) == 0:
        return None
    smallest = int(counts.min())
    return math.inf if smallest == 0 else int(counts.max()) / smallest


def tiny_box_mask(boxes: Tensor, min_side: float = TINY_SIDE) -> Tensor:
    """boxes (Tensor[N, 4]) -> BoolTensor[N]: width or height under ``min_side``."""
    sides = boxes[:, 2:] - boxes[:, :2]
    return (sides < min_side).any(dim=1)


def size_buckets(boxes: Tensor) -> Tensor:
    """boxes (Tensor[N, 4]) -> LongTensor[N]: 0 small, 1 medium, 2 large (``BUCKET_AREAS``)."""
    return torch.bucketize(box_area(boxes), torch.tensor(BUCKET_AREAS, dtype=boxes.dtype),
                           right=True)


def images_without_boxes(image_index: Tensor, num_images: int) -> int:
    """image_index (LongTensor[N]): the image of each box, 0..M-1 -> images holding no box."""
    return num_images - int(torch.unique(image_index).numel())


def duplicate_mask(boxes: Tensor, labels: Tensor, image_index: Tensor, *,
                   iou_threshold: float = DUPLICATE_IOU) -> Tensor:
    """Boxes that repeat an earlier box of the same image and class (IoU > ``iou_threshold``).

    The boxes are grouped by (image, label) with one sort; every pair inside a group is compared
    at once (sum of the squared group sizes, not N^2).

    Args:
        boxes (Tensor[N, 4]): xyxy.
        labels (LongTensor[N]): 1..K.
        image_index (LongTensor[N]): the image of each box.

    Returns:
        BoolTensor[N]: True for a box whose group holds an earlier box (in index order) that it
        overlaps by more than ``iou_threshold``; the first of each duplicate set stays False.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool)
    key = image_index.long() * (int(labels.max()) + 1) + labels.long()
    order = torch.sort(key, stable=True).indices  # index order kept inside a group
    _, group, sizes = torch.unique_consecutive(key[order], return_inverse=True, return_counts=True)
    starts = torch.cumsum(sizes, 0) - sizes
    per_box = sizes[group]  # (N,) size of each sorted box's group
    rows = torch.repeat_interleave(torch.arange(n), per_box)  # sorted position, once per partner
    first_slot = torch.repeat_interleave(torch.cumsum(per_box, 0) - per_box, per_box)
    cols = starts[group][rows] + (torch.arange(rows.numel()) - first_slot)
    earlier = cols < rows
    rows, cols = rows[earlier], cols[earlier]
    sorted_boxes = boxes[order].float()
    iou = batched_box_iou(sorted_boxes[rows, None], sorted_boxes[cols, None])[:, 0, 0]
    dup_sorted = torch.zeros(n, dtype=torch.bool)
    dup_sorted[rows[iou > iou_threshold]] = True
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order] = dup_sorted
    return mask


def _coverage(iou: Tensor, thresholds: Sequence[float]) -> dict[float, float | None]:
    """``anchor_coverage`` of one group; None for every threshold when the group has no box."""
    return (anchor_coverage(iou, thresholds) if iou.numel()
            else {float(t): None for t in thresholds})


def coverage_rows(best_iou: Tensor, labels: Tensor, boxes: Tensor, class_names: Sequence[str],
                  thresholds: Sequence[float] = COVERAGE_THRESHOLDS
                  ) -> tuple[dict, list, list]:
    """Coverage overall, per class and per size bucket.

    Args:
        best_iou (Tensor[N]): each box's best anchor IoU.
        labels (LongTensor[N]): 1..K.
        boxes (Tensor[N, 4]): xyxy, model-input pixels (for the size buckets).
        class_names: K names.

    Returns:
        (overall ``{t: fraction}``, per-class rows, per-bucket rows): a row is ``(name, boxes,
        {t: fraction of its boxes with best IoU >= t})``; None where a group has no box.
    """
    buckets = size_buckets(boxes)
    overall = _coverage(best_iou, thresholds)
    per_class = [(name, int((labels == k).sum()), _coverage(best_iou[labels == k], thresholds))
                 for k, name in enumerate(class_names, start=1)]  # K classes, not N boxes
    per_bucket = [(name, int((buckets == b).sum()), _coverage(best_iou[buckets == b], thresholds))
                  for b, name in enumerate(BUCKETS)]
    return overall, per_class, per_bucket


def measure_coverage(table: BoxTable, anchors: AnchorSet, class_names: Sequence[str]) -> Coverage:
    """Each box's best anchor IoU on the real grid (``best_anchor_iou``) and the coverage rows."""
    iou, _ = best_anchor_iou(table.boxes, table.box_image_sizes,
                             sizes=anchors.sizes, ratios=anchors.ratios, stride=anchors.stride,
                             offset=anchors.offset)
    overall, per_class, per_bucket = coverage_rows(iou, table.labels, table.boxes, class_names)
    return Coverage(anchors=anchors, best_iou=iou, overall=overall, per_class=per_class,
                    per_bucket=per_bucket)


AUTO = "auto"
DEFAULT_SIZES, DEFAULT_RATIOS = (128.0, 256.0, 512.0), (0.5, 1.0, 2.0)  # AnchorGenerator's


def resolve_anchors(table: BoxTable, *, sizes, ratios, stride: int, offset: float, seed: int,
                    baseline_sizes=DEFAULT_SIZES, baseline_ratios=DEFAULT_RATIOS) -> AnchorSet:
    """The anchors of the config: ``sizes`` and ``ratios`` as given, or fitted to the boxes
    where one is ``"auto"`` (the other held fixed), by the fit training's ``auto`` runs
    (``anchor_choice.fit_grid``: as many values as the baseline grid has, started from it)."""
    auto_sizes, auto_ratios = sizes == AUTO, ratios == AUTO
    if not (auto_sizes or auto_ratios):
        return AnchorSet(sizes=tuple(map(float, sizes)), ratios=tuple(map(float, ratios)),
                         stride=int(stride), offset=float(offset))
    fitted_sizes, fitted_ratios = _fit(
        table, sizes=None if auto_sizes else sizes, ratios=None if auto_ratios else ratios,
        baseline_sizes=baseline_sizes if auto_sizes else sizes,
        baseline_ratios=baseline_ratios if auto_ratios else ratios,
        stride=stride, offset=offset, seed=seed)
    return AnchorSet(sizes=fitted_sizes, ratios=fitted_ratios, stride=int(stride),
                     offset=float(offset), source="auto: fitted to these boxes")


def _fit(table: BoxTable, *, sizes, ratios, baseline_sizes, baseline_ratios, stride, offset,
         seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    try:
        fitted = fit_grid(table, sizes=sizes, ratios=ratios, baseline_sizes=baseline_sizes,
                          baseline_ratios=baseline_ratios, stride=stride, offset=offset,
                          seed=seed)
    except OptionError as error:  # fewer boxes than anchor shapes
        raise DatasetError(f"cannot fit anchors to this split: {error}") from None
    return tuple(fitted[0]), tuple(fitted[1])


def fitted_alternative(table: BoxTable, anchors: AnchorSet, class_names: Sequence[str], *,
                       seed: int) -> Coverage | None:
    """The coverage of anchors fitted to the boxes (grid of the same S x R as ``anchors``), or
    None when there are fewer boxes than anchor shapes."""
    k = len(anchors.sizes) * len(anchors.ratios)
    if table.boxes.shape[0] < k:
        return None
    sizes, ratios = _fit(table, sizes=None, ratios=None, baseline_sizes=anchors.sizes,
                         baseline_ratios=anchors.ratios, stride=anchors.stride,
                         offset=anchors.offset, seed=seed)
    fitted = AnchorSet(sizes=sizes, ratios=ratios, stride=anchors.stride, offset=anchors.offset,
                       source="fitted to these boxes")
    return measure_coverage(table, fitted, class_names)


def inspect_dataset(dataset, *, name: str, split: str, min_size: int, max_size: int, sizes,
                    ratios, stride: int, offset: float, seed: int = 0,
                    baseline_sizes=DEFAULT_SIZES, baseline_ratios=DEFAULT_RATIOS,
                    coverage_target: float = COVERAGE_TARGET, rpn_fg_iou: float = 0.7,
                    rpn_bg_iou: float = 0.3) -> tuple[DataInspection, BoxTable]:
    """Measure a built dataset (``DetectionDataset``: records in original pixels, a
    ``DataReport``) at model-input scale (resize to ``min_size``/``max_size``), with the anchors
    ``sizes`` x ``ratios`` (or ``"auto"``) at ``stride``/``offset``; when the coverage at 0.5
    is under ``coverage_target`` the fitted anchors' coverage comes too (``fitted``); ``rpn``
    counts the anchors the RPN's matcher (``rpn_fg_iou``/``rpn_bg_iou``) makes positive."""
    table = model_input_boxes(dataset, min_size=min_size, max_size=max_size)
    names = [str(n) for n in dataset.class_names]
    counts = class_counts(table.labels, len(names))
    anchors = resolve_anchors(table, sizes=sizes, ratios=ratios, stride=stride, offset=offset,
                              seed=seed, baseline_sizes=baseline_sizes,
                              baseline_ratios=baseline_ratios)
    coverage = measure_coverage(table, anchors, names)
    low = coverage.overall.get(0.5)
    fitted = (fitted_alternative(table, anchors, names, seed=seed)
              if anchors.source == "config" and low is not None and low < coverage_target
              else None)
    report = getattr(dataset, "report", None)
    problems = report.as_dict() if report is not None else {}
    sides = table.image_sizes
    inspection = DataInspection(
        name=name, split=split, class_names=names, num_images=int(sides.shape[0]),
        image_size_range=(int(sides.min()), int(sides.max())) if sides.numel() else (0, 0),
        counts=counts.tolist(), imbalance=imbalance_ratio(counts),
        empty_images=images_without_boxes(table.image_index, int(sides.shape[0]))
        + problems.get("empty_image_filtered", 0),
        tiny=int(tiny_box_mask(table.boxes).sum()),
        duplicates=int(duplicate_mask(table.boxes, table.labels, table.image_index).sum()),
        problems=problems, problems_text=report.summary() if report is not None else "",
        coverage=coverage, fitted=fitted,
        uncovered=uncovered_boxes(table.boxes, coverage.best_iou, anchors),
        rpn=rpn_positives(table, sizes=anchors.sizes, ratios=anchors.ratios, stride=anchors.stride,
                          offset=anchors.offset, fg_iou=rpn_fg_iou, bg_iou=rpn_bg_iou,
                          seed=seed))
    return inspection, table
