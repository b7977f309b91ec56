"""OHEM in the ROI criterion (ROICriterion(hard_examples=N)): the loss over the N hardest RoIs
per image after the NMS on their losses, normalised by the kept ones, with gradient only through
them; hand-computed on two images of four RoIs; a whole model step with RoIAlign and RoIPool."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from helpers.tiny_faster_rcnn import (
    NUM_CLASSES,
    TinyBackbone,
    ce_criterion,
    one_thread,  # noqa: F401  (autouse: one intra-op thread for every test here)
    random_batch,
)

from detector.errors import OptionError
from detector.modeling.box_head import MLPBoxHead
from detector.modeling.build import build_model
from detector.modeling.pooler import RoIAlign, RoIPool
from detector.modeling.roi_head import ROICriterion
from detector.ops.losses import CrossEntropy

# K = 2 foreground classes. Per RoI: (box, label, cross-entropy it is given, box loss it is given)
# image 0: A, B overlap at IoU 0.82 (B suppressed by the harder A); C is foreground with a small
#          CE but a box loss of 3.5 (total 3.6: second); D easy
# image 1: E (class 2, exact box); F ignored (label -1) with a huge loss; G, H easy
ROIS = [
    [([0, 0, 10, 10], 0, 5.0, 0.0), ([1, 0, 11, 10], 0, 4.0, 0.0),
     ([20, 20, 30, 30], 1, 0.1, 3.5), ([40, 40, 50, 50], 0, 1.0, 0.0)],
    [([0, 0, 10, 10], 2, 2.0, 0.0), ([0, 0, 10, 10], -1, 50.0, 0.0),
     ([50, 50, 60, 60], 0, 0.5, 0.0), ([20, 20, 30, 30], 0, 0.1, 0.0)],
]
KEPT = [[True, False, True, False], [True, False, True, False]]


def _logits_for(ce: float, label: int) -> list[float]:
    """Three logits whose cross-entropy at ``label`` is ``ce``: log(1 + 2 e^x) = ce."""
    x = math.log((math.exp(ce) - 1) / 2)
    return [0.0 if c == max(label, 0) else x for c in range(NUM_CLASSES + 1)]


def _outputs() -> dict:
    rois = torch.tensor([[r[0] for r in image] for image in ROIS], dtype=torch.float32)
    labels = torch.tensor([[r[1] for r in image] for image in ROIS])
    logits = torch.tensor([[_logits_for(r[2], r[1]) for r in image] for image in ROIS])
    # box loss b of a foreground RoI: smooth-L1 (beta 1) of a dx error of b + 0.5 (>= 1)
    gt_deltas = torch.zeros(2, 4, 4)
    gt_deltas[..., 0] = torch.tensor([[r[3] + 0.5 if r[3] else 0.0 for r in image]
                                      for image in ROIS])
    return {"rois": rois, "gt_roi_labels": labels, "gt_roi_deltas": gt_deltas,
            "pred_roi_logits": logits.requires_grad_(),
            "pred_roi_deltas": torch.zeros(2, 4, 4 * NUM_CLASSES, requires_grad=True)}


def test_the_given_losses_are_what_the_plain_criterion_sees():
    outputs = _outputs()
    losses = ROICriterion(cls_loss=CrossEntropy())(outputs)
    # every used RoI (7): CE 5 + 4 + 0.1 + 1 + 2 + 0.5 + 0.1 = 12.7; box 3.5
    assert float(losses["loss_cls"].detach()) == pytest.approx(12.7 / 7, rel=1e-5)
    assert float(losses["loss_box"].detach()) == pytest.approx(3.5 / 7, rel=1e-5)


def test_ohem_counts_the_top_two_after_the_nms():
    losses = ROICriterion(cls_loss=CrossEntropy(), hard_examples=2)(_outputs())
    # kept: A (5), C (0.1 + 3.5), E (2), G (0.5): CE 7.6 / 4, box 3.5 / 4
    assert float(losses["loss_cls"].detach()) == pytest.approx(7.6 / 4, rel=1e-5)
    assert float(losses["loss_box"].detach()) == pytest.approx(3.5 / 4, rel=1e-5)


def test_ohem_normalised_by_kept_positives():
    criterion = ROICriterion(cls_loss=CrossEntropy(), hard_examples=2,
                             normalize_by_positives=True)
    losses = criterion(_outputs())  # kept positives: C and E
    assert float(losses["loss_cls"].detach()) == pytest.approx(7.6 / 2, rel=1e-5)
    assert float(losses["loss_box"].detach()) == pytest.approx(3.5 / 2, rel=1e-5)


def test_gradient_reaches_only_the_kept_rois():
    outputs = _outputs()
    losses = ROICriterion(cls_loss=CrossEntropy(), hard_examples=2)(outputs)
    (losses["loss_cls"] + losses["loss_box"]).backward()
    cls_grad = outputs["pred_roi_logits"].grad.abs().sum(dim=-1)  # [B, S]
    kept = torch.tensor(KEPT)
    assert (cls_grad[~kept] == 0).all() and (cls_grad[kept] > 0).all()
    box_grad = outputs["pred_roi_deltas"].grad.abs().sum(dim=-1)
    assert box_grad[0, 2] > 0  # C, kept and foreground with a box error
    assert (box_grad[~kept] == 0).all()


def test_hard_examples_of_at_least_every_rois_without_overlaps_is_the_plain_loss():
    outputs = _outputs()
    outputs["rois"] = torch.arange(8, dtype=torch.float32).view(2, 4, 1) * 20 + torch.tensor(
        [0.0, 0.0, 10.0, 10.0])  # eight disjoint boxes
    plain = ROICriterion(cls_loss=CrossEntropy())(outputs)
    ohem = ROICriterion(cls_loss=CrossEntropy(), hard_examples=4)(outputs)
    for name in ("loss_cls", "loss_box"):
        assert torch.allclose(plain[name], ohem[name])


@pytest.mark.parametrize("options", [{"hard_examples": 0}, {"hard_examples": 2.5},
                                     {"hard_nms_iou": 0.0}, {"hard_nms_iou": 1.5}])
def test_bad_options_are_user_errors(options):
    with pytest.raises(OptionError):
        ROICriterion(cls_loss=CrossEntropy(), **options)


@pytest.mark.parametrize("pooler", [
    RoIAlign(output_size=4, sampling_ratio=2, aligned=True),
    RoIPool(output_size=4),
    torchvision.ops.RoIPool(4, 1.0 / 16),
], ids=["roi_align", "roi_pool", "torchvision_roi_pool"])
def test_a_model_step_with_every_proposal_and_ohem(pooler):
    torch.manual_seed(0)
    backbone = TinyBackbone()
    model = build_model(
        backbone=backbone, pooler=pooler, num_classes=NUM_CLASSES, anchor_sizes=(16, 32, 64),
        box_head=MLPBoxHead(in_channels=backbone.out_channels, resolution=4, hidden_dim=64),
        rpn_post_nms_top_n=(64, 32), roi_num_samples=None,
    )
    data = random_batch([(64, 96), (96, 64)], [3, 1])
    outputs = model(data["images"], data["image_sizes"], data["targets"])
    # every proposal and the ground truth reach the head: more RoIs than the 4 OHEM keeps
    assert outputs["roi_valid"].sum(dim=1).min() > 4
    outputs["pred_roi_logits"].retain_grad()
    losses = ce_criterion(roi_hard_examples=4)(outputs, data["targets"])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    touched = outputs["pred_roi_logits"].grad.abs().sum(dim=-1) > 0  # [B, S]
    assert (touched.sum(dim=1) <= 4).all() and (touched.sum(dim=1) >= 1).all()
    assert not (touched & ~outputs["roi_valid"]).any()
    assert all(p.grad is not None for p in model.roi_head.parameters())
