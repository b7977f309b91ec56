"""Collate dataset samples into the padded Batch of docs/design.md.

Shorthand: B images, G = most boxes in one image of the batch, H/W padded size (multiples of
`size_divisible`), h/w one image's own size.
"""

from __future__ import annotations

import torch
from torch import Tensor


def padded_size(sizes: Tensor, size_divisible: int) -> tuple[int, int]:
    """(H, W): the largest (h, w) in `sizes` (LongTensor[B, 2]) rounded up to the divisor."""
    largest = sizes.max(dim=0).values
    padded = (largest + size_divisible - 1) // size_divisible * size_divisible
    return int(padded[0]), int(padded[1])


def collate_batch(items: list[dict], *, size_divisible: int = 32) -> dict[str, Tensor]:
    """Stack samples into one batch.

    Args:
        items: B samples, each ``{"image": FloatTensor[3, h, w], "boxes": FloatTensor[n, 4],
            "labels": LongTensor[n], "image_id": int, "orig_size": (h, w), "scale": (sy, sx)}``.
        size_divisible: H and W are padded up to multiples of this.

    Returns:
        ``images`` FloatTensor[B, 3, H, W] (zero-padded bottom/right), ``image_sizes``
        LongTensor[B, 2] (h, w), ``boxes`` FloatTensor[B, G, 4] (padding rows 0), ``labels``
        LongTensor[B, G] (padding 0), ``box_valid`` BoolTensor[B, G], ``image_ids`` LongTensor[B],
        ``orig_sizes`` LongTensor[B, 2] (h, w), ``scales`` FloatTensor[B, 2] (sy, sx).
    """
    if not items:
        raise ValueError("collate_batch needs at least one sample")
    sizes = torch.tensor([list(item["image"].shape[-2:]) for item in items], dtype=torch.long)
    height, width = padded_size(sizes, size_divisible)
    first = items[0]["image"]
    images = first.new_zeros((len(items), 3, height, width))
    counts = torch.tensor([len(item["boxes"]) for item in items], dtype=torch.long)
    num_gt = int(counts.max())
    boxes = torch.zeros((len(items), num_gt, 4), dtype=torch.float32)
    labels = torch.zeros((len(items), num_gt), dtype=torch.long)
    for i, (item, n) in enumerate(zip(items, counts.tolist(), strict=True)):
        h, w = item["image"].shape[-2:]
        images[i, :, :h, :w] = item["image"]
        boxes[i, :n] = item["boxes"]
        labels[i, :n] = item["labels"]
    return {
        "images": images,
        "image_sizes": sizes,
        "boxes": boxes,
        "labels": labels,
        "box_valid": torch.arange(num_gt).unsqueeze(0) < counts.unsqueeze(1),
        "image_ids": torch.tensor([int(item["image_id"]) for item in items], dtype=torch.long),
        "orig_sizes": torch.tensor([list(item["orig_size"]) for item in items], dtype=torch.long),
        "scales": torch.tensor([list(item["scale"]) for item in items], dtype=torch.float32),
    }
