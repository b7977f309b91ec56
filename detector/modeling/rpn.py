"""Region Proposal Network: head, proposal generation and loss.

Shorthand: B images, C feature channels, Hf x Wf feature map, a anchors per cell,
A = Hf * Wf * a anchors per image (location-major, see ``detector.ops.anchors``), P pre-NMS candidates,
R proposals per image (padded, with a validity mask).
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor, nn

from detector.ops.boxes import BoxCoder, clip_boxes, grid_box_iou, remove_small_boxes_mask
from detector.ops.matcher import Matcher
from detector.ops.packing import gather_rows, pack_rows
from detector.ops.targets import assign_targets

__all__ = ["ProposalGenerator", "RPNCriterion", "RPNHead", "anchors_inside"]


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs for objectness (a logits) and box deltas (4a) per cell.

    Args:
        in_channels (int): C, backbone feature channels.
        num_anchors (int): a, anchors per cell.
        conv_channels (int, optional): width of the 3x3 conv; defaults to ``in_channels``.
        objectness_prior (float, optional): initialise the objectness bias so that every anchor
            starts at this foreground probability (0.01 in the Focal Loss paper; needed when the
            focal loss sees every anchor). None keeps a zero bias (p = 0.5).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        conv_channels: int | None = None,
        objectness_prior: float | None = None,
    ) -> None:
        super().__init__()
        width = conv_channels or in_channels
        self.conv = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.objectness = nn.Conv2d(width, num_anchors, kernel_size=1)
        self.deltas = nn.Conv2d(width, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        if objectness_prior is not None:
            if not 0.0 < objectness_prior < 1.0:
                raise ValueError(f"objectness_prior must be in (0, 1), got {objectness_prior}")
            nn.init.constant_(self.objectness.bias, -math.log((1 - objectness_prior) / objectness_prior))

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features (Tensor[B, C, Hf, Wf]) -> logits (Tensor[B, A]), deltas (Tensor[B, A, 4])."""
        x = torch.relu(self.conv(features))
        logits = self.objectness(x).permute(0, 2, 3, 1).flatten(1)
        deltas = self.deltas(x)
        b, _, hf, wf = deltas.shape
        deltas = deltas.view(b, -1, 4, hf, wf).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
        return logits, deltas


def anchors_inside(anchors: Tensor, image_sizes: Tensor, border: float | None = None) -> Tensor:
    """Which anchors may take part in training for each image.

    Args:
        anchors (Tensor[A, 4]): xyxy anchors shared by the batch.
        image_sizes (LongTensor[B, 2]): (h, w) of each image before padding.
        border (float, optional): None keeps anchors whose centre lies inside the image (drops the
            padding); a number t >= 0 keeps anchors lying within the image grown by t pixels on each
            side (the paper ignores cross-boundary anchors: t = 0).

    Returns:
        BoolTensor[B, A].
    """
    h = image_sizes[:, 0, None].to(anchors.dtype)
    w = image_sizes[:, 1, None].to(anchors.dtype)
    if border is None:
        cx = (anchors[:, 0] + anchors[:, 2]) / 2
        cy = (anchors[:, 1] + anchors[:, 3]) / 2
        return (cx >= 0) & (cy >= 0) & (cx < w) & (cy < h)
    return (
        (anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
        & (anchors[:, 2] <= w + border) & (anchors[:, 3] <= h + border)
    )


class ProposalGenerator(nn.Module):
    """Turn RPN outputs into proposals for the whole batch at once.

    decode -> clip -> drop tiny boxes -> pre-NMS top-k -> NMS across images in one
    ``batched_nms`` call (the image index is the group) -> post-NMS top-k, padded per image.

    Args:
        box_coder (BoxCoder): the RPN's coder (weights 1, 1, 1, 1).
        pre_nms_top_n (tuple[int, int]): candidates kept before NMS, (train, test).
        post_nms_top_n (tuple[int, int]): proposals kept after NMS, (train, test).
        nms_threshold (float): IoU threshold of proposal NMS.
        min_size (float): proposals narrower or shorter than this (pixels) are dropped.
        nms_in_training (bool): False skips NMS while training (top-k by score only).
    """

    def __init__(
        self,
        *,
        box_coder: BoxCoder,
        pre_nms_top_n: tuple[int, int] = (12000, 6000),
        post_nms_top_n: tuple[int, int] = (2000, 300),
        nms_threshold: float = 0.7,
        min_size: float = 1e-3,
        nms_in_training: bool = True,
    ) -> None:
        super().__init__()
        self.box_coder = box_coder
        self.pre_nms_top_n = tuple(int(n) for n in pre_nms_top_n)
        self.post_nms_top_n = tuple(int(n) for n in post_nms_top_n)
        self.nms_threshold = float(nms_threshold)
        self.min_size = float(min_size)
        self.nms_in_training = bool(nms_in_training)

    @torch.no_grad()
    def forward(
        self, anchors: Tensor, logits: Tensor, deltas: Tensor, image_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Proposals for a batch.

        Args:
            anchors (Tensor[A, 4]): xyxy anchors shared by the batch.
            logits (Tensor[B, A]): objectness logits.
            deltas (Tensor[B, A, 4]): box deltas.
            image_sizes (LongTensor[B, 2]): (h, w) of each image.

        Returns:
            boxes (Tensor[B, R, 4]): xyxy proposals, best first, padding rows zero.
            scores (Tensor[B, R]): their objectness logits (-inf in padding).
            valid (BoolTensor[B, R]): True for real proposals.
        """
        phase = 0 if self.training else 1
        logits, deltas = logits.detach().float(), deltas.detach().float()
        k = min(self.pre_nms_top_n[phase], logits.shape[1])
        top_logits, top_idx = logits.topk(k, dim=1)  # sorted, best first
        # shape[0], not len(): the ONNX export traces it as the (dynamic) batch size
        boxes = self.box_coder.decode(gather_rows(anchors.expand(logits.shape[0], -1, -1), top_idx),
                                      gather_rows(deltas, top_idx))
        boxes = clip_boxes(boxes, image_sizes)
        keep = remove_small_boxes_mask(boxes, self.min_size) & torch.isfinite(top_logits)
        if self.nms_in_training or not self.training:
            keep = keep & self._nms_mask(boxes, top_logits, keep)
        index, valid = pack_rows(keep, min(self.post_nms_top_n[phase], k))
        boxes = gather_rows(boxes, index) * valid.unsqueeze(-1)
        scores = gather_rows(top_logits, index).masked_fill(~valid, -math.inf)
        return boxes, scores, valid

    def _nms_mask(self, boxes: Tensor, scores: Tensor, candidates: Tensor) -> Tensor:
        """boxes (Tensor[B, P, 4]), scores (Tensor[B, P]), candidates (BoolTensor[B, P]) -> kept mask.

        Non-candidates are put in a group of their own so they suppress nothing.
        """
        batch, num = scores.shape
        image_idx = torch.arange(batch, device=scores.device)[:, None].expand(batch, num)
        groups = torch.where(candidates, image_idx, torch.full_like(image_idx, batch))
        kept = torchvision.ops.batched_nms(
            boxes.reshape(-1, 4), scores.reshape(-1), groups.reshape(-1), self.nms_threshold
        )
        mask = torch.zeros(batch * num, dtype=torch.bool, device=scores.device)
        # scatter, not index_fill(..., True): the latter cannot be traced for the ONNX export
        return mask.scatter(0, kept, torch.ones_like(kept, dtype=torch.bool)).view(batch, num)


class RPNCriterion(nn.Module):
    """RPN losses: anchor targets (match, optional sampling, encode) then objectness and box losses.

    Normalisation: with sampling both terms are divided by the number of sampled anchors (as in
    the paper's N_cls); sampling-free (``num_samples=None``, for focal loss) they are divided by the
    number of positive anchors (the Focal Loss paper's recipe).

    Args:
        matcher (Matcher): anchor/GT IoU matching (paper: fg >= 0.7, bg < 0.3, low-quality on).
        box_coder (BoxCoder): weights (1, 1, 1, 1).
        cls_loss (callable): ``(logits[N], targets[N] float) -> [N]`` per-anchor loss (binary
            cross-entropy or sigmoid focal, see ``detector.ops.losses``).
        num_samples (int, optional): anchors sampled per image (256); None = every non-ignored one.
        positive_fraction (float): foreground share of the sample (0.5).
        box_beta (float): smooth-L1 beta (1/9).
        anchor_border (float, optional): see ``anchors_inside``.
    """

    def __init__(
        self,
        *,
        matcher: Matcher,
        box_coder: BoxCoder,
        cls_loss,
        num_samples: int | None = 256,
        positive_fraction: float = 0.5,
        box_beta: float = 1.0 / 9,
        anchor_border: float | None = None,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.box_coder = box_coder
        self.cls_loss = cls_loss
        self.num_samples = num_samples
        self.positive_fraction = float(positive_fraction)
        self.box_beta = float(box_beta)
        self.anchor_border = anchor_border

    def forward(self, outputs: dict, targets: dict) -> dict[str, Tensor]:
        """outputs: ``anchors [A, 4]``, ``pred_rpn_logits [B, A]``, ``pred_rpn_deltas [B, A, 4]``,
        ``image_sizes [B, 2]``, optionally ``anchor_grid`` (the anchors' x/y intervals: fast
        IoU); targets: ``boxes [B, G, 4]``, ``box_valid [B, G]``.

        Returns: ``{"loss_rpn_cls": Tensor[], "loss_rpn_box": Tensor[]}`` (float32).
        """
        anchors = outputs["anchors"]
        iou = None  # the anchor grid's IoU is computed without expanding pairwise coordinates
        if "anchor_grid" in outputs:
            iou = grid_box_iou(*outputs["anchor_grid"], targets["boxes"], targets["box_valid"])
        assigned = assign_targets(
            anchors, targets["boxes"], targets["box_valid"],
            matcher=self.matcher, box_coder=self.box_coder,
            reference_valid=anchors_inside(anchors, outputs["image_sizes"], self.anchor_border),
            num_samples=self.num_samples, positive_fraction=self.positive_fraction, iou=iou,
        )
        used = (assigned.labels >= 0).float()
        positive = (assigned.labels > 0).float()
        normaliser = (used if self.num_samples is not None else positive).sum().clamp(min=1.0)
        cls = self.cls_loss(outputs["pred_rpn_logits"].flatten(), positive.flatten())
        box = torch.nn.functional.smooth_l1_loss(
            outputs["pred_rpn_deltas"].float(), assigned.deltas, beta=self.box_beta,
            reduction="none"
        ).sum(dim=-1)
        return {
            "loss_rpn_cls": (cls * used.flatten()).sum() / normaliser,
            "loss_rpn_box": (box * positive).sum() / normaliser,
        }
