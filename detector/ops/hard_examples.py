"""Online hard example mining (OHEM, Shrivastava et al., CVPR 2016): which RoIs a loss keeps.

Shorthand: B images, S RoIs per image (padded).

The ROI head scores every proposal; each RoI's loss (classification + box, no gradient) ranks it,
an NMS over each image's RoIs with that loss as the score (IoU 0.7 in the paper) drops
near-duplicates of a harder RoI, and the ``num`` hardest survivors per image are kept. The loss
is then taken over the kept RoIs only (``detector.modeling.roi_head.ROICriterion``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["hard_example_mask"]


@torch.no_grad()
def hard_example_mask(
    boxes: Tensor, losses: Tensor, valid: Tensor, *, num: int, iou_threshold: float = 0.7
) -> Tensor:
    """The hardest RoIs of each image after an NMS on their losses.

    Args:
        boxes (Tensor[B, S, 4]): xyxy RoIs, pixels.
        losses (Tensor[B, S]): each RoI's loss (higher = harder); read without gradient.
        valid (BoolTensor[B, S]): False for padding and ignored RoIs (never kept, never
            suppress another).
        num (int): RoIs kept per image (fewer when fewer survive the NMS).
        iou_threshold (float): a RoI overlapping a harder kept one by more than this is dropped.

    Returns:
        BoolTensor[B, S]: True for the kept RoIs, at most ``num`` per image.

    Every image is one NMS group of a single ``batched_nms`` call (padding in a group of its own);
    the per-image top-``num`` is a ``topk`` over fixed-size rows. The NMS's output size is the
    one host sync on CUDA.
    """
    batch, size = losses.shape
    scores = losses.detach().float().masked_fill(~valid, float("-inf"))
    image = torch.arange(batch, device=losses.device).repeat_interleave(size)
    groups = torch.where(valid.reshape(-1), image, batch)  # padding: a group of its own
    keep = batched_nms(boxes.detach().float().reshape(-1, 4), scores.reshape(-1), groups,
                       iou_threshold)
    survivor = torch.zeros(batch * size, dtype=torch.bool, device=losses.device)
    survivor = survivor.index_fill(0, keep, True).view(batch, size) & valid
    ranked = scores.masked_fill(~survivor, float("-inf"))
    top = ranked.topk(min(int(num), size), dim=1).indices  # [B, min(num, S)]
    return torch.zeros_like(survivor).scatter(1, top, True) & survivor
