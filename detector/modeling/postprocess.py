"""Detection post-processing for the whole batch: softmax, per-class decode, clip, score threshold,
class-wise NMS, top-k per image, and the mapping back to original-image pixels.

Shorthand: B images, R RoIs per image, K foreground classes, D detections per image.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from detector.ops.boxes import BoxCoder, clip_boxes
from detector.ops.packing import gather_rows, pack_rows, use_compaction

__all__ = ["DetectionPostprocessor", "boxes_to_original"]


def boxes_to_original(boxes: Tensor, scales: Tensor) -> Tensor:
    """boxes (Tensor[B, D, 4]) xyxy resized pixels, scales (Tensor[B, 2]) (sy, sx) resized/original
    -> (Tensor[B, D, 4]) xyxy original pixels."""
    sy, sx = scales[:, 0].to(boxes.dtype), scales[:, 1].to(boxes.dtype)
    return boxes / torch.stack((sx, sy, sx, sy), dim=-1)[:, None, :]


def _by_score(scores: Tensor) -> Tensor:
    """(LongTensor[B, N]): each row's indices by descending score. Stable (ties keep their
    order, so the compact and padded paths pick the same detections), except while exporting
    to ONNX, whose exporter has no stable sort (ONNX TopK)."""
    if torch.onnx.is_in_onnx_export():
        return scores.argsort(dim=1, descending=True)
    return scores.argsort(dim=1, descending=True, stable=True)


def image_offset(batch: int, stride: int, like: Tensor) -> Tensor:
    """(LongTensor[B, 1]): image index * stride, to make per-image group ids unique."""
    return torch.arange(batch, device=like.device)[:, None] * stride


class DetectionPostprocessor(nn.Module):
    """Raw ROI outputs -> final detections per image.

    Args:
        box_coder (BoxCoder): the ROI head's coder (weights 10, 10, 5, 5).
        score_threshold (float): drop class scores below this (0.05).
        nms_threshold (float): class-wise NMS IoU (0.5).
        max_detections (int): detections kept per image (100).
        min_size (float): drop boxes narrower/shorter than this many pixels.
        compact (bool, optional): score only the valid RoIs (packed to the largest valid count
            of the batch, one host sync) instead of every padded slot. None (default) compacts on
            the CPU only and never while exporting; the detections are the same either way.
    """

    def __init__(
        self,
        *,
        box_coder: BoxCoder,
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        max_detections: int = 100,
        min_size: float = 1e-2,
        compact: bool | None = None,
    ) -> None:
        super().__init__()
        self.compact = compact
        self.box_coder = box_coder
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_detections = int(max_detections)
        self.min_size = float(min_size)

    @torch.no_grad()
    def forward(
        self,
        rois: Tensor,
        roi_valid: Tensor,
        logits: Tensor,
        deltas: Tensor,
        image_sizes: Tensor,
        scales: Tensor | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections for a batch.

        Args:
            rois (Tensor[B, R, 4]): xyxy RoIs the head scored, resized pixels.
            roi_valid (BoolTensor[B, R]): False for padding.
            logits (Tensor[B, R, K + 1]): class logits, background first.
            deltas (Tensor[B, R, 4K]): class-specific deltas.
            image_sizes (LongTensor[B, 2]): (h, w) resized.
            scales (Tensor[B, 2], optional): (sy, sx) resized/original; None keeps resized pixels.

        Returns:
            list of B dicts: ``boxes [D, 4]`` xyxy, ``scores [D]``, ``labels [D]`` (1..K), best first.
        """
        if use_compaction(self.compact, logits.device):
            rois, roi_valid, logits, deltas = self._compact(rois, roi_valid, logits, deltas)
        boxes, scores, labels, valid = self.padded(rois, roi_valid, logits, deltas, image_sizes)
        if scales is not None:
            boxes = boxes_to_original(boxes, scales)
        counts = valid.sum(dim=1).tolist()
        return [
            {"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]}
            for i, n in enumerate(counts)
        ]

    @torch.no_grad()
    def padded(
        self, rois: Tensor, roi_valid: Tensor, logits: Tensor, deltas: Tensor, image_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Detections as fixed-size padded tensors (no host sync: the ONNX export's outputs).

        Arguments as in ``forward``. Returns, with D = min(max_detections, R * K):
        boxes (Tensor[B, D, 4]) xyxy resized pixels, scores (Tensor[B, D]), labels
        (LongTensor[B, D]) 1..K, valid (BoolTensor[B, D]); the valid rows of each image come
        first, best first, and padding rows hold whatever the packing left there.
        """
        batch, num, k1 = logits.shape
        scores = torch.softmax(logits.float(), dim=-1)[..., 1:]  # [B, R, K]
        boxes = self.box_coder.decode(rois[:, :, None, :], deltas.float().unflatten(-1, (-1, 4)))
        boxes = clip_boxes(boxes.reshape(batch, -1, 4), image_sizes)  # [B, R*K, 4]
        scores = scores.reshape(batch, -1)
        labels = torch.arange(1, k1, device=logits.device).repeat(batch, num)
        wh = boxes[..., 2:] - boxes[..., :2]
        keep = (
            (scores > self.score_threshold)
            & roi_valid.repeat_interleave(k1 - 1, dim=1)
            & (wh >= self.min_size).all(dim=-1)
        )
        keep = keep & self._nms_mask(boxes, scores, labels + image_offset(batch, k1, labels), keep)
        # order by score within each image, then pack the best ``max_detections``
        order = _by_score(scores.masked_fill(~keep, -1.0))
        keep, boxes = keep.gather(1, order), gather_rows(boxes, order)
        scores, labels = scores.gather(1, order), labels.gather(1, order)
        index, valid = pack_rows(keep, min(self.max_detections, keep.shape[1]))
        return (gather_rows(boxes, index), scores.gather(1, index), labels.gather(1, index),
                valid)

    @staticmethod
    def _compact(
        rois: Tensor, roi_valid: Tensor, logits: Tensor, deltas: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Move each image's valid rows to the front, in order, and drop the slots no image uses:
        ``R`` becomes the largest valid count of the batch (one host sync)."""
        index, valid = pack_rows(roi_valid, int(roi_valid.sum(dim=1).max()))
        return (gather_rows(rois, index), valid, gather_rows(logits, index),
                gather_rows(deltas, index))

    def _nms_mask(self, boxes: Tensor, scores: Tensor, groups: Tensor, keep: Tensor) -> Tensor:
        """NMS of every image and class in one ``batched_nms`` call over the ``keep`` candidates.

        boxes (Tensor[B, N, 4]), scores (Tensor[B, N]), groups (LongTensor[B, N]) unique per
        (image, class), keep (BoolTensor[B, N]) -> (BoolTensor[B, N]) survivors.
        """
        batch, num = scores.shape
        groups = groups[keep]
        flat_idx = keep.reshape(-1).nonzero().squeeze(1)
        kept = torchvision.ops.batched_nms(
            boxes.reshape(-1, 4)[flat_idx], scores.reshape(-1)[flat_idx], groups, self.nms_threshold
        )
        mask = torch.zeros(batch * num, dtype=torch.bool, device=scores.device)
        kept = flat_idx[kept]  # scatter, not index_fill(..., True): the latter cannot be traced to ONNX
        return mask.scatter(0, kept, torch.ones_like(kept, dtype=torch.bool)).view(batch, num)
