"""The assembled model's poolers: the sparse RoIAlign trains like torchvision's kernel, a stride-8
backbone gives stride-8 anchors and a derived pooler scale, a pooler without a scale gets one over
the stride (and says so when used outside build_model), old checkpoints that spell the scale out
still load, and our RoIPool is torchvision's.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from helpers.tiny_checkpoint import TINY_CLASSES, tiny_model_spec
from helpers.tiny_faster_rcnn import (
    NUM_CLASSES,
    POST_NMS,
    ROI_SAMPLES,
    TinyBackbone,
    ce_criterion,
    one_thread,  # noqa: F401  (autouse: one intra-op thread for every test here)
    random_batch,
)

from detector.modeling.backbone import VGG16BNBackbone
from detector.modeling.box_head import MLPBoxHead
from detector.modeling.build import build_model
from detector.modeling.pooler import RoIAlign, RoIPool
from detector.modeling.spec import build_from_spec, model_from_checkpoint


def test_sparse_roi_align_trains_like_torchvision_kernel():
    """A whole step with the sparse-product RoIAlign gives torchvision's losses and gradients."""
    steps = []
    for backend in ("sparse", "torchvision"):
        torch.manual_seed(0)
        backbone = TinyBackbone()
        model = build_model(
            backbone=backbone,
            box_head=MLPBoxHead(in_channels=backbone.out_channels, resolution=4, hidden_dim=64),
            pooler=RoIAlign(output_size=4, spatial_scale=1.0 / 16, sampling_ratio=2,
                            aligned=True, backend=backend),
            num_classes=NUM_CLASSES, anchor_sizes=(16, 32, 64), rpn_post_nms_top_n=POST_NMS,
            roi_num_samples=ROI_SAMPLES,
        )
        data = random_batch([(64, 96), (96, 64)], [3, 1])
        torch.manual_seed(1)  # the same RoI sample
        losses = ce_criterion()(model(data["images"], data["image_sizes"], data["targets"]),
                                data["targets"])
        sum(losses.values()).backward()
        steps.append((losses, {n: p.grad for n, p in model.named_parameters()}))
    (losses, grads), (ref_losses, ref_grads) = steps
    for name, value in ref_losses.items():
        assert torch.allclose(losses[name], value, rtol=1e-5, atol=1e-6), name
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-6), name
    assert ref_losses["loss_cls"] > 0


def test_stride_8_backbone_gives_stride_8_anchors_and_a_derived_pooler_scale():
    backbone = VGG16BNBackbone(weights=None, frozen_blocks=0, output_stride=8)
    parts = dict(backbone=backbone, box_head=MLPBoxHead(in_channels=512, resolution=7,
                                                        hidden_dim=32),
                 num_classes=NUM_CLASSES, anchor_sizes=(16, 32), rpn_post_nms_top_n=POST_NMS,
                 roi_num_samples=ROI_SAMPLES)
    with pytest.raises(ValueError, match="spatial_scale 0.0625 .* stride 8"):  # a given one is
        build_model(pooler=torchvision.ops.RoIPool(7, 1.0 / 16), **parts)      # checked
    assert build_model(pooler=torchvision.ops.RoIPool(7, 1.0 / 8), **parts)
    model = build_model(pooler=RoIPool(output_size=7), **parts)
    assert model.roi_head.pooler.spatial_scale == 0.125
    data = random_batch([(64, 64)], [2])
    out = model(data["images"], data["image_sizes"], data["targets"])
    assert out["anchors"].shape == (8 * 8 * 6, 4)  # an 8 x 8 map, 2 sizes x 3 ratios
    assert model.anchor_generator.stride == 8
    sum(ce_criterion()(out, data["targets"]).values()).backward()


@pytest.mark.parametrize("pooler", [RoIPool(output_size=7), RoIAlign(output_size=7)],
                         ids=["RoIPool", "RoIAlign"])
def test_a_pooler_without_a_scale_gets_one_over_the_stride(pooler):
    parts = dict(box_head=MLPBoxHead(in_channels=64, resolution=7, hidden_dim=16),
                 num_classes=NUM_CLASSES)
    assert build_model(backbone=TinyBackbone(), pooler=pooler, **parts).roi_head.pooler \
        .spatial_scale == 1 / 16


def test_a_pooler_used_without_build_model_or_a_scale_says_so():
    with pytest.raises(RuntimeError, match="RoIPool has no spatial_scale: build the model"):
        RoIPool(output_size=2)(torch.zeros(1, 3, 4, 4), torch.zeros(1, 5))


def test_a_checkpoint_whose_description_spells_out_the_scale_still_loads():
    """Runs before the scale was derived stored ``torchvision.ops.RoIPool`` with
    ``spatial_scale: 0.0625``: same model, same weights, same outputs."""
    old_spec = {**tiny_model_spec(), "pooler": {"_target_": "torchvision.ops.RoIPool",
                                                "output_size": 7, "spatial_scale": 0.0625}}
    torch.manual_seed(0)
    new = build_from_spec(tiny_model_spec(len(TINY_CLASSES))).eval()
    state = {"model": new.state_dict(), "class_names": TINY_CLASSES,
             "config": {"model": old_spec}}
    old = model_from_checkpoint(state)
    assert isinstance(old.roi_head.pooler, torchvision.ops.RoIPool)
    assert new.roi_head.pooler.spatial_scale == old.roi_head.pooler.spatial_scale == 1 / 16
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = (m.detect(m(images, torch.tensor([[64, 64]]), detect=True))[0]
                for m in (new, old))
    assert len(a["scores"]) > 0 and all(torch.equal(a[k], b[k]) for k in a)
    wrong = {**state, "config": {"model": {**old_spec, "pooler": {**old_spec["pooler"],
                                                                  "spatial_scale": 0.125}}}}
    with pytest.raises(ValueError, match="spatial_scale 0.125 does not match .* stride 16"):
        model_from_checkpoint(wrong)


def test_our_roipool_is_torchvisions():
    features = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[0.0, 1.0, 2.0, 20.0, 30.0], [1.0, 0.0, 0.0, 31.0, 31.0]])
    ours = RoIPool(output_size=(2, 3), spatial_scale=0.25)(features, rois)
    assert torch.equal(ours, torchvision.ops.RoIPool((2, 3), 0.25)(features, rois))
