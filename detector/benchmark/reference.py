"""The two models a whole-model benchmark compares: ours and torchvision's FasterRCNN, built with
the same settings (issue #12) on the same VGG16-BN trunk.

Shared settings: VGG16-BN conv5_3 (stride 16, 512 channels, random init), anchors 128/256/512 x
0.5/1/2 (offset 0, as torchvision places them), RPN 3x3 conv + 1x1 heads, 256 RPN samples at half
foreground (IoU 0.7 / 0.3), proposal NMS 0.7 with pre/post-NMS top-n 2000/2000 in training and
1000/1000 at test time, RoIAlign 7x7 (sampling ratio 2, not aligned), a 2-layer 1024-wide MLP box
head, 512 RoIs per image at 0.25 foreground (IoU 0.5), cross-entropy losses, score threshold 0.05,
class-wise NMS 0.5, 100 detections per image.

torchvision's ``GeneralizedRCNNTransform`` normalises, resizes and pads its inputs. With
``min_size = min(H, W)`` and ``max_size = max(H, W)`` its resize factor is exactly 1 (it still runs
one bilinear pass over each image, a few ms at 600x1000), and it pads to multiples of 32 as our
collate does; mean 0 / std 1 keep the pixel values as given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from detector.modeling.backbone import VGG16BNBackbone
from detector.modeling.box_head import MLPBoxHead
from detector.modeling.build import build_criterion, build_model
from detector.modeling.faster_rcnn import FasterRCNN, FasterRCNNCriterion
from detector.modeling.pooler import RoIAlign
from detector.ops.losses import BinaryCrossEntropy, CrossEntropy

__all__ = ["BenchSettings", "build_ours", "build_torchvision", "copy_weights"]


@dataclass(frozen=True)
class BenchSettings:
    """What both models share (defaults: issue #12's comparison).

    Attributes:
        height, width (int): image size; both models see it unresized.
        num_classes (int): K foreground classes (torchvision's predictor gets K + 1).
        hidden_dim (int): width of the two box-head layers.
        roi_samples (int): RoIs per image in training.
        rpn_samples (int): anchors sampled per image for the RPN loss.
        pre_nms_top_n, post_nms_top_n (tuple[int, int]): proposals (train, test).
        compact_rois (bool | None): our ROI head's ``compact`` switch (None: automatic).
        compile (bool): our ``build_model(compile=...)`` (torch.compile of backbone and heads).
        fold_bn (bool): our backbone's ``fold_bn`` (BN folded into the convs at inference).
        roi_align_backend (str): our RoIAlign's ``backend`` ("auto": the sparse product on the
            CPU, torchvision's kernel elsewhere; see ``detector.modeling.pooler``).
    """

    height: int = 600
    width: int = 1000
    num_classes: int = 80
    hidden_dim: int = 1024
    roi_samples: int = 512
    rpn_samples: int = 256
    pre_nms_top_n: tuple[int, int] = (2000, 1000)
    post_nms_top_n: tuple[int, int] = (2000, 1000)
    compact_rois: bool | None = None
    compile: bool = False
    roi_align_backend: str = "auto"
    fold_bn: bool = True


def build_ours(settings: BenchSettings) -> tuple[FasterRCNN, FasterRCNNCriterion]:
    """Our model and its cross-entropy criterion with ``settings``."""
    model = build_model(
        backbone=VGG16BNBackbone(weights=None, frozen_blocks=0, norm="train",
                                 fold_bn=settings.fold_bn),
        box_head=MLPBoxHead(in_channels=512, resolution=7, hidden_dim=settings.hidden_dim),
        pooler=RoIAlign(output_size=7, spatial_scale=1.0 / 16, sampling_ratio=2, aligned=False,
                        backend=settings.roi_align_backend),
        num_classes=settings.num_classes,
        anchor_sizes=(128, 256, 512), anchor_ratios=(0.5, 1.0, 2.0), anchor_offset=0.0,
        rpn_pre_nms_top_n=settings.pre_nms_top_n, rpn_post_nms_top_n=settings.post_nms_top_n,
        rpn_nms_threshold=0.7, roi_fg_iou=0.5, roi_bg_iou_low=0.0,
        roi_num_samples=settings.roi_samples, roi_positive_fraction=0.25,
        score_threshold=0.05, nms_threshold=0.5, max_detections=100,
        compact_rois=settings.compact_rois, compile=settings.compile,
    )
    criterion = build_criterion(
        rpn_cls_loss=BinaryCrossEntropy(), roi_cls_loss=CrossEntropy(),
        rpn_num_samples=settings.rpn_samples, rpn_positive_fraction=0.5,
        rpn_fg_iou=0.7, rpn_bg_iou=0.3, rpn_box_beta=1.0 / 9, roi_box_beta=1.0,
    )
    return model, criterion


def _vgg16_bn_trunk() -> nn.Module:
    features = torchvision.models.vgg16_bn(weights=None).features[:-1]  # conv5_3, stride 16
    features.out_channels = 512
    return features


def build_torchvision(settings: BenchSettings) -> TorchvisionFasterRCNN:
    """torchvision's FasterRCNN with ``settings`` (losses come out of its forward in train mode)."""
    resolution, width = 7, settings.hidden_dim
    return TorchvisionFasterRCNN(
        _vgg16_bn_trunk(),
        min_size=min(settings.height, settings.width),
        max_size=max(settings.height, settings.width),
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=TorchvisionAnchors(sizes=((128, 256, 512),),
                                                aspect_ratios=((0.5, 1.0, 2.0),)),
        rpn_pre_nms_top_n_train=settings.pre_nms_top_n[0],
        rpn_pre_nms_top_n_test=settings.pre_nms_top_n[1],
        rpn_post_nms_top_n_train=settings.post_nms_top_n[0],
        rpn_post_nms_top_n_test=settings.post_nms_top_n[1],
        rpn_nms_thresh=0.7, rpn_fg_iou_thresh=0.7, rpn_bg_iou_thresh=0.3,
        rpn_batch_size_per_image=settings.rpn_samples, rpn_positive_fraction=0.5,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=resolution, sampling_ratio=2),
        box_head=TwoMLPHead(512 * resolution**2, width),
        box_predictor=FastRCNNPredictor(width, settings.num_classes + 1),
        box_score_thresh=0.05, box_nms_thresh=0.5, box_detections_per_img=100,
        box_fg_iou_thresh=0.5, box_bg_iou_thresh=0.5,
        box_batch_size_per_image=settings.roi_samples, box_positive_fraction=0.25,
    )


@torch.no_grad()
def copy_weights(ours: FasterRCNN, torchvision_model: TorchvisionFasterRCNN) -> None:
    """Give torchvision's model our weights, so that both compute the same features, objectness
    and proposals (both order anchors ratio-major per cell, deltas anchor-major) and the timings
    compare the same work. torchvision's box regressor also has rows for the background class:
    they get zeros."""
    tv = torchvision_model
    tv.backbone.load_state_dict(ours.backbone.features.state_dict())
    rpn = ours.rpn_head
    for mine, theirs in ((rpn.conv, tv.rpn.head.conv[0][0]), (rpn.objectness, tv.rpn.head.cls_logits),
                         (rpn.deltas, tv.rpn.head.bbox_pred)):
        theirs.load_state_dict(mine.state_dict())
    tv.roi_heads.box_head.load_state_dict(ours.roi_head.box_head.state_dict())
    predictor = tv.roi_heads.box_predictor
    predictor.cls_score.load_state_dict(ours.roi_head.cls_score.state_dict())
    for name in ("weight", "bias"):
        theirs = getattr(predictor.bbox_pred, name)
        theirs.zero_()[4:] = getattr(ours.roi_head.bbox_pred, name)
