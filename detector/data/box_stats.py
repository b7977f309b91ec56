"""A dataset's ground-truth boxes as the model sees them: at model-input scale, from the records.

Shorthand: N boxes (all images), M images. Nothing here decodes an image: the records hold every
image's size and boxes, and the resize (``transforms.ShorterSideResize``) is a function of the size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["BoxTable", "model_input_boxes", "model_input_sizes"]


@dataclass(frozen=True)
class BoxTable:
    """Every ground-truth box of a dataset at model-input scale.

    Attributes:
        boxes (Tensor[N, 4]): float32 xyxy, model-input pixels.
        labels (LongTensor[N]): class labels 1..K.
        image_index (LongTensor[N]): the record (position in ``dataset.records``) of each box.
        image_sizes (Tensor[M, 2]): int64 (h, w) of every record at model-input scale, images
            without boxes included.
    """

    boxes: Tensor
    labels: Tensor
    image_index: Tensor
    image_sizes: Tensor

    @property
    def box_image_sizes(self) -> Tensor:
        """(Tensor[N, 2]): (h, w) of each box's image at model-input scale."""
        return self.image_sizes[self.image_index]

    @property
    def wh(self) -> Tensor:
        """(Tensor[N, 2]): each box's (w, h), model-input pixels."""
        return self.boxes[:, 2:] - self.boxes[:, :2]


def model_input_sizes(sizes: Tensor, *, min_size: int, max_size: int) -> Tensor:
    """The size an image has after ``ShorterSideResize`` (``transforms.resize_scale``, each side
    rounded to the nearest pixel, at least 1).

    Args:
        sizes (Tensor[M, 2]): (h, w), original pixels.

    Returns:
        Tensor[M, 2]: int64 (h, w), model-input pixels.
    """
    hw = sizes.to(torch.float64)
    scale = torch.minimum(min_size / hw.amin(dim=1), max_size / hw.amax(dim=1))
    return torch.round(hw * scale[:, None]).clamp(min=1).long()


def model_input_boxes(dataset, *, min_size: int, max_size: int) -> BoxTable:
    """The boxes of ``dataset.records`` (``ImageRecord``: height, width, boxes, labels) at the
    scale the model sees them (the dataset config's ``min_size`` / ``max_size``).

    A box is scaled by the resized image's size over the original one per axis, as the
    transforms do (albumentations keeps boxes normalised). A flip keeps sizes; a random crop
    (``crop_prob`` of the training transforms) is not modelled: this is the uncropped view.
    """
    hw, box_parts, label_parts, counts = [], [], [], []
    for record in dataset.records:  # one pass, gathering arrays (not a per-box loop)
        hw.append((record.height, record.width))
        box_parts.append(np.asarray(record.boxes, np.float64).reshape(-1, 4))
        label_parts.append(np.asarray(record.labels, np.int64).reshape(-1))
        counts.append(len(box_parts[-1]))
    original = torch.tensor(hw, dtype=torch.float64).reshape(-1, 2)
    sizes = model_input_sizes(original, min_size=min_size, max_size=max_size)
    boxes = torch.from_numpy(np.concatenate(box_parts or [np.zeros((0, 4))]))
    labels = torch.from_numpy(np.concatenate(label_parts or [np.zeros(0, np.int64)]))
    image_index = torch.repeat_interleave(torch.arange(len(counts)),
                                          torch.tensor(counts, dtype=torch.int64))
    factor = (sizes.to(torch.float64) / original.clamp(min=1))[image_index]  # (N, 2): sy, sx
    boxes = boxes * factor[:, [1, 0, 1, 0]]
    return BoxTable(boxes=boxes.float(), labels=labels, image_index=image_index,
                    image_sizes=sizes)
