"""Assemble a Faster R-CNN and its criterion from plain values and ready-built modules.

These two functions are what configs instantiate (``_target_: detector.modeling.build_model``);
everything they take is a number, a tuple, or a module/callable built beforehand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from detector.modeling.faster_rcnn import FasterRCNN, FasterRCNNCriterion
from detector.modeling.postprocess import DetectionPostprocessor
from detector.modeling.roi_head import ROICriterion, ROIHead, ROISampler
from detector.modeling.rpn import ProposalGenerator, RPNCriterion, RPNHead
from detector.ops.anchors import AnchorGenerator
from detector.ops.boxes import BoxCoder
from detector.ops.matcher import Matcher

__all__ = ["ROI_BOX_WEIGHTS", "RPN_BOX_WEIGHTS", "build_criterion", "build_model"]

RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def _interval_matcher(bg_low: float, fg: float, *, low_quality: bool) -> Matcher:
    """fg IoU >= ``fg``; bg in [``bg_low``, ``fg``); anything below ``bg_low`` ignored."""
    if bg_low <= 0.0:
        return Matcher(thresholds=(fg,), labels=(0, 1), allow_low_quality_matches=low_quality)
    return Matcher(thresholds=(bg_low, fg), labels=(-1, 0, 1), allow_low_quality_matches=low_quality)


def _fit_pooler_scale(pooler: nn.Module, stride: int) -> None:
    """Set a pooler's missing ``spatial_scale`` to 1 / ``stride``; refuse one that differs."""
    scale = getattr(pooler, "spatial_scale", None)
    if scale is None:
        pooler.spatial_scale = 1.0 / stride
    elif abs(scale * stride - 1.0) > 1e-6:
        raise ValueError(f"pooler spatial_scale {scale} does not match the backbone's stride "
                         f"{stride} (it must be 1/{stride} = {1 / stride}; leave it out and "
                         f"build_model derives it)")


def build_model(
    *,
    backbone: nn.Module,
    box_head: nn.Module,
    pooler: nn.Module,
    num_classes: int,
    anchor_sizes: Sequence[float] = (128, 256, 512),
    anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    anchor_offset: float = 0.0,
    rpn_conv_channels: int | None = None,
    rpn_objectness_prior: float | None = None,
    rpn_pre_nms_top_n: Sequence[int] = (12000, 6000),
    rpn_post_nms_top_n: Sequence[int] = (2000, 300),
    rpn_nms_threshold: float = 0.7,
    rpn_min_size: float = 1e-3,
    rpn_nms_in_training: bool = True,
    roi_fg_iou: float = 0.5,
    roi_bg_iou_low: float = 0.0,
    roi_num_samples: int | None = 512,
    roi_positive_fraction: float = 0.25,
    score_threshold: float = 0.05,
    nms_threshold: float = 0.5,
    max_detections: int = 100,
    nms: str = "hard",
    soft_nms_sigma: float = 0.5,
    soft_nms_min_score: float = 1e-3,
    compact_rois: bool | None = None,
    compile: bool = False,
) -> FasterRCNN:
    """Faster R-CNN with the paper's defaults; see each part's class for the meaning of a value.

    ``backbone`` must expose ``out_channels`` and ``stride``. ``pooler`` is a RoI pooler
    (``detector.modeling.pooler.RoIPool``/``RoIAlign``, or torchvision's); its ``spatial_scale``
    is derived here, set to ``1 / backbone.stride`` when it has none, and checked against the
    stride when it has one (torchvision's poolers, checkpoints of runs whose configs still spelt
    it out). ``box_head`` maps pooled features to ``box_head.out_features``. ``roi_num_samples=None`` keeps
    every proposal (sampling-free focal loss).

    ``nms``: ``hard`` | ``linear`` | ``gaussian`` (Soft-NMS, with ``soft_nms_sigma`` and
    ``soft_nms_min_score``; see ``DetectionPostprocessor``).
    ``compact_rois``: the ROI head and post-processing skip padding RoI slots (None: on the CPU
    only, never while exporting; False: always the fixed-size padded path, sync-free on CUDA).
    ``compile``: ``torch.compile`` the backbone, the RPN head and the box head in place
    (``nn.Module.compile``: parameter names and checkpoints are unchanged); compilation happens on
    the first forward pass.
    """
    _fit_pooler_scale(pooler, backbone.stride)
    anchors = AnchorGenerator(
        sizes=anchor_sizes, ratios=anchor_ratios, stride=backbone.stride, offset=anchor_offset
    )
    roi_coder = BoxCoder(weights=ROI_BOX_WEIGHTS)
    model = FasterRCNN(
        backbone=backbone,
        anchor_generator=anchors,
        rpn_head=RPNHead(
            in_channels=backbone.out_channels, num_anchors=anchors.num_anchors_per_location,
            conv_channels=rpn_conv_channels, objectness_prior=rpn_objectness_prior,
        ),
        proposal_generator=ProposalGenerator(
            box_coder=BoxCoder(weights=RPN_BOX_WEIGHTS), pre_nms_top_n=tuple(rpn_pre_nms_top_n),
            post_nms_top_n=tuple(rpn_post_nms_top_n), nms_threshold=rpn_nms_threshold,
            min_size=rpn_min_size, nms_in_training=rpn_nms_in_training,
        ),
        roi_sampler=ROISampler(
            matcher=_interval_matcher(roi_bg_iou_low, roi_fg_iou, low_quality=False),
            box_coder=roi_coder, num_samples=roi_num_samples,
            positive_fraction=roi_positive_fraction,
        ),
        roi_head=ROIHead(
            pooler=pooler, box_head=box_head, num_classes=num_classes, compact=compact_rois
        ),
        postprocessor=DetectionPostprocessor(
            box_coder=roi_coder, score_threshold=score_threshold, nms_threshold=nms_threshold,
            max_detections=max_detections, compact=compact_rois, nms=nms,
            soft_nms_sigma=soft_nms_sigma, soft_nms_min_score=soft_nms_min_score,
        ),
    )
    if compile:
        for part in (model.backbone, model.rpn_head, model.roi_head.box_head):
            part.compile()
    return model


def build_criterion(
    *,
    rpn_cls_loss: Callable,
    roi_cls_loss: Callable,
    rpn_fg_iou: float = 0.7,
    rpn_bg_iou: float = 0.3,
    rpn_num_samples: int | None = 256,
    rpn_positive_fraction: float = 0.5,
    rpn_box_beta: float = 1.0 / 9,
    anchor_border: float | None = None,
    roi_box_beta: float = 1.0,
    roi_normalize_by_positives: bool = False,
    roi_hard_examples: int | None = None,
    roi_hard_nms_iou: float = 0.7,
    weights: dict[str, float] | None = None,
) -> FasterRCNNCriterion:
    """The four losses. ``rpn_num_samples=None`` trains the RPN sampling-free on every non-ignored
    anchor (pair it with a focal ``rpn_cls_loss`` and ``rpn_objectness_prior=0.01``).
    ``roi_hard_examples=N`` turns on online hard example mining in the ROI head: the loss counts
    the N hardest RoIs per image after an NMS at ``roi_hard_nms_iou`` on their losses (pair it
    with a model that keeps every proposal, ``build_model(roi_num_samples=None)``; see
    ``ROICriterion``). The RPN keeps its own sampling either way."""
    rpn_matcher = Matcher(
        thresholds=(rpn_bg_iou, rpn_fg_iou), labels=(0, -1, 1), allow_low_quality_matches=True
    )
    return FasterRCNNCriterion(
        rpn=RPNCriterion(
            matcher=rpn_matcher, box_coder=BoxCoder(weights=RPN_BOX_WEIGHTS),
            cls_loss=rpn_cls_loss, num_samples=rpn_num_samples,
            positive_fraction=rpn_positive_fraction, box_beta=rpn_box_beta,
            anchor_border=anchor_border,
        ),
        roi=ROICriterion(
            cls_loss=roi_cls_loss, box_beta=roi_box_beta,
            normalize_by_positives=roi_normalize_by_positives,
            hard_examples=roi_hard_examples, hard_nms_iou=roi_hard_nms_iou,
        ),
        weights=weights,
    )
