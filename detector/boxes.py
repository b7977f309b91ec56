"""Box math: pure, batched functions over ``(..., 4)`` tensors.

Boxes are ``xyxy`` in pixels unless a name says otherwise (``xywh`` = COCO's top-left + size,
``cxcywh`` = centre + size). Every function broadcasts over leading dimensions, runs unchanged on CPU
and CUDA, never loops over boxes in Python and never synchronises with the host. Precision-sensitive
math (IoU, box coding) is done in float32 even when the inputs are half precision.
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
    "cxcywh_to_xyxy",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "remove_small_boxes_mask",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
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
    """boxes (Tensor[..., 4]): x, y, w, h (COCO) -> (Tensor[..., 4]): xyxy."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """boxes (Tensor[..., 4]): xyxy -> (Tensor[..., 4]): centre x, centre y, w, h."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """boxes (Tensor[..., 4]): centre x, centre y, w, h -> (Tensor[..., 4]): xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


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
    """boxes (Tensor[..., 4]): xyxy -> (BoolTensor[...]): True where width and height >= min_size."""
    wh = boxes[..., 2:] - boxes[..., :2]
    return (wh >= min_size).all(dim=-1)


# ----------------------------------------------------------------------------- overlap


def _pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]) -> IoU (Tensor[..., N, M] float32).

    Leading dimensions broadcast. The result is computed in ``[..., M, N]`` memory order (the long
    axis innermost, which is several times faster for anchors x ground truth) and returned as a
    transposed view.
    """
    c1 = boxes1.float().movedim(-1, 0).contiguous().unsqueeze(-2)  # (4, ..., 1, N)
    c2 = boxes2.float().movedim(-1, 0).unsqueeze(-1)  # (4, ..., M, 1)
    w = (torch.minimum(c1[2], c2[2]) - torch.maximum(c1[0], c2[0])).clamp_(min=0)
    h = (torch.minimum(c1[3], c2[3]) - torch.maximum(c1[1], c2[1])).clamp_(min=0)
    inter = w * h
    area1 = (c1[2] - c1[0]).clamp(min=0) * (c1[3] - c1[1]).clamp(min=0)
    area2 = (c2[2] - c2[0]).clamp(min=0) * (c2[3] - c2[1]).clamp(min=0)
    union = (area1 + area2 - inter).clamp_(min=torch.finfo(torch.float32).tiny)
    return (inter / union).transpose(-1, -2)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU.

    Args:
        boxes1 (Tensor[N, 4]): xyxy.
        boxes2 (Tensor[M, 4]): xyxy.

    Returns:
        Tensor[N, M] float32: IoU; 0 where the union is empty (two degenerate boxes).
    """
    return _pairwise_iou(boxes1, boxes2)


def batched_box_iou(boxes1: Tensor, boxes2: Tensor, valid2: Tensor | None = None) -> Tensor:
    """Pairwise IoU for a batch of images in one call.

    Args:
        boxes1 (Tensor[B, N, 4] or Tensor[N, 4]): xyxy, e.g. anchors (shared across images when 2-D)
            or proposals.
        boxes2 (Tensor[B, M, 4]): xyxy, e.g. padded ground truth.
        valid2 (BoolTensor[B, M], optional): False for padding rows of ``boxes2``.

    Returns:
        Tensor[B, N, M] float32: IoU; padded columns are -1 so that no threshold ever matches them.
    """
    iou = _pairwise_iou(boxes1, boxes2)  # a 2-D boxes1 broadcasts over the batch
    if valid2 is not None:
        iou = iou.masked_fill(~valid2[:, None, :], -1.0)
    return iou


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """boxes1, boxes2 (Tensor[..., 4]): xyxy, paired -> (Tensor[...] float32): IoU of each pair."""
    b1, b2 = boxes1.float(), boxes2.float()
    lt = torch.maximum(b1[..., :2], b2[..., :2])
    rb = torch.minimum(b1[..., 2:], b2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(b1) + box_area(b2) - inter
    return inter / union.clamp(min=torch.finfo(torch.float32).tiny)


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """boxes1, boxes2 (Tensor[..., 4]): xyxy, paired -> (Tensor[...] float32): GIoU in [-1, 1]."""
    b1, b2 = boxes1.float(), boxes2.float()
    lt = torch.maximum(b1[..., :2], b2[..., :2])
    rb = torch.minimum(b1[..., 2:], b2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(b1) + box_area(b2) - inter
    iou = inter / union.clamp(min=torch.finfo(torch.float32).tiny)
    hull_wh = (torch.maximum(b1[..., 2:], b2[..., 2:]) - torch.minimum(b1[..., :2], b2[..., :2]))
    hull = hull_wh.clamp(min=0).prod(dim=-1)
    return iou - (hull - union) / hull.clamp(min=torch.finfo(torch.float32).tiny)


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
        ref, tgt = xyxy_to_cxcywh(reference.float()), xyxy_to_cxcywh(target.float())
        wx, wy, ww, wh = self.weights
        tiny = torch.finfo(torch.float32).tiny
        ref_wh = ref[..., 2:].clamp(min=tiny)
        dxy = (tgt[..., :2] - ref[..., :2]) / ref_wh * ref.new_tensor((wx, wy))
        dwh = torch.log(tgt[..., 2:].clamp(min=tiny) / ref_wh) * ref.new_tensor((ww, wh))
        return torch.cat((dxy, dwh), dim=-1)

    def decode(self, reference: Tensor, deltas: Tensor) -> Tensor:
        """Apply deltas to reference boxes.

        Args:
            reference (Tensor[..., 4]): xyxy anchors or proposals.
            deltas (Tensor[..., 4 * C]): (dx, dy, dw, dh) per box, or C class-specific groups
                laid out as ``[c0 dx, c0 dy, c0 dw, c0 dh, c1 dx, ...]`` (ROI head, ``(N, K*4)``).

        Returns:
            Tensor[..., 4 * C] float32: decoded xyxy boxes in the same layout as ``deltas``.
        """
        num_groups = deltas.shape[-1] // 4
        d = deltas.float().unflatten(-1, (num_groups, 4))
        ref = xyxy_to_cxcywh(reference.float()).unsqueeze(-2)
        d = d / d.new_tensor(self.weights)
        dxy, dwh = d[..., :2], d[..., 2:].clamp(max=self.scale_clamp)
        ctr = ref[..., :2] + dxy * ref[..., 2:]
        wh = ref[..., 2:] * torch.exp(dwh)
        boxes = torch.cat((ctr - wh / 2, ctr + wh / 2), dim=-1)
        return boxes.flatten(-2)
