"""Box math: pure, batched functions over ``(..., 4)`` tensors.

Boxes are ``xyxy`` in pixels unless a name says otherwise (``xywh`` = COCO's top-left + size,
``cxcywh`` = centre + size). Every function broadcasts over leading dimensions, runs unchanged on
CPU and CUDA, never loops over boxes in Python and never synchronises with the host.
Precision-sensitive math (IoU, box coding) is done in float32 even when the inputs are half
precision (and under autocast, which leaves these element-wise ops alone).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "BoxCoder",
    "DEFAULT_SCALE_CLAMP",
    "batched_box_iou",
    "box_area",
    "box_iou",
    "clip_boxes",
    "grid_box_iou",
    "remove_small_boxes_mask",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]

# dw, dh are clamped before exp() so that a decoded box is at most 1000/16 times its anchor.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


# ----------------------------------------------------------------------------- conversions


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """boxes (Tensor[..., 4]): xyxy -> (Tensor[..., 4]): x, y, w, h (COCO)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """boxes (Tensor[..., 4]): x, y, w, h (COCO: top-left corner and size) -> (Tensor[..., 4]):
    xyxy, in the input's dtype (for NumPy data: ``xywh_to_xyxy(torch.from_numpy(a)).numpy()``
    gives what the same sums in NumPy give)."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """boxes (Tensor[..., 4]): xyxy -> centre x, centre y, w, h (Tensor[...] each)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1


# ----------------------------------------------------------------------------- geometry


def box_area(boxes: Tensor) -> Tensor:
    """boxes (Tensor[..., 4]): xyxy -> (Tensor[...]): area; degenerate boxes have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def clip_boxes(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """Clip boxes to their image.

    Args:
        boxes (Tensor[B, N, 4]): xyxy pixels, one row of boxes per image.
        image_sizes (Tensor[B, 2]): (h, w) of each image.

    Returns:
        Tensor[B, N, 4]: boxes with x in [0, w] and y in [0, h].
    """
    h = image_sizes[:, 0].to(boxes.dtype).view(-1, 1)
    w = image_sizes[:, 1].to(boxes.dtype).view(-1, 1)
    x1, y1, x2, y2 = boxes.clamp(min=0).unbind(-1)
    return torch.stack(
        (torch.minimum(x1, w), torch.minimum(y1, h), torch.minimum(x2, w), torch.minimum(y2, h)),
        dim=-1,
    )


def remove_small_boxes_mask(boxes: Tensor, min_size: float) -> Tensor:
    """boxes (Tensor[..., 4]): xyxy -> (BoolTensor[...]): True where both sides are >= min_size."""
    wh = boxes[..., 2:] - boxes[..., :2]
    return (wh >= min_size).all(dim=-1)


# ----------------------------------------------------------------------------- overlap

_TINY = torch.finfo(torch.float32).tiny


def _area_sum(area1: Tensor, area2: Tensor) -> Tensor:
    """area1 + area2, broadcast to the pairwise shape.

    ``area1`` is floored at the smallest normal float so that the union is never 0 (two degenerate
    boxes give IoU 0, not NaN) without another pass over the pairwise matrix; the floor vanishes in
    the sum unless ``area2`` is that tiny too.
    """
    return torch.add(area1.clamp(min=_TINY), area2)


def _iou_from_overlap(inter: Tensor, area_sum: Tensor, valid2: Tensor | None = None) -> Tensor:
    """IoU of every pair, overwriting both arguments (fresh pairwise temporaries).

    Args:
        inter (Tensor[B, M, ...]): intersection area of every pair.
        area_sum (Tensor[B, M, ...]): ``_area_sum`` of the pair's areas.
        valid2 (BoolTensor[B, M], optional): rows of boxes emptied by ``_empty_padding`` (IoU 0)
            come out as -1, in the same pass as the division.

    Returns:
        Tensor[B, M, ...] float32 (``inter``'s storage): ``inter / (area_sum - inter)``, correctly
        rounded, so that pairs with equal intersection and union tie exactly (the low-quality
        matches rely on it).
    """
    union = area_sum.sub_(inter)
    if valid2 is None:
        return inter.div_(union)
    shift = valid2.to(inter.dtype).sub_(1.0).view(*valid2.shape, *[1] * (inter.dim() - 2))
    return torch.addcdiv(shift, inter, union, out=inter)  # shift + inter / union


def _overlap(lo1: Tensor, hi1: Tensor, lo2: Tensor, hi2: Tensor) -> Tensor:
    """Length of the overlap of intervals [lo1, hi1] and [lo2, hi2] (broadcast), >= 0."""
    return torch.minimum(hi1, hi2).sub_(torch.maximum(lo1, lo2)).clamp_(min=0)


def _pairwise_iou(boxes1: Tensor, boxes2: Tensor, valid2: Tensor | None = None) -> Tensor:
    """boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]) -> IoU (Tensor[..., M, N] float32).

    Leading dimensions broadcast. Note the ``[..., M, N]`` order: the long axis innermost is several
    times faster for anchors x ground truth; callers return it as a transposed view. ``valid2``
    (BoolTensor[B, M]) puts -1 in the rows of padded boxes.
    """
    c1 = boxes1.float().movedim(-1, 0).contiguous().unsqueeze(-2)  # (4, ..., 1, N)
    c2 = _empty_padding(boxes2.float(), valid2).movedim(-1, 0).unsqueeze(-1)  # (4, ..., M, 1)
    inter = _overlap(c1[0], c1[2], c2[0], c2[2]).mul_(_overlap(c1[1], c1[3], c2[1], c2[3]))
    area_sum = _area_sum(box_area(c1.movedim(0, -1)), box_area(c2.movedim(0, -1)))
    return _iou_from_overlap(inter, area_sum, valid2)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU.

    Args:
        boxes1 (Tensor[N, 4]): xyxy.
        boxes2 (Tensor[M, 4]): xyxy.

    Returns:
        Tensor[N, M] float32: IoU; 0 where the union is empty (two degenerate boxes).
    """
    return _pairwise_iou(boxes1, boxes2).transpose(-1, -2)


def _empty_padding(boxes2: Tensor, valid2: Tensor | None) -> Tensor:
    """boxes2 (Tensor[B, M, 4]) with padded rows (valid2 False) replaced by an empty box at 0.

    A zero-size box overlaps nothing and has zero area, so its IoU with any box is exactly 0 and
    ``_iou_from_overlap`` turns it into -1 within its division pass (a masked_fill over the
    pairwise matrix would be slower than the division itself).
    """
    return boxes2 if valid2 is None else boxes2.masked_fill(~valid2.unsqueeze(-1), 0.0)


def batched_box_iou(boxes1: Tensor, boxes2: Tensor, valid2: Tensor | None = None) -> Tensor:
    """Pairwise IoU for a batch of images in one call.

    Args:
        boxes1 (Tensor[B, N, 4] or Tensor[N, 4]): xyxy, e.g. anchors (shared across images when 2-D)
            or proposals.
        boxes2 (Tensor[B, M, 4]): xyxy, e.g. padded ground truth.
        valid2 (BoolTensor[B, M], optional): False for padding rows of ``boxes2``.

    Returns:
        Tensor[B, N, M] float32: IoU; padded columns are -1 so that no threshold ever matches them.
        A transposed view of a contiguous ``[B, M, N]`` tensor (the layout ``Matcher`` prefers).
    """
    return _pairwise_iou(boxes1, boxes2, valid2).transpose(-1, -2)


def grid_box_iou(
    x_intervals: Tensor, y_intervals: Tensor, boxes2: Tensor, valid2: Tensor | None = None
) -> Tensor:
    """``batched_box_iou`` for a grid of boxes such as anchors, without pairwise coordinate math.

    The grid holds Hg x Wg x A boxes: box ``(y, x, a)`` spans ``x_intervals[x, a]`` horizontally and
    ``y_intervals[y, a]`` vertically (for anchors: one x interval per column shift and anchor shape,
    one y interval per row shift and shape). The overlap width with a box of ``boxes2`` depends only
    on ``(x, a)`` and the height only on ``(y, a)``: only the intersection product, the union and
    the division touch all pairs. The values are bit-identical to
    ``batched_box_iou(grid_boxes, boxes2, valid2)`` with the grid boxes laid out
    ``index = (y * Wg + x) * A + a``.

    Args:
        x_intervals (Tensor[Wg, A, 2]): (x1, x2) of every column and shape.
        y_intervals (Tensor[Hg, A, 2]): (y1, y2) of every row and shape.
        boxes2 (Tensor[B, M, 4]): xyxy, e.g. padded ground truth.
        valid2 (BoolTensor[B, M], optional): False for padding rows of ``boxes2``.

    Returns:
        Tensor[B, Hg * Wg * A, M] float32: IoU, -1 in padded columns; a transposed view of a
        contiguous ``[B, M, Hg * Wg * A]`` tensor.
    """
    xs, ys, b2 = x_intervals.float(), y_intervals.float(), _empty_padding(boxes2.float(), valid2)
    gx1, gy1, gx2, gy2 = b2[:, :, None, None].unbind(-1)  # (B, M, 1, 1) each
    grid_w = (xs[..., 1] - xs[..., 0]).clamp(min=0)  # (Wg, A)
    grid_h = (ys[..., 1] - ys[..., 0]).clamp(min=0)  # (Hg, A)
    area1 = grid_w * grid_h.unsqueeze(1)  # (Hg, Wg, A)
    width = _overlap(xs[..., 0], xs[..., 1], gx1, gx2).unsqueeze(2)  # (B, M, 1, Wg, A)
    height = _overlap(ys[..., 0], ys[..., 1], gy1, gy2).unsqueeze(3)  # (B, M, Hg, 1, A)
    inter = width * height  # (B, M, Hg, Wg, A)
    area_sum = _area_sum(area1, box_area(b2)[:, :, None, None, None])  # (B, M, Hg, Wg, A)
    iou = _iou_from_overlap(inter, area_sum, valid2)
    return iou.flatten(2).transpose(-1, -2)


# ----------------------------------------------------------------------------- box coding


class BoxCoder:
    """The Faster R-CNN box parameterisation (R-CNN appendix C).

    For a reference box (anchor or proposal) with centre (xa, ya) and size (wa, ha) and a target box
    (x, y, w, h): ``deltas = (wx (x - xa) / wa, wy (y - ya) / ha, ww log(w / wa), wh log(h / ha))``.
    The RPN uses weights (1, 1, 1, 1), the ROI head (10, 10, 5, 5).

    Args:
        weights (tuple[float, float, float, float]): (wx, wy, ww, wh).
        scale_clamp (float): upper bound on decoded dw, dh before exp(); log(1000/16) by default.
    """

    def __init__(
        self,
        *,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.4f})"

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        """Regression targets that move ``reference`` onto ``target``.

        Args:
            reference (Tensor[..., 4]): xyxy anchors or proposals (positive width and height).
            target (Tensor[..., 4]): xyxy boxes, broadcastable with ``reference``.

        Returns:
            Tensor[..., 4] float32: deltas (dx, dy, dw, dh).
        """
        # The weights stay Python floats: a tensor built from them would be a host-to-device copy.
        wx, wy, ww, wh = self.weights
        rx, ry, rw, rh = _centre_size(reference.float())
        tx, ty, tw, th = _centre_size(target.float())
        rw, rh = rw.clamp_(min=_TINY), rh.clamp_(min=_TINY)
        dx = (tx - rx).div_(rw).mul_(wx)
        dy = (ty - ry).div_(rh).mul_(wy)
        dw = (tw.clamp_(min=_TINY) / rw).log_().mul_(ww)
        dh = (th.clamp_(min=_TINY) / rh).log_().mul_(wh)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, reference: Tensor, deltas: Tensor) -> Tensor:
        """Apply deltas to reference boxes.

        Args:
            reference (Tensor[..., 4]): xyxy anchors or proposals.
            deltas (Tensor[..., 4 * C]): (dx, dy, dw, dh) per box, or C class-specific groups
                laid out as ``[c0 dx, c0 dy, c0 dw, c0 dh, c1 dx, ...]`` (ROI head, ``(N, K*4)``).

        Returns:
            Tensor[..., 4 * C] float32: decoded xyxy boxes in the same layout as ``deltas``.
        """
        if deltas.shape[-1] % 4:
            raise ValueError(f"deltas must have 4 * C values per box, got {tuple(deltas.shape)}")
        wx, wy, ww, wh = self.weights
        dx, dy, dw, dh = deltas.float().unflatten(-1, (-1, 4)).unbind(-1)  # (..., C) each
        rx, ry, rw, rh = (c.unsqueeze(-1) for c in _centre_size(reference.float()))  # (..., 1)
        cx = dx / wx * rw + rx
        cy = dy / wy * rh + ry
        half_w = (dw / ww).clamp_(max=self.scale_clamp).exp_() * rw * 0.5
        half_h = (dh / wh).clamp_(max=self.scale_clamp).exp_() * rh * 0.5
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
        return boxes.flatten(-2)
