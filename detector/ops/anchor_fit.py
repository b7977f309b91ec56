"""How well an anchor grid fits a set of boxes, and anchors fitted to them.

Shorthand: N boxes, M images or shapes, A anchor shapes per cell (S sizes x R ratios), k clusters.
Boxes are xyxy pixels at the model's input scale; a shape is a (w, h) pair; a ratio is h / w and a
size is sqrt(w * h), as in ``detector.ops.anchors.AnchorGenerator``. Everything here is batched
tensor math on float64 (the fits are small; float64 keeps ties and rounding out of the picture).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["anchor_coverage", "anchor_shapes", "best_anchor_iou", "fit_anchors", "grid_score",
           "grid_shape_iou", "shape_iou", "shape_score"]

_STEPS = (0.2, 0.1, 0.05, 0.02, 0.01)  # log-space steps of the grid refinement, coarse to fine
_TOLERANCE = 1e-3  # k-means stops when no centre moves by more than this (log space)
_MAX_FIT_POINTS = 20000  # the fit uses a seeded sample of at most this many shapes


def anchor_shapes(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """(Tensor[A, 2]) float64 (w, h) of each cell anchor, ratio-major then size: anchor
    ``a = r * S + s`` is ``AnchorGenerator.cell_anchors()[a]``."""
    s = torch.as_tensor(sizes, dtype=torch.float64)
    r = torch.as_tensor(ratios, dtype=torch.float64).sqrt()
    return torch.stack(((s[None, :] / r[:, None]).flatten(), (s[None, :] * r[:, None]).flatten()),
                       dim=1)


def shape_iou(wh_a: Tensor, wh_b: Tensor) -> Tensor:
    """IoU of boxes that share a centre.

    Args:
        wh_a (Tensor[N, 2]): (w, h), positive.
        wh_b (Tensor[M, 2]): (w, h), positive.

    Returns:
        Tensor[N, M]: IoU of every pair, in the promoted dtype of the inputs.
    """
    inter = (torch.minimum(wh_a[:, None, 0], wh_b[None, :, 0])
             * torch.minimum(wh_a[:, None, 1], wh_b[None, :, 1]))
    area_a = (wh_a[:, 0] * wh_a[:, 1])[:, None]
    area_b = (wh_b[:, 0] * wh_b[:, 1])[None, :]
    return inter / (area_a + area_b - inter)


def grid_shape_iou(wh: Tensor, sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """wh (Tensor[N, 2]) -> (Tensor[N]): each shape's best shape IoU over the S x R grid."""
    return shape_iou(wh.double(), anchor_shapes(sizes, ratios)).amax(dim=1)


def _nearest_centre(centre: Tensor, side: Tensor, *, stride: float, offset: float
                    ) -> tuple[Tensor, Tensor]:
    """The grid centre nearest to ``centre`` along one axis, among the anchors the RPN uses.

    The RPN keeps the anchors centred inside the image (``rpn.anchors_inside`` with the default
    ``anchor_border=None``): centres ``(i + offset) * stride`` in ``[0, side)``, i.e. the first
    ``ceil(side / stride - offset)`` of the feature map's cells (the padded batch's feature map
    is never smaller).

    Args:
        centre (Tensor[N]): box centres, pixels. side (Tensor[N]): image sides, pixels.

    Returns:
        (Tensor[N] the nearest usable centre, BoolTensor[N] whether the image has any).
    """
    count = torch.ceil((side - offset * stride) / stride)
    index = torch.round(centre / stride - offset)
    index = torch.minimum(index.clamp(min=0), (count - 1).clamp(min=0))
    return (index + offset) * stride, count >= 1


def best_anchor_iou(
    boxes: Tensor, image_sizes: Tensor, *, sizes: Sequence[float], ratios: Sequence[float],
    stride: float, offset: float,
) -> tuple[Tensor, Tensor]:
    """The IoU each box gets with its best anchor on the real grid (what the RPN matcher sees).

    For a fixed anchor shape the IoU falls as the centres move apart along x and along y
    separately, so the best anchor of each shape sits at the grid centre nearest the box's centre
    (one per axis, the same for every shape): N x A IoUs, no search over the grid.

    Args:
        boxes (Tensor[N, 4]): xyxy, model-input pixels.
        image_sizes (Tensor[N, 2]): (h, w) of each box's image at model-input scale.
        sizes, ratios: the anchor grid (``AnchorGenerator``'s arguments).
        stride (float): feature-map stride. offset (float): the anchors' centre in a cell.

    Returns:
        iou (Tensor[N] float64): best IoU, 0 for a box whose image has no anchor centred in it.
        anchor_index (LongTensor[N]): that anchor's shape, ``a = r * S + s`` (``anchor_shapes``).
    """
    relative, usable = _relative_to_grid(boxes, image_sizes, stride=stride, offset=offset)
    iou = _centred_iou(relative, anchor_shapes(sizes, ratios).to(relative.device))  # (N, A)
    if iou.shape[0]:
        best, index = iou.max(dim=1)
    else:
        best, index = iou.new_zeros(0), torch.zeros(0, dtype=torch.long, device=iou.device)
    return torch.where(usable, best, torch.zeros_like(best)), index


def _relative_to_grid(boxes: Tensor, image_sizes: Tensor, *, stride: float, offset: float
                      ) -> tuple[Tensor, Tensor]:
    """Each box relative to its nearest usable grid centre: (Tensor[N, 4] float64 xyxy, BoolTensor[N]
    whether its image has an anchor centred inside)."""
    b = boxes.to(torch.float64)
    hw = image_sizes.to(torch.float64)
    ax, x_ok = _nearest_centre((b[:, 0] + b[:, 2]) / 2, hw[:, 1], stride=stride, offset=offset)
    ay, y_ok = _nearest_centre((b[:, 1] + b[:, 3]) / 2, hw[:, 0], stride=stride, offset=offset)
    return b - torch.stack((ax, ay, ax, ay), dim=1), x_ok & y_ok


def _centred_iou(relative: Tensor, shapes: Tensor) -> Tensor:
    """IoU of boxes (Tensor[N, 4], xyxy relative to an anchor centre) with anchors of every shape
    (Tensor[A, 2]) centred at the origin: Tensor[N, A]."""
    half_w, half_h = shapes[None, :, 0] / 2, shapes[None, :, 1] / 2  # (1, A)
    over_x = (torch.minimum(relative[:, 2, None], half_w)
              - torch.maximum(relative[:, 0, None], -half_w)).clamp(min=0)
    over_y = (torch.minimum(relative[:, 3, None], half_h)
              - torch.maximum(relative[:, 1, None], -half_h)).clamp(min=0)
    inter = over_x * over_y
    area = ((relative[:, 2] - relative[:, 0]) * (relative[:, 3] - relative[:, 1]))[:, None]
    return inter / (area + (shapes[:, 0] * shapes[:, 1])[None, :] - inter)


def anchor_coverage(iou: Tensor, thresholds: Sequence[float] = (0.5, 0.7)) -> dict[float, float]:
    """iou (Tensor[N]): best-anchor IoUs -> {threshold: fraction of boxes with IoU >= it}.

    No boxes: 0.0 for every threshold (nothing is covered; never NaN). Callers that show the
    number should show the box count beside it.
    """
    n = iou.numel()
    return {float(t): (float((iou >= t).sum()) / n if n else 0.0) for t in thresholds}


# ----------------------------------------------------------------------------- fitting


def _kmeans_pp(wh: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding with the 1 - IoU distance: wh (Tensor[N, 2]) -> (Tensor[k, 2])."""
    first = torch.randint(wh.shape[0], (1,), generator=generator)
    centres = wh[first]
    dist = 1 - shape_iou(wh, centres)[:, 0]
    for _ in range(k - 1):  # k is small (sizes x ratios); each step is batched over the boxes
        weights = dist.square()
        if float(weights.sum()) <= 0:  # every box already sits on a centre: repeat one
            weights = torch.ones_like(weights)
        pick = torch.multinomial(weights, 1, generator=generator)
        centres = torch.cat((centres, wh[pick]))
        dist = torch.minimum(dist, 1 - shape_iou(wh, wh[pick])[:, 0])
    return centres


def _kmeans_iou(wh: Tensor, k: int, generator: torch.Generator, iterations: int) -> tuple[
        Tensor, Tensor]:
    """Lloyd's k-means on shapes with 1 - IoU distance; centres are geometric means. It stops
    when no centre moves by more than 0.1 % (or after ``iterations``).

    Returns: centres (Tensor[k, 2]) and the boxes per centre (Tensor[k]).
    """
    centres = _kmeans_pp(wh, k, generator)
    log_wh = wh.log()
    for _ in range(iterations):
        assign = shape_iou(wh, centres).argmax(dim=1)
        counts = torch.bincount(assign, minlength=k).to(wh.dtype)
        sums = torch.zeros(k, 2, dtype=wh.dtype).index_add_(0, assign, log_wh)
        means = (sums / counts.clamp(min=1)[:, None]).exp()
        moved = centres
        centres = torch.where(counts[:, None] > 0, means, centres)  # an empty cluster stays put
        if float((centres / moved).log().abs().max()) < _TOLERANCE:
            break
    counts = torch.bincount(shape_iou(wh, centres).argmax(dim=1), minlength=k).to(wh.dtype)
    return centres, counts


def _kmeans_1d(values: Tensor, weights: Tensor, groups: int, iterations: int = 50) -> Tensor:
    """Weighted 1-D k-means, initialised at weighted quantiles: (Tensor[k]) -> (Tensor[groups])."""
    order = values.argsort()
    v, w = values[order], weights[order]
    cum = (w.cumsum(0) - w / 2) / w.sum()
    targets = (torch.arange(groups, dtype=v.dtype) + 0.5) / groups
    centres = v[torch.searchsorted(cum, targets).clamp(max=v.numel() - 1)]
    for _ in range(iterations):
        assign = (v[:, None] - centres[None, :]).abs().argmin(dim=1)
        mass = torch.zeros(groups, dtype=v.dtype).index_add_(0, assign, w)
        total = torch.zeros(groups, dtype=v.dtype).index_add_(0, assign, w * v)
        centres = torch.where(mass > 0, total / mass.clamp(min=1e-12), centres)
    return centres.sort().values


def shape_score(wh: Tensor) -> Callable[[Tensor, Tensor], float]:
    """The fit's default score: the mean best shape IoU of ``wh`` (Tensor[N, 2]) over a grid
    ``(sizes Tensor[S], ratios Tensor[R]) -> float`` (anchors and boxes sharing centres)."""
    wh = wh.to(torch.float64)
    return lambda sizes, ratios: float(grid_shape_iou(wh, sizes, ratios).mean())


def grid_score(boxes: Tensor, image_sizes: Tensor, *, stride: float, offset: float,
               thresholds: Sequence[float] = (0.5, 0.7)) -> Callable[[Tensor, Tensor], float]:
    """A score of a grid on the real anchor positions (``best_anchor_iou``): the coverage at each
    of ``thresholds`` plus the mean best IoU (which breaks the coverages' ties smoothly).

    Args:
        boxes (Tensor[N, 4]): xyxy, model-input pixels. image_sizes (Tensor[N, 2]): (h, w).
    """
    relative, usable = _relative_to_grid(boxes, image_sizes, stride=stride, offset=offset)
    relative = relative[usable]  # the others score 0 whatever the grid
    total = max(int(usable.numel()), 1)

    def score(sizes: Tensor, ratios: Tensor) -> float:
        iou = _centred_iou(relative, anchor_shapes(sizes, ratios)).amax(dim=1)
        return float((sum((iou >= t).sum() for t in thresholds) + iou.sum()) / total)
    return score


def _refine(score: Callable[[Tensor, Tensor], float], log_sizes: Tensor, log_ratios: Tensor, *,
            fit_sizes: bool, fit_ratios: bool) -> tuple[Tensor, Tensor, float]:
    """Coordinate ascent of ``score`` over the free log sizes and log ratios; returns them and
    the score reached."""
    params = torch.cat((log_sizes, log_ratios))
    free = [i for i in range(len(log_sizes)) if fit_sizes]
    free += [len(log_sizes) + i for i in range(len(log_ratios)) if fit_ratios]
    split = len(log_sizes)

    def value_of(p: Tensor) -> float:
        return score(p[:split].exp(), p[split:].exp())

    best = value_of(params)
    for step in _STEPS:
        improved = True
        while improved:
            improved = False
            for i in free:
                for sign in (1.0, -1.0):
                    trial = params.clone()
                    trial[i] += sign * step
                    value = value_of(trial)
                    if value > best + 1e-9:
                        params, best, improved = trial, value, True
                        break
    return params[:split], params[split:], best


def fit_anchors(
    wh: Tensor, *, num_sizes: int, num_ratios: int, seed: int = 0, iterations: int = 100,
    sizes: Sequence[float] | None = None, ratios: Sequence[float] | None = None,
    score: Callable[[Tensor, Tensor], float] | None = None,
    starts: Sequence[tuple[Sequence[float], Sequence[float]]] = (),
) -> tuple[list[float], list[float]]:
    """Anchor sizes and ratios fitted to box shapes, keeping the S x R grid the RPN needs.

    1. k-means on (w, h) with the 1 - IoU distance (k = S x R, k-means++ seeding from a
       ``torch.Generator`` seeded with ``seed``; centres are geometric means);
    2. the grid: ratios from the clusters' log aspect ratios and sizes from their log
       sqrt(area), each by a weighted 1-D k-means (weights: boxes per cluster);
    3. coordinate ascent of ``score`` over the free S + R numbers (log-space steps from 0.2 down
       to 0.01), from that grid and from each of ``starts``; the best result wins, so the fit
       never scores below a start (before rounding to 0.1 px and 0.01).

    Shapes with a non-positive or non-finite side are ignored (they match no anchor). More than
    20,000 shapes are clustered as a seeded random sample of 20,000 (the shape distribution is
    well estimated by it; the fit stays at about a second).

    Args:
        wh (Tensor[N, 2]): box (w, h), model-input pixels.
        num_sizes (int): S. num_ratios (int): R.
        seed (int): the result is a function of the data, the arguments and ``seed``.
        iterations (int): most Lloyd iterations (it stops when the centres settle).
        sizes, ratios (optional): held fixed (only the other is fitted); their lengths are S, R.
        score (optional): ``(sizes Tensor[S], ratios Tensor[R]) -> float``, higher is better;
            default ``shape_score(wh)`` (mean best shape IoU). ``grid_score`` scores the real
            anchor positions.
        starts: more (sizes, ratios) grids of S and R values to refine from (e.g. the
            configured anchors); their fixed half is replaced by ``sizes``/``ratios``.

    Returns:
        sizes (S floats, ascending, 0.1 px) and ratios (R floats, ascending, 0.01).

    Raises:
        ValueError: fewer usable shapes than k = S x R, or a start of the wrong length.
    """
    num_sizes = len(sizes) if sizes is not None else int(num_sizes)
    num_ratios = len(ratios) if ratios is not None else int(num_ratios)
    if num_sizes < 1 or num_ratios < 1:
        raise ValueError(f"need at least one size and one ratio, got {num_sizes} and {num_ratios}")
    wh = wh.detach().to("cpu", torch.float64).reshape(-1, 2)
    wh = wh[torch.isfinite(wh).all(dim=1) & (wh > 0).all(dim=1)]
    k = num_sizes * num_ratios
    if wh.shape[0] < k:
        raise ValueError(f"fitting {num_sizes} sizes x {num_ratios} ratios needs at least {k} "
                         f"boxes of positive size, got {wh.shape[0]}")
    generator = torch.Generator().manual_seed(int(seed))
    if wh.shape[0] > _MAX_FIT_POINTS:
        wh = wh[torch.randperm(wh.shape[0], generator=generator)[:_MAX_FIT_POINTS]]
    score = score if score is not None else shape_score(wh)
    centres, counts = _kmeans_iou(wh, k, generator, iterations)
    grids = [(sizes if sizes is not None else _kmeans_1d(centres.log().mean(dim=1), counts,
                                                           num_sizes).exp(),
              ratios if ratios is not None else _kmeans_1d((centres[:, 1] / centres[:, 0]).log(),
                                                           counts, num_ratios).exp())]
    for start_sizes, start_ratios in starts:
        if len(start_sizes) != num_sizes or len(start_ratios) != num_ratios:
            raise ValueError(f"a start grid needs {num_sizes} sizes and {num_ratios} ratios, got "
                             f"{list(start_sizes)} and {list(start_ratios)}")
        grids.append((sizes if sizes is not None else start_sizes,
                      ratios if ratios is not None else start_ratios))
    results = [_refine(score, torch.as_tensor(s, dtype=torch.float64).log(),
                       torch.as_tensor(r, dtype=torch.float64).log(),
                       fit_sizes=sizes is None, fit_ratios=ratios is None) for s, r in grids]
    log_sizes, log_ratios, _ = max(results, key=lambda result: result[2])  # the first on ties
    out_sizes = sizes if sizes is not None else [max(round(v, 1), 0.1)
                                                 for v in log_sizes.exp().tolist()]
    out_ratios = ratios if ratios is not None else [max(round(v, 2), 0.01)
                                                    for v in log_ratios.exp().tolist()]
    return sorted(float(v) for v in out_sizes), sorted(float(v) for v in out_ratios)
