"""``anchor_sizes=auto`` / ``anchor_ratios=auto``: anchors fitted to a training set's boxes.

The boxes come from the dataset's records at model-input scale (``box_stats``); the fit and the
coverage are ``detector.ops.anchor_fit``'s. Coverage is the fraction of ground-truth boxes whose
best anchor on the real grid reaches an IoU (0.5, 0.7: the RPN's positive threshold is 0.7).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from detector.data.box_stats import BoxTable, model_input_boxes
from detector.errors import OptionError
from detector.ops.anchor_fit import anchor_coverage, best_anchor_iou, fit_anchors, grid_score

__all__ = ["AUTO", "AnchorChoice", "choose_anchors", "configured_coverage", "fit_grid",
           "format_coverage", "is_auto"]

AUTO = "auto"
THRESHOLDS = (0.5, 0.7)
MAX_SCORED = 20000  # the fit scores grids on a seeded sample of at most this many boxes


@dataclass(frozen=True)
class AnchorChoice:
    """The anchors to train with and what fitting changed.

    Attributes:
        sizes, ratios: the grid to use (numbers, fitted where the request said ``auto``).
        fitted (tuple[str, ...]): which of "sizes", "ratios" were fitted.
        baseline_sizes, baseline_ratios: the grid "before" is measured on (the request's numbers,
            the baseline's where it said ``auto``).
        before, after (dict[float, float]): coverage {IoU threshold: fraction of boxes}.
        num_boxes (int): training boxes measured. seconds (float): time the fit took.
    """

    sizes: list[float]
    ratios: list[float]
    fitted: tuple[str, ...]
    baseline_sizes: list[float]
    baseline_ratios: list[float]
    before: dict[float, float]
    after: dict[float, float]
    num_boxes: int
    seconds: float


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def configured_coverage(dataset, *, sizes: Sequence[float], ratios: Sequence[float],
                        min_size: int, max_size: int, stride: float, offset: float,
                        thresholds: Sequence[float] = THRESHOLDS) -> tuple[dict[float, float], int]:
    """Coverage of a given anchor grid on ``dataset``'s boxes: ({threshold: fraction}, boxes)."""
    table = model_input_boxes(dataset, min_size=min_size, max_size=max_size)
    iou, _ = best_anchor_iou(table.boxes, table.box_image_sizes, sizes=sizes, ratios=ratios,
                             stride=stride, offset=offset)
    return anchor_coverage(iou, thresholds), int(iou.numel())


def choose_anchors(
    dataset, *, sizes, ratios, baseline_sizes: Sequence[float], baseline_ratios: Sequence[float],
    min_size: int, max_size: int, stride: float, offset: float, seed: int,
) -> AnchorChoice:
    """Fit what is ``"auto"`` of (``sizes``, ``ratios``) to ``dataset``'s boxes, keep the rest.

    Args:
        dataset: has ``records`` (``ImageRecord``s, original pixels).
        sizes, ratios: a list of positive numbers or ``"auto"`` each.
        baseline_sizes, baseline_ratios: the grid an ``auto`` value replaces: its length is the
            number of values fitted and its coverage is the "before".
        min_size, max_size: the resize to model-input scale.
        stride, offset: the anchor grid (``AnchorGenerator``).
        seed (int): the fit's seed (the result is a function of the data and the arguments).

    Raises:
        OptionError("sizes" or "ratios"): the training set has fewer usable boxes than the grid
            has anchor shapes.
    """
    fit_sizes, fit_ratios = is_auto(sizes), is_auto(ratios)
    base_s = list(map(float, baseline_sizes if fit_sizes else sizes))
    base_r = list(map(float, baseline_ratios if fit_ratios else ratios))
    table = model_input_boxes(dataset, min_size=min_size, max_size=max_size)
    grid = dict(stride=stride, offset=offset)
    before, _ = best_anchor_iou(table.boxes, table.box_image_sizes, sizes=base_s, ratios=base_r,
                                **grid)
    start = time.perf_counter()
    new_s, new_r = base_s, base_r
    if fit_sizes or fit_ratios:
        new_s, new_r = fit_grid(table, sizes=None if fit_sizes else base_s,
                                ratios=None if fit_ratios else base_r, baseline_sizes=base_s,
                                baseline_ratios=base_r, seed=seed, **grid)
    seconds = time.perf_counter() - start
    after, _ = best_anchor_iou(table.boxes, table.box_image_sizes, sizes=new_s, ratios=new_r,
                               **grid)
    fitted = tuple(name for name, auto in (("sizes", fit_sizes), ("ratios", fit_ratios)) if auto)
    return AnchorChoice(sizes=list(new_s), ratios=list(new_r), fitted=fitted,
                        baseline_sizes=base_s, baseline_ratios=base_r,
                        before=anchor_coverage(before, THRESHOLDS),
                        after=anchor_coverage(after, THRESHOLDS),
                        num_boxes=int(before.numel()), seconds=seconds)


def fit_grid(table: BoxTable, *, sizes: Sequence[float] | None, ratios: Sequence[float] | None,
             baseline_sizes: Sequence[float], baseline_ratios: Sequence[float], stride: float,
             offset: float, seed: int) -> tuple[list[float], list[float]]:
    """The grid fitted to ``table``'s boxes: ``sizes``/``ratios`` given are kept, None ones are
    fitted (as many as the baseline has), scored on the real grid and never starting below the
    baseline. The one fit behind training's ``auto`` and the data inspection's suggestion.

    Raises:
        OptionError("sizes" or "ratios"): fewer usable boxes than the grid has anchor shapes.
    """
    try:
        new_s, new_r = fit_anchors(
            table.wh, num_sizes=len(baseline_sizes), num_ratios=len(baseline_ratios), seed=seed,
            sizes=sizes, ratios=ratios,
            score=_score(table, seed=seed, stride=stride, offset=offset),
            starts=[(list(baseline_sizes), list(baseline_ratios))])
    except ValueError as error:
        option = "sizes" if sizes is None else "ratios"
        raise OptionError(option, f"{option}=auto: {error} in the training set; give the "
                                  f"numbers instead") from None
    return list(new_s), list(new_r)


def _score(table, *, seed: int, stride: float, offset: float):
    """The fit's score on the real grid (``grid_score``), over a seeded sample of at most
    ``MAX_SCORED`` boxes."""
    boxes, sizes = table.boxes, table.box_image_sizes
    if len(boxes) > MAX_SCORED:
        keep = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(seed))
        boxes, sizes = boxes[keep[:MAX_SCORED]], sizes[keep[:MAX_SCORED]]
    return grid_score(boxes, sizes, stride=stride, offset=offset, thresholds=THRESHOLDS)


def format_coverage(coverage: dict[float, float]) -> str:
    """{0.5: 0.912, 0.7: 0.64} -> 'IoU >= 0.5: 91.2 %, IoU >= 0.7: 64.0 %'."""
    return ", ".join(f"IoU >= {t:g}: {100 * v:.1f} %" for t, v in coverage.items())
