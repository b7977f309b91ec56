"""The assembled Faster R-CNN and its criterion.

Data flow (B images, Hf = H/16, A anchors, R proposals, S sampled RoIs, K classes)::

    images [B,3,H,W] -> backbone -> features [B,C,Hf,Wf]
        features -> RPNHead -> pred_rpn_logits [B,A], pred_rpn_deltas [B,A,4]
        anchors [A,4] + rpn outputs -> ProposalGenerator -> proposals [B,R,4] (+ valid)
        (training targets) proposals + GT -> ROISampler -> rois [B,S,4], gt_roi_labels,
                                                           gt_roi_deltas
        features + rois -> ROIHead (RoIPool/RoIAlign -> box head -> predictor)
                        -> pred_roi_logits [B,S,K+1], pred_roi_deltas [B,S,4K]
    outputs + targets -> FasterRCNNCriterion -> loss_rpn_cls, loss_rpn_box, loss_cls, loss_box
    outputs -> FasterRCNN.detect -> per image {boxes [D,4], scores [D], labels [D]}

The model returns raw outputs in train and eval mode alike; losses come from the criterion, so a
validation loss is just the criterion applied in eval mode.
"""

from __future__ import annotations

from torch import Tensor, nn

from detector.modeling.postprocess import DetectionPostprocessor
from detector.modeling.roi_head import ROICriterion, ROIHead, ROISampler
from detector.modeling.rpn import ProposalGenerator, RPNCriterion, RPNHead
from detector.ops.anchors import AnchorGenerator

__all__ = ["LOSS_NAMES", "FasterRCNN", "FasterRCNNCriterion"]

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box")


class FasterRCNN(nn.Module):
    """Faster R-CNN from ready-built parts (see the module docstring for the data flow).

    Args:
        backbone (nn.Module): images ``[B,3,H,W]`` -> features ``[B,C,Hf,Wf]``.
        anchor_generator (AnchorGenerator): anchors for the feature map.
        rpn_head (RPNHead): objectness and deltas per anchor.
        proposal_generator (ProposalGenerator): RPN outputs -> proposals.
        roi_sampler (ROISampler): proposals + GT -> training RoIs and their targets.
        roi_head (ROIHead): RoIs -> class logits and class-specific deltas.
        postprocessor (DetectionPostprocessor): ROI outputs -> detections.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        anchor_generator: AnchorGenerator,
        rpn_head: RPNHead,
        proposal_generator: ProposalGenerator,
        roi_sampler: ROISampler,
        roi_head: ROIHead,
        postprocessor: DetectionPostprocessor,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        self.rpn_head = rpn_head
        self.proposal_generator = proposal_generator
        self.roi_sampler = roi_sampler
        self.roi_head = roi_head
        self.postprocessor = postprocessor

    @property
    def num_classes(self) -> int:
        return self.roi_head.num_classes

    def forward(
        self,
        images: Tensor,
        image_sizes: Tensor,
        targets: dict | None = None,
        *,
        detect: bool | None = None,
        proposals: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Run the network.

        Args:
            images (Tensor[B, 3, H, W]): normalised, padded batch.
            image_sizes (LongTensor[B, 2]): (h, w) of each image before padding.
            targets (dict, optional): ``boxes [B,G,4]``, ``labels [B,G]``, ``box_valid [B,G]``;
                when given, RoIs are sampled and the outputs carry what the criterion needs.
            detect (bool, optional): also score every proposal for detection; defaults to
                ``not self.training``.
            proposals (tuple, optional): external ``(boxes [B,R,4], valid [B,R])`` used instead of
                this model's RPN proposals (4-step training feeds another RPN's proposals).

        Returns:
            dict of raw outputs, ``pred_*`` what the heads predict and ``gt_*`` the training
            targets of the sampled RoIs (the rest are the boxes the stages pass on):
            ``image_sizes``, ``anchors [A,4]``, ``anchor_grid`` (the same anchors as x/y
            intervals, ``AnchorGenerator.grid_intervals``), ``pred_rpn_logits [B,A]``,
            ``pred_rpn_deltas [B,A,4]``, ``proposals [B,R,4]``, ``proposal_valid [B,R]``; with
            targets also ``rois [B,S,4]``, ``roi_valid [B,S]``, ``gt_roi_labels [B,S]``,
            ``gt_roi_deltas [B,S,4]``, ``pred_roi_logits [B,S,K+1]``, ``pred_roi_deltas
            [B,S,4K]``; with detect also ``pred_det_logits [B,R,K+1]``, ``pred_det_deltas
            [B,R,4K]``.
        """
        features = self.backbone(images)
        anchors = self.anchor_generator(features)
        anchor_grid = self.anchor_generator.grid_intervals(features.shape[-2:], device=anchors.device)
        rpn_logits, rpn_deltas = self.rpn_head(features)
        if proposals is None:
            boxes, _, valid = self.proposal_generator(anchors, rpn_logits, rpn_deltas, image_sizes)
        else:
            boxes, valid = proposals
        out = {
            "image_sizes": image_sizes, "anchors": anchors, "anchor_grid": anchor_grid,
            "pred_rpn_logits": rpn_logits,
            "pred_rpn_deltas": rpn_deltas, "proposals": boxes, "proposal_valid": valid,
        }
        if targets is not None:
            sampled = self.roi_sampler(boxes, valid, targets)
            out.update(sampled)
            out["pred_roi_logits"], out["pred_roi_deltas"] = self.roi_head(
                features, sampled["rois"], sampled["roi_valid"]
            )
        if detect if detect is not None else not self.training:
            out["pred_det_logits"], out["pred_det_deltas"] = self.roi_head(features, boxes,
                                                                           valid)
        return out

    def detect(self, outputs: dict, scales: Tensor | None = None) -> list[dict[str, Tensor]]:
        """Detections from outputs of ``forward(..., detect=True)``.

        Args:
            outputs (dict): as returned by ``forward``.
            scales (Tensor[B, 2], optional): (sy, sx) resized/original; boxes come back in original
                pixels when given, else in resized pixels.

        Returns:
            list of B dicts: ``boxes [D,4]`` xyxy, ``scores [D]``, ``labels [D]`` (1..K).
        """
        return self.postprocessor(
            outputs["proposals"], outputs["proposal_valid"], outputs["pred_det_logits"],
            outputs["pred_det_deltas"], outputs["image_sizes"], scales,
        )


class FasterRCNNCriterion(nn.Module):
    """Named losses of both stages, each multiplied by its weight.

    Args:
        rpn (RPNCriterion): RPN objectness and box losses.
        roi (ROICriterion): ROI classification and box losses.
        weights (dict[str, float], optional): per-term multipliers, keys from ``LOSS_NAMES``
            (missing keys weigh 1).
    """

    def __init__(
        self, *, rpn: RPNCriterion, roi: ROICriterion, weights: dict[str, float] | None = None
    ) -> None:
        super().__init__()
        self.rpn = rpn
        self.roi = roi
        weights = dict(weights or {})
        unknown = set(weights) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; known: {LOSS_NAMES}")
        self.weights = {name: float(weights.get(name, 1.0)) for name in LOSS_NAMES}

    def forward(self, outputs: dict, targets: dict) -> dict[str, Tensor]:
        """outputs of ``FasterRCNN.forward(..., targets)`` and the same targets -> losses (float32
        scalars, weighted)."""
        losses = self.rpn(outputs, targets)
        if "pred_roi_logits" in outputs:
            losses.update(self.roi(outputs, targets))
        return {name: value * self.weights[name] for name, value in losses.items()}
