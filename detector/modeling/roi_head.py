"""ROI head: proposal sampling for training, RoI pooling + box head + predictor, and its loss.

Shorthand: B images, R proposals per image (padded), G ground-truth boxes per image (padded),
S sampled RoIs per image (padded), K foreground classes (K + 1 logits with background 0),
C feature channels, P x P pooled resolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.errors import OptionError
from detector.ops.boxes import BoxCoder
from detector.ops.hard_examples import hard_example_mask
from detector.ops.matcher import Matcher
from detector.ops.packing import gather_rows, pack_rows, use_compaction
from detector.ops.targets import assign_targets

__all__ = ["ROICriterion", "ROIHead", "ROISampler"]


class ROISampler(nn.Module):
    """Choose the RoIs the ROI head trains on and their targets.

    Ground-truth boxes are appended to the proposals, every candidate is matched to the ground
    truth, and ``num_samples`` per image are drawn with at most ``positive_fraction`` foreground
    (paper: 128 of them at 0.25; 512 here by default as in later implementations). With
    ``num_samples=None`` every non-ignored candidate is kept (sampling-free focal loss, or online
    hard example mining: ``ROICriterion(hard_examples=...)`` then picks the RoIs the loss counts).

    Args:
        matcher (Matcher): proposal/GT matching, e.g. fg IoU >= 0.5, bg in [0.0, 0.5).
        box_coder (BoxCoder): weights (10, 10, 5, 5).
        num_samples (int, optional): RoIs per image, or None for all.
        positive_fraction (float): largest foreground share of the sample.
        append_gt (bool): add the ground-truth boxes to the candidates.
    """

    def __init__(
        self,
        *,
        matcher: Matcher,
        box_coder: BoxCoder,
        num_samples: int | None = 512,
        positive_fraction: float = 0.25,
        append_gt: bool = True,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.box_coder = box_coder
        self.num_samples = num_samples
        self.positive_fraction = float(positive_fraction)
        self.append_gt = bool(append_gt)

    @torch.no_grad()
    def forward(
        self, proposals: Tensor, proposal_valid: Tensor, targets: dict
    ) -> dict[str, Tensor]:
        """Sample RoIs.

        Args:
            proposals (Tensor[B, R, 4]): xyxy proposals (detached).
            proposal_valid (BoolTensor[B, R]): False for padding.
            targets (dict): ``boxes [B, G, 4]``, ``labels [B, G]``, ``box_valid [B, G]``.

        Returns:
            dict with ``rois [B, S, 4]``, ``roi_valid [B, S]`` and their targets,
            ``gt_roi_labels [B, S]`` (0..K, -1 in padding) and ``gt_roi_deltas [B, S, 4]`` (zero
            unless foreground).
        """
        candidates, valid = proposals.float(), proposal_valid
        if self.append_gt:
            candidates = torch.cat((candidates, targets["boxes"].float()), dim=1)
            valid = torch.cat((valid, targets["box_valid"]), dim=1)
        assigned = assign_targets(
            candidates, targets["boxes"], targets["box_valid"],
            matcher=self.matcher, box_coder=self.box_coder, gt_labels=targets["labels"],
            reference_valid=valid, num_samples=self.num_samples,
            positive_fraction=self.positive_fraction,
        )
        capacity = candidates.shape[1] if self.num_samples is None else self.num_samples
        index, roi_valid = pack_rows(assigned.labels >= 0, min(capacity, candidates.shape[1]))
        return {
            "rois": gather_rows(candidates, index),
            "roi_valid": roi_valid,
            "gt_roi_labels": gather_rows(assigned.labels, index).masked_fill(~roi_valid, -1),
            "gt_roi_deltas": gather_rows(assigned.deltas, index),
        }


class ROIHead(nn.Module):
    """RoI pooling -> box head -> class scores (K + 1) and class-specific deltas (4K).

    Args:
        pooler (nn.Module): ``RoIPool`` (paper) or ``RoIAlign`` (``detector.modeling.pooler``),
            called as ``pooler(features, rois[M, 5])`` with rows ``(image index, x1, y1, x2, y2)``
            and its ``spatial_scale`` set to 1 / stride (``build_model`` sets it).
        box_head (nn.Module): pooled ``[M, C, P, P]`` -> ``[M, box_head.out_features]``.
        num_classes (int): K, foreground classes.
        compact (bool, optional): pool and score only the valid RoIs when ``forward`` is given a
            validity mask (one host sync; padding rows of the outputs are then zero). None
            (default) compacts on the CPU only and never while exporting; False keeps the
            fixed-size padded path (no host sync, what CUDA and export use).

    Pooling runs in float32 so that RoI coordinates are never rounded to half precision (bf16
    holds integers exactly only up to 256); the pooled features come back in the features' dtype.
    """

    def __init__(
        self, *, pooler: nn.Module, box_head: nn.Module, num_classes: int,
        compact: bool | None = None,
    ) -> None:
        super().__init__()
        self.compact = compact
        self.pooler = pooler
        self.box_head = box_head
        self.num_classes = int(num_classes)
        self.cls_score = nn.Linear(box_head.out_features, num_classes + 1)
        self.bbox_pred = nn.Linear(box_head.out_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(
        self, features: Tensor, rois: Tensor, valid: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Score RoIs.

        Args:
            features (Tensor[B, C, Hf, Wf]): backbone features.
            rois (Tensor[B, S, 4]): xyxy RoIs, image pixels.
            valid (BoolTensor[B, S], optional): False for padding rows; lets ``compact`` skip them.

        Returns:
            logits (Tensor[B, S, K + 1]), deltas (Tensor[B, S, 4K]); rows where ``valid`` is False
            hold zeros when compacted, unspecified values otherwise.
        """
        batch, num = rois.shape[:2]
        rois = rois.float()  # never round box coordinates to the features' (half) precision
        image_idx = torch.arange(batch, device=rois.device, dtype=rois.dtype)
        flat = torch.cat((image_idx[:, None, None].expand(batch, num, 1), rois), dim=2)
        flat = flat.reshape(-1, 5)
        if valid is None or not use_compaction(self.compact, rois.device):
            logits, deltas = self._predict(features, flat)
        else:
            rows = valid.reshape(-1).nonzero().squeeze(1)  # the one host sync
            logits, deltas = self._predict(features, flat.index_select(0, rows))
            logits = logits.new_zeros(batch * num, logits.shape[1]).index_copy(0, rows, logits)
            deltas = deltas.new_zeros(batch * num, deltas.shape[1]).index_copy(0, rows, deltas)
        return logits.view(batch, num, logits.shape[-1]), deltas.view(batch, num, deltas.shape[-1])

    def _predict(self, features: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """features (Tensor[B, C, Hf, Wf]), rois (Tensor[M, 5]) rows ``(image, x1, y1, x2, y2)`` ->
        logits (Tensor[M, K + 1]), deltas (Tensor[M, 4K])."""
        pooled = self.pooler(features.float(), rois).to(features.dtype)
        x = self.box_head(pooled)
        return self.cls_score(x), self.bbox_pred(x)


class ROICriterion(nn.Module):
    """ROI losses on the sampled RoIs: classification over K + 1 classes and smooth-L1 on the
    deltas of the ground-truth class of foreground RoIs.

    Normalisation: with a sampler both terms are divided by the number of sampled RoIs; with
    ``normalize_by_positives=True`` (sampling-free focal loss) by the number of foreground RoIs.

    Online hard example mining (``hard_examples=N``; Shrivastava et al. 2016): the sampler keeps
    every proposal, each RoI's classification + box loss (detached) ranks it, an NMS at
    ``hard_nms_iou`` over each image's RoIs scored by that loss drops near-duplicates, and the
    ``N`` hardest survivors per image are the ones the loss counts (``detector.ops.hard_examples``).
    Both terms are then divided by the number of kept RoIs (by the kept foreground ones with
    ``normalize_by_positives``), and only the kept RoIs receive a gradient. Needs the
    outputs' ``rois``.

    Args:
        cls_loss (callable): ``(logits[N, K+1], targets[N] long) -> [N]`` (cross-entropy or
            softmax focal, see ``detector.ops.losses``).
        box_beta (float): smooth-L1 beta (1.0).
        normalize_by_positives (bool): see above.
        hard_examples (int, optional): RoIs per image kept by hard example mining; None: off
            (every sampled RoI counts).
        hard_nms_iou (float): IoU above which a RoI is dropped next to a harder one (0.7).
    """

    def __init__(self, *, cls_loss, box_beta: float = 1.0, normalize_by_positives: bool = False,
                 hard_examples: int | None = None, hard_nms_iou: float = 0.7):
        super().__init__()
        if hard_examples is not None and (isinstance(hard_examples, bool)
                                          or int(hard_examples) != hard_examples
                                          or hard_examples < 1):
            raise OptionError("hard_examples", f"hard_examples must be a positive integer or "
                              f"None, got {hard_examples!r}")
        if not 0.0 < hard_nms_iou <= 1.0:
            raise OptionError("hard_nms_iou", f"hard_nms_iou must be in (0, 1], got "
                              f"{hard_nms_iou!r}")
        self.cls_loss = cls_loss
        self.box_beta = float(box_beta)
        self.normalize_by_positives = bool(normalize_by_positives)
        self.hard_examples = None if hard_examples is None else int(hard_examples)
        self.hard_nms_iou = float(hard_nms_iou)

    def forward(self, outputs: dict, targets: dict | None = None) -> dict[str, Tensor]:
        """outputs: ``pred_roi_logits [B, S, K+1]``, ``pred_roi_deltas [B, S, 4K]``,
        ``gt_roi_labels [B, S]``, ``gt_roi_deltas [B, S, 4]`` (and ``rois [B, S, 4]`` with
        ``hard_examples``). Returns ``{"loss_cls", "loss_box"}`` (float32)."""
        labels = outputs["gt_roi_labels"]
        used = labels >= 0
        logits = outputs["pred_roi_logits"]
        cls = self.cls_loss(logits.reshape(-1, logits.shape[-1]), labels.clamp(min=0).flatten())
        cls = cls.view(labels.shape)
        deltas = outputs["pred_roi_deltas"].float().unflatten(-1, (-1, 4))  # [B, S, K, 4]
        class_idx = (labels - 1).clamp(min=0)
        own = deltas.gather(2, class_idx[..., None, None].expand(*labels.shape, 1, 4)).squeeze(2)
        box = torch.nn.functional.smooth_l1_loss(
            own, outputs["gt_roi_deltas"].float(), beta=self.box_beta, reduction="none"
        ).sum(dim=-1)
        box = torch.where(labels > 0, box, 0.0)
        if self.hard_examples is not None:
            used = hard_example_mask(outputs["rois"], cls + box, used, num=self.hard_examples,
                                     iou_threshold=self.hard_nms_iou)
        positive = used & (labels > 0)
        count = positive if self.normalize_by_positives else used
        normaliser = count.float().sum().clamp(min=1.0)
        return {
            "loss_cls": torch.where(used, cls, 0.0).sum() / normaliser,
            "loss_box": torch.where(positive, box, 0.0).sum() / normaliser,
        }
