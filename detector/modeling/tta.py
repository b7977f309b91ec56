"""Test-time augmentation by horizontal flip: the model runs on the batch and on its mirror, and
the two passes' scored RoIs are merged per image before the post-processing's class-wise NMS and
``max_detections``, which then run once.

The flipped pass's RoIs are un-flipped (``x1' = W - x2``, ``x2' = W - x1`` with ``W`` each image's
own width) and their class-specific ``dx`` deltas negated, which un-flips the boxes they decode to
exactly (decoding, clipping and the size filter are mirror-symmetric). Shorthand: B images,
R RoIs per image, K foreground classes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["forward_with_flip", "flip_images", "merge_flipped", "unflip_boxes"]


def flip_images(images: Tensor, image_sizes: Tensor) -> Tensor:
    """images (Tensor[B, C, H, W]) padded on the right/bottom, image_sizes (LongTensor[B, 2])
    (h, w) -> (Tensor[B, C, H, W]) each image mirrored within its own width (padding stays)."""
    width = images.shape[-1]
    cols = torch.arange(width, device=images.device)[None, :]  # [1, W]
    widths = image_sizes[:, 1:2].to(images.device)  # [B, 1]
    index = torch.where(cols < widths, widths - 1 - cols, cols)  # [B, W]
    index = index[:, None, None, :].expand_as(images)
    return images.gather(-1, index)


def unflip_boxes(boxes: Tensor, widths: Tensor) -> Tensor:
    """boxes (Tensor[B, R, 4]) xyxy in a mirrored image, widths (Tensor[B]) each image's width
    -> (Tensor[B, R, 4]) the same boxes in the image itself: ``(W - x2, y1, W - x1, y2)``."""
    w = widths.to(boxes.dtype)[:, None]
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((w - x2, y1, w - x1, y2), dim=-1)


def merge_flipped(outputs: dict, flipped: dict) -> dict:
    """One pass's raw detection outputs with the mirrored pass's, per image.

    Args:
        outputs, flipped (dict): ``FasterRCNN.forward(..., detect=True)`` of the batch and of
            ``flip_images`` of it: ``proposals [B, R, 4]``, ``proposal_valid [B, R]``,
            ``pred_det_logits [B, R, K + 1]``, ``pred_det_deltas [B, R, 4K]``, ``image_sizes``.

    Returns:
        dict with those keys, R doubled (the original's RoIs first), the mirrored RoIs un-flipped
        and their ``dx`` deltas negated; ``FasterRCNN.detect`` takes it.
    """
    deltas = flipped["pred_det_deltas"].unflatten(-1, (-1, 4))
    sign = deltas.new_tensor([-1.0, 1.0, 1.0, 1.0])
    widths = outputs["image_sizes"][:, 1]
    return {
        "image_sizes": outputs["image_sizes"],
        "proposals": torch.cat(
            (outputs["proposals"], unflip_boxes(flipped["proposals"], widths)), dim=1),
        "proposal_valid": torch.cat((outputs["proposal_valid"], flipped["proposal_valid"]), dim=1),
        "pred_det_logits": torch.cat(
            (outputs["pred_det_logits"], flipped["pred_det_logits"]), dim=1),
        "pred_det_deltas": torch.cat(
            (outputs["pred_det_deltas"], (deltas * sign).flatten(-2)), dim=1),
    }


def forward_with_flip(model: nn.Module, images: Tensor, image_sizes: Tensor) -> dict:
    """``model(images, image_sizes, detect=True)`` (a ``FasterRCNN``) merged with the same of
    the mirrored batch (``merge_flipped``): ``model.detect`` of it gives the TTA detections."""
    outputs = model(images, image_sizes, detect=True)
    flipped = model(flip_images(images, image_sizes), image_sizes, detect=True)
    return merge_flipped(outputs, flipped)
