"""Detection post-processing for the whole batch: softmax, per-class decode, clip, score threshold,
class-wise NMS, top-k per image, and the mapping back to original-image pixels.

Shorthand: B images, R RoIs per image, K foreground classes, D detections per image.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn

from detector.errors import OptionError
from detector.ops.boxes import BoxCoder, clip_boxes
from detector.ops.packing import gather_rows, pack_rows, use_compaction

__all__ = ["NMS_KINDS", "DetectionPostprocessor", "boxes_to_original", "soft_nms"]


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


NMS_KINDS = ("hard", "linear", "gaussian")


def _pair_iou(picked: Tensor, boxes: Tensor) -> Tensor:
    """picked (Tensor[G, 4]), boxes (Tensor[G, M, 4]) xyxy -> (Tensor[G, M]) IoU of each row's
    boxes with that row's picked box."""
    lt = torch.maximum(picked[:, None, :2], boxes[..., :2])
    rb = torch.minimum(picked[:, None, 2:], boxes[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area = (boxes[..., 2:] - boxes[..., :2]).prod(dim=-1)
    area_p = (picked[:, 2:] - picked[:, :2]).prod(dim=-1)[:, None]
    return inter / (area + area_p - inter).clamp(min=1e-12)


def soft_nms(boxes: Tensor, scores: Tensor, groups: Tensor, *, method: str, iou_threshold: float,
             sigma: float, min_score: float) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017) of every group at once.

    Each step picks the best remaining box of every group and decays the scores of the group's
    other remaining boxes by their IoU ``o`` with it: ``linear`` multiplies by ``1 - o`` where
    ``o > iou_threshold``, ``gaussian`` by ``exp(-o**2 / sigma)``; a box whose score falls below
    ``min_score`` is dropped. The loop runs over picks (the largest group's size), each step a
    few tensor operations over all groups.

    Args:
        boxes (Tensor[N, 4]) xyxy, scores (Tensor[N]), groups (LongTensor[N]) (image, class) ids.

    Returns:
        keep (BoolTensor[N]) the survivors, scores (Tensor[N]) their decayed scores (the
        dropped ones' are left as given).
    """
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device), scores
    _, dense = torch.unique(groups, return_inverse=True)
    order = _by_score(scores[None])[0]
    order = order[torch.sort(dense[order], stable=True).indices]  # by group, best first
    dense_sorted = dense[order]
    counts = torch.bincount(dense_sorted)
    starts = counts.cumsum(0) - counts
    col = torch.arange(n, device=scores.device) - starts[dense_sorted]
    g, m = counts.shape[0], int(counts.max())
    cur = scores.new_zeros(g, m)
    cur[dense_sorted, col] = scores[order].to(cur.dtype)
    box = boxes.new_zeros(g, m, 4)
    box[dense_sorted, col] = boxes[order]
    alive = torch.zeros(g, m, dtype=torch.bool, device=scores.device)
    alive[dense_sorted, col] = True
    alive &= cur >= min_score
    kept = torch.zeros_like(alive)
    rows = torch.arange(g, device=scores.device)
    for _ in range(m):
        pick = cur.masked_fill(~alive, -1.0).argmax(dim=1)  # [G]
        has = alive[rows, pick]
        kept[rows, pick] |= has
        alive[rows, pick] = False
        iou = _pair_iou(box[rows, pick], box)
        if method == "linear":
            weight = torch.where(iou > iou_threshold, 1.0 - iou, torch.ones_like(iou))
        else:
            weight = torch.exp(-(iou * iou) / sigma)
        cur = torch.where(alive & has[:, None], cur * weight, cur)
        alive &= cur >= min_score
    keep = torch.zeros(n, dtype=torch.bool, device=scores.device)
    keep[order] = kept[dense_sorted, col]
    new_scores = scores.clone()
    new_scores[order] = cur[dense_sorted, col].to(scores.dtype)
    return keep, new_scores


class DetectionPostprocessor(nn.Module):
    """Raw ROI outputs -> final detections per image.

    Args:
        box_coder (BoxCoder): the ROI head's coder (weights 10, 10, 5, 5).
        score_threshold (float): drop class scores below this (0.05).
        nms_threshold (float): class-wise NMS IoU (0.5).
        max_detections (int): detections kept per image (100).
        nms (str): ``hard`` (default: drop same-class boxes with IoU > ``nms_threshold``),
            ``linear`` or ``gaussian`` Soft-NMS (Bodla et al. 2017; see ``soft_nms``), which
            lowers their scores instead. Soft-NMS cannot be exported to ONNX.
        soft_nms_sigma (float): the Gaussian's sigma (0.5), > 0.
        soft_nms_min_score (float): Soft-NMS drops boxes whose decayed score falls below (0.001).
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
        nms: str = "hard",
        soft_nms_sigma: float = 0.5,
        soft_nms_min_score: float = 1e-3,
    ) -> None:
        super().__init__()
        if nms not in NMS_KINDS:
            raise OptionError("nms", f"nms must be one of {', '.join(NMS_KINDS)}, got {nms!r}")
        if not soft_nms_sigma > 0:
            raise OptionError("soft_nms_sigma",
                              f"soft_nms_sigma must be > 0, got {soft_nms_sigma!r}")
        self.nms = nms
        self.soft_nms_sigma = float(soft_nms_sigma)
        self.soft_nms_min_score = float(soft_nms_min_score)
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
        groups = labels + image_offset(batch, k1, labels)
        if self.nms == "hard":
            keep = keep & self._nms_mask(boxes, scores, groups, keep)
        else:
            keep, scores = self._soft_nms(boxes, scores, groups, keep)
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

    def _soft_nms(self, boxes: Tensor, scores: Tensor, groups: Tensor, keep: Tensor
                  ) -> tuple[Tensor, Tensor]:
        """Soft-NMS of the ``keep`` candidates (arguments as in ``_nms_mask``) -> the survivors
        (BoolTensor[B, N]) and the scores (Tensor[B, N]) with the survivors' decayed."""
        if torch.onnx.is_in_onnx_export():
            raise OptionError("nms", f"nms={self.nms} (Soft-NMS) cannot be exported to ONNX: "
                                     f"export a model with model.nms=hard")
        flat_idx = keep.reshape(-1).nonzero().squeeze(1)
        kept, decayed = soft_nms(
            boxes.reshape(-1, 4)[flat_idx], scores.reshape(-1)[flat_idx], groups.reshape(-1)[flat_idx],
            method=self.nms, iou_threshold=self.nms_threshold, sigma=self.soft_nms_sigma,
            min_score=self.soft_nms_min_score)
        new_keep = torch.zeros_like(keep).reshape(-1)
        new_keep[flat_idx] = kept
        new_scores = scores.reshape(-1).clone()
        new_scores[flat_idx] = decayed
        return new_keep.view_as(keep), new_scores.view_as(scores)

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
