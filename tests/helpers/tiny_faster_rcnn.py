"""A tiny Faster R-CNN for the model tests (tests/modeling/test_faster_rcnn_*.py), not a test
module: a stride-16 backbone of four conv blocks, the model built around it, the CE and the
sampling-free focal criterion, noise batches with random boxes, and a check of detections.

Everything is small enough that a forward and backward pass takes milliseconds on a CPU.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from detector.modeling.box_head import MLPBoxHead
from detector.modeling.build import build_criterion, build_model
from detector.modeling.faster_rcnn import FasterRCNN, FasterRCNNCriterion
from detector.ops.losses import BinaryCrossEntropy, CrossEntropy, SigmoidFocalLoss, SoftmaxFocalLoss

NUM_CLASSES = 2
NUM_ANCHORS = 9  # 3 sizes x 3 ratios
POST_NMS = (64, 32)  # proposals per image (train, test)
ROI_SAMPLES = 32


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one intra-op thread is much faster than two on a busy machine.
    A test module imports it (``from helpers.tiny_faster_rcnn import one_thread``) to use it for
    every test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyBackbone(nn.Module):
    """Four stride-2 conv + BN + ReLU blocks and one stride-1 block: stride 16, 64 channels."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for stride, width in [(2, w) for w in widths] + [(1, widths[-1])]:
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.body = nn.Sequential(*layers)
        self.out_channels = channels
        self.stride = 16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def tiny_model(*, focal: bool = False, **overrides) -> FasterRCNN:
    backbone = TinyBackbone()
    options = {
        "anchor_sizes": (16, 32, 64),
        "rpn_pre_nms_top_n": (1000, 1000),
        "rpn_post_nms_top_n": POST_NMS,
        "roi_num_samples": None if focal else ROI_SAMPLES,
        "rpn_objectness_prior": 0.01 if focal else None,
        **overrides,
    }
    return build_model(
        backbone=backbone,
        box_head=MLPBoxHead(in_channels=backbone.out_channels, resolution=4, hidden_dim=64),
        pooler=torchvision.ops.RoIAlign(4, 1.0 / 16, 2, True),
        num_classes=NUM_CLASSES,
        **options,
    )


def ce_criterion(**overrides) -> FasterRCNNCriterion:
    options = {"rpn_num_samples": 64, **overrides}
    return build_criterion(
        rpn_cls_loss=BinaryCrossEntropy(), roi_cls_loss=CrossEntropy(), **options
    )


def focal_criterion(**overrides) -> FasterRCNNCriterion:
    """The sampling-free focal recipe: every anchor and every RoI, normalised by positives."""
    options = {"rpn_num_samples": None, "roi_normalize_by_positives": True, **overrides}
    return build_criterion(
        rpn_cls_loss=SigmoidFocalLoss(alpha=0.25, gamma=2.0),
        roi_cls_loss=SoftmaxFocalLoss(alpha=None, gamma=2.0),
        **options,
    )


def random_batch(sizes: list[tuple[int, int]], counts: list[int], seed: int = 0) -> dict:
    """Noise images padded to a multiple of 32, with ``counts[i]`` random boxes in image i."""
    generator = torch.Generator().manual_seed(seed)
    height = -(-max(h for h, _ in sizes) // 32) * 32
    width = -(-max(w for _, w in sizes) // 32) * 32
    batch, g = len(sizes), max(counts)
    images = torch.zeros(batch, 3, height, width)
    boxes = torch.zeros(batch, g, 4)
    labels = torch.zeros(batch, g, dtype=torch.long)
    valid = torch.zeros(batch, g, dtype=torch.bool)
    for i, ((h, w), n) in enumerate(zip(sizes, counts, strict=True)):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        xy = torch.rand(n, 2, generator=generator) * torch.tensor([w / 2, h / 2])
        wh = (0.2 + 0.3 * torch.rand(n, 2, generator=generator)) * torch.tensor([w, h])
        boxes[i, :n] = torch.cat((xy, xy + wh), dim=1)
        labels[i, :n] = torch.randint(1, NUM_CLASSES + 1, (n,), generator=generator)
        valid[i, :n] = True
    return {
        "images": images,
        "image_sizes": torch.tensor(sizes),
        "targets": {"boxes": boxes, "labels": labels, "box_valid": valid},
        "scales": torch.full((batch, 2), 0.5),  # original images were twice as large
    }


BATCH_LAYOUTS = {
    "one_image": ([(64, 96)], [2]),
    "second_image_without_boxes": ([(64, 64), (48, 40)], [3, 0]),
    "three_sizes": ([(64, 96), (64, 64), (32, 80)], [1, 2, 0]),
    "no_boxes_at_all": ([(64, 64), (40, 64)], [0, 0]),
}


def check_detections(dets, batch, orig_sizes, max_detections):
    assert isinstance(dets, list) and len(dets) == batch
    for det, (h, w) in zip(dets, orig_sizes.tolist(), strict=True):
        d = len(det["scores"])
        assert d <= max_detections
        assert det["boxes"].shape == (d, 4) and det["boxes"].dtype == torch.float32
        assert det["scores"].dtype == torch.float32 and det["labels"].dtype == torch.long
        assert ((det["labels"] >= 1) & (det["labels"] <= NUM_CLASSES)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        boxes = det["boxes"]
        assert (
            (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()
        )

