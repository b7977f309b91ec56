"""detector/modeling/faster_rcnn.py: the criterion of the assembled model.

Images without boxes give finite class losses and no box loss (nor box-loss gradient),
focal(gamma=0) == CE in both stages (with and without sampling), and the loss weights scale each
loss (an unknown name is refused), on the tiny model of helpers/tiny_faster_rcnn.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_faster_rcnn import (
    ROI_SAMPLES,
    ce_criterion,
    focal_criterion,
    one_thread,  # noqa: F401  (autouse: one intra-op thread for every test here)
    random_batch,
    tiny_model,
)

from detector.modeling.build import build_criterion
from detector.modeling.faster_rcnn import LOSS_NAMES
from detector.ops.losses import BinaryCrossEntropy, CrossEntropy, SigmoidFocalLoss, SoftmaxFocalLoss


@pytest.mark.parametrize("make_criterion", [ce_criterion, focal_criterion])
def test_images_without_boxes_give_finite_class_losses_and_no_box_loss(make_criterion):
    torch.manual_seed(0)
    model, criterion = tiny_model(), make_criterion()
    # a whole batch without boxes (G = 0)
    data = random_batch([(64, 64), (48, 64)], [0, 0])
    out = model(data["images"], data["image_sizes"], data["targets"])
    losses = criterion(out, data["targets"])
    assert torch.isfinite(losses["loss_rpn_cls"]) and losses["loss_rpn_cls"] > 0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    assert losses["loss_rpn_box"].item() == 0.0 and losses["loss_box"].item() == 0.0
    # a mixed batch: the image without boxes gets no box-loss gradient
    data = random_batch([(64, 64), (64, 64)], [2, 0])
    out = model(data["images"], data["image_sizes"], data["targets"])
    out["pred_rpn_deltas"].retain_grad()
    out["pred_roi_deltas"].retain_grad()
    losses = criterion(out, data["targets"])
    (losses["loss_rpn_box"] + losses["loss_box"]).backward()
    rpn, roi = out["pred_rpn_deltas"].grad, out["pred_roi_deltas"].grad
    assert (rpn[1] == 0).all() and (roi[1] == 0).all()
    assert (rpn[0] != 0).any() and (roi[0] != 0).any()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("sampling", [True, False])
def test_focal_with_gamma_zero_equals_cross_entropy_for_both_heads(sampling):
    torch.manual_seed(0)
    model = tiny_model(roi_num_samples=ROI_SAMPLES if sampling else None)
    data = random_batch([(64, 96), (64, 64)], [2, 1])
    out = model(data["images"], data["image_sizes"], data["targets"])
    options = {
        "rpn_num_samples": 64 if sampling else None,
        "roi_normalize_by_positives": not sampling,
    }
    ce = build_criterion(rpn_cls_loss=BinaryCrossEntropy(), roi_cls_loss=CrossEntropy(), **options)
    focal = build_criterion(
        rpn_cls_loss=SigmoidFocalLoss(alpha=None, gamma=0.0),
        roi_cls_loss=SoftmaxFocalLoss(alpha=None, gamma=0.0),
        **options,
    )
    torch.manual_seed(1)  # the RPN anchor sample is drawn inside the criterion: draw it alike
    ce_losses = ce(out, data["targets"])
    torch.manual_seed(1)
    focal_losses = focal(out, data["targets"])
    assert ce_losses["loss_rpn_cls"] > 0 and ce_losses["loss_cls"] > 0
    for name in LOSS_NAMES:
        torch.testing.assert_close(focal_losses[name], ce_losses[name], rtol=1e-6, atol=0)


def test_criterion_weights_scale_each_loss_and_unknown_keys_are_rejected():
    torch.manual_seed(0)
    model = tiny_model()
    data = random_batch([(64, 64)], [2])
    out = model(data["images"], data["image_sizes"], data["targets"])
    weights = {"loss_rpn_cls": 2.0, "loss_box": 0.5, "loss_cls": 0.0}
    torch.manual_seed(1)
    plain = ce_criterion()(out, data["targets"])
    torch.manual_seed(1)
    weighted = ce_criterion(weights=weights)(out, data["targets"])
    for name in LOSS_NAMES:
        torch.testing.assert_close(weighted[name], plain[name] * weights.get(name, 1.0))
    assert plain["loss_box"] > 0 and plain["loss_rpn_cls"] > 0
    with pytest.raises(ValueError, match="loss_bbox"):
        ce_criterion(weights={"loss_bbox": 1.0})
