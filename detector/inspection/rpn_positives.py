"""How many anchors the RPN's matcher makes positive per image: what a sampling-free RPN divides
its loss terms by (``loss=focal_sampling_free``), against the 256 anchors a sampled one averages.

Shorthand: M images, A anchors of the largest image's grid, G the most boxes in one image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from detector.data.box_stats import BoxTable
from detector.modeling.rpn import anchors_inside
from detector.ops.anchors import AnchorGenerator
from detector.ops.boxes import batched_box_iou
from detector.ops.matcher import Matcher

__all__ = ["RPNPositives", "rpn_positives"]

MAX_IMAGES = 2000  # a larger split is measured on a random sample of this many images
IOU_ELEMENTS = 2**24  # IoU values held at once ([images, A, G] per chunk, ~64 MB)


@dataclass(frozen=True)
class RPNPositives:
    """Per image (means over ``images``): ``positives`` (IoU >= fg or a box's best anchor, centre
    inside the image), ``median`` of them, and ``used``: the anchors that enter a sampling-free
    loss (positive or background, < bg IoU)."""

    images: int
    total_images: int  # images in the split; more than ``images`` when a sample was measured
    positives: float
    median: float
    used: float


def rpn_positives(table: BoxTable, *, sizes, ratios, stride: int, offset: float,
                  fg_iou: float = 0.7, bg_iou: float = 0.3, max_images: int = MAX_IMAGES,
                  seed: int = 0) -> RPNPositives | None:
    """The RPN's matching rule (``detector.modeling.build_criterion``: IoU >= ``fg_iou``
    foreground, < ``bg_iou`` background, each box keeps its best anchors; anchors whose centre lies
    outside the image ignored) applied to every image of ``table`` on one grid covering the
    largest image, as a batch padded to it is matched in training. Over ``max_images`` images a
    random sample of that many (``seed``) is measured. None without images."""
    total = int(table.image_sizes.shape[0])
    if total == 0:
        return None
    if total > max_images:
        table = _sample(table, max_images, seed)
    m = int(table.image_sizes.shape[0])
    generator = AnchorGenerator(sizes=sizes, ratios=ratios, stride=stride, offset=offset)
    h, w = (int(v) for v in table.image_sizes.amax(dim=0))
    anchors = generator.grid_anchors((math.ceil(h / stride), math.ceil(w / stride)))
    matcher = Matcher(thresholds=(bg_iou, fg_iou), labels=(0, -1, 1),
                      allow_low_quality_matches=True)
    # pad each image's boxes into [M, G, 4]: rank of each box within its image
    order = torch.argsort(table.image_index, stable=True)
    image_index, boxes = table.image_index[order], table.boxes[order]
    per_image = torch.bincount(image_index, minlength=m)
    g = max(int(per_image.max()), 1)
    rank = torch.arange(len(image_index)) - (per_image.cumsum(0) - per_image)[image_index]
    padded = torch.zeros(m, g, 4)
    valid = torch.zeros(m, g, dtype=torch.bool)
    padded[image_index, rank] = boxes.float()
    valid[image_index, rank] = True
    counts: list[Tensor] = []
    used: list[Tensor] = []
    step = max(1, IOU_ELEMENTS // (len(anchors) * g))
    for start in range(0, m, step):  # chunks of images bound the memory (COCO: ~63k anchors)
        chunk = slice(start, start + step)
        labels = matcher.labels_only(batched_box_iou(anchors, padded[chunk], valid[chunk]))
        labels = labels.masked_fill(~anchors_inside(anchors, table.image_sizes[chunk]), -1)
        counts.append((labels == 1).sum(dim=1))
        used.append((labels >= 0).sum(dim=1))
    positives = torch.cat(counts).double()
    return RPNPositives(images=m, total_images=total, positives=float(positives.mean()),
                        median=float(positives.median()),
                        used=float(torch.cat(used).double().mean()))


def _sample(table: BoxTable, count: int, seed: int) -> BoxTable:
    """``count`` random images of ``table`` (``seed``), their boxes renumbered."""
    keep = torch.randperm(int(table.image_sizes.shape[0]),
                          generator=torch.Generator().manual_seed(seed))[:count].sort().values
    new_index = torch.full((int(table.image_sizes.shape[0]),), -1, dtype=torch.long)
    new_index[keep] = torch.arange(count)
    mapped = new_index[table.image_index]
    rows = mapped >= 0
    return BoxTable(boxes=table.boxes[rows], labels=table.labels[rows], image_index=mapped[rows],
                    image_sizes=table.image_sizes[keep])
