"""Tests for detector/modeling/faster_rcnn.py and build.py: the assembled model and its criterion.

Output shapes for several batch layouts (images without boxes included), focal(gamma=0) == CE,
loss weights, validation loss in eval mode, gradients vs frozen backbone blocks, overfitting two
synthetic images with CE and with focal loss, and (on CUDA) autocast and host-sync checks. A tiny
stride-16 backbone keeps all of it fast on a CPU.
"""

from __future__ import annotations

import traceback

import pytest
import torch
import torchvision
from tiny_checkpoint import TINY_CLASSES, tiny_model_spec
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from detector.modeling.backbone import VGG16BNBackbone
from detector.modeling.box_head import MLPBoxHead
from detector.modeling.build import build_criterion, build_model
from detector.modeling.faster_rcnn import LOSS_NAMES, FasterRCNN, FasterRCNNCriterion
from detector.modeling.pooler import RoIAlign, RoIPool
from detector.modeling.spec import build_from_spec, model_from_checkpoint
from detector.ops.boxes import box_iou
from detector.ops.losses import BinaryCrossEntropy, CrossEntropy, SigmoidFocalLoss, SoftmaxFocalLoss

NUM_CLASSES = 2
NUM_ANCHORS = 9  # 3 sizes x 3 ratios
POST_NMS = (64, 32)  # proposals per image (train, test)
ROI_SAMPLES = 32


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is much faster than two on a busy machine."""
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


def _check_detections(dets, batch, orig_sizes, max_detections):
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


@pytest.mark.parametrize("layout", BATCH_LAYOUTS)
def test_output_shapes_and_dtypes(layout):
    sizes, counts = BATCH_LAYOUTS[layout]
    data = random_batch(sizes, counts)
    images, image_sizes, targets = data["images"], data["image_sizes"], data["targets"]
    batch, _, height, width = images.shape
    torch.manual_seed(0)
    model, criterion = tiny_model(), ce_criterion()
    num_anchors = (height // 16) * (width // 16) * NUM_ANCHORS
    for training in (True, False):
        model.train(training)
        out = model(images, image_sizes, targets, detect=True)
        r = min(POST_NMS[0 if training else 1], num_anchors)
        s = min(ROI_SAMPLES, r + targets["boxes"].shape[1])
        expected = {
            "anchors": ((num_anchors, 4), torch.float32),
            "pred_rpn_logits": ((batch, num_anchors), torch.float32),
            "pred_rpn_deltas": ((batch, num_anchors, 4), torch.float32),
            "proposals": ((batch, r, 4), torch.float32),
            "proposal_valid": ((batch, r), torch.bool),
            "rois": ((batch, s, 4), torch.float32),
            "roi_valid": ((batch, s), torch.bool),
            "gt_roi_labels": ((batch, s), torch.long),
            "gt_roi_deltas": ((batch, s, 4), torch.float32),
            "pred_roi_logits": ((batch, s, NUM_CLASSES + 1), torch.float32),
            "pred_roi_deltas": ((batch, s, 4 * NUM_CLASSES), torch.float32),
            "pred_det_logits": ((batch, r, NUM_CLASSES + 1), torch.float32),
            "pred_det_deltas": ((batch, r, 4 * NUM_CLASSES), torch.float32),
        }
        assert {k: (tuple(out[k].shape), out[k].dtype) for k in expected} == expected
        # proposals lie inside their own image
        h, w = image_sizes[:, 0, None].float(), image_sizes[:, 1, None].float()
        props = out["proposals"]
        assert (props[..., 2] <= w).all() and (props[..., 3] <= h).all() and (props >= 0).all()
        # RoIs of images without boxes are all background or padding
        for i, n in enumerate(counts):
            if n == 0:
                assert (out["gt_roi_labels"][i] <= 0).all()
        losses = criterion(out, targets)
        assert set(losses) == set(LOSS_NAMES)
        for value in losses.values():
            assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value)
        _check_detections(model.detect(out, data["scales"]), batch, image_sizes * 2, 100)


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


def test_eval_mode_with_targets_gives_validation_losses_and_detections_in_one_call():
    torch.manual_seed(0)
    model, criterion = tiny_model(), ce_criterion()
    data = random_batch([(64, 96), (64, 64)], [2, 1])
    model.eval()
    with torch.no_grad():
        out = model(data["images"], data["image_sizes"], data["targets"])
        losses = criterion(out, data["targets"])
        dets = model.detect(out, data["scales"])
        assert out["proposals"].shape[1] == POST_NMS[1]  # test-time proposal count
        assert set(losses) == set(LOSS_NAMES) and all(torch.isfinite(v) for v in losses.values())
        _check_detections(dets, 2, data["image_sizes"] * 2, 100)
        # without targets: no RoI sampling, detections only; detect=False: no detection outputs
        plain = model(data["images"], data["image_sizes"])
        assert "pred_roi_logits" not in plain and "pred_det_logits" in plain
        assert set(criterion(plain, data["targets"])) == {"loss_rpn_cls", "loss_rpn_box"}
        assert "pred_det_logits" not in model(data["images"], data["image_sizes"], detect=False)
    model.train()
    assert "pred_det_logits" not in model(data["images"], data["image_sizes"], data["targets"])


def test_external_proposals_replace_the_rpn_proposals():
    torch.manual_seed(0)
    model = tiny_model(roi_num_samples=None)
    data = random_batch([(64, 64), (64, 64)], [1, 0])
    boxes = torch.tensor([[[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 50.0]]]).expand(2, 2, 4)
    valid = torch.tensor([[True, True], [True, False]])
    out = model(
        data["images"], data["image_sizes"], data["targets"], proposals=(boxes, valid), detect=True
    )
    assert out["proposals"] is boxes and out["proposal_valid"] is valid
    # sampling-free RoIs: the valid external proposals (+ the ground truth of image 0), in order
    assert out["roi_valid"].sum(dim=1).tolist() == [3, 1]
    assert torch.equal(out["rois"][1, 0], boxes[1, 0])
    assert out["pred_det_logits"].shape[:2] == (2, 2)


# ----------------------------------------------------------------------------- compaction


def _set_compact(model: FasterRCNN, compact: bool) -> None:
    model.roi_head.compact = compact
    model.postprocessor.compact = compact


@pytest.mark.parametrize("compact_rois", [None, False, True])
def test_compact_rois_reaches_the_roi_head_and_the_postprocessor(compact_rois):
    model = tiny_model(compact_rois=compact_rois)
    assert model.roi_head.compact is compact_rois
    assert model.postprocessor.compact is compact_rois


def test_compact_and_padded_paths_give_identical_detections():
    torch.manual_seed(0)
    model = tiny_model(rpn_post_nms_top_n=(64, 200)).eval()
    data = random_batch([(64, 96), (48, 64)], [2, 1])
    dets = {}
    with torch.no_grad():
        for compact in (False, True):
            _set_compact(model, compact)
            out = model(data["images"], data["image_sizes"])
            dets[compact] = model.detect(out, data["scales"])
    valid = out["proposal_valid"]
    assert (valid.sum(dim=1) < valid.shape[1]).all()  # there is padding to skip
    assert sum(len(d["scores"]) for d in dets[False]) > 0
    for padded, compact in zip(dets[False], dets[True], strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(compact[key], padded[key]), key


def test_compact_and_padded_paths_give_the_same_losses_and_gradients():
    data = random_batch([(64, 96), (48, 64)], [2, 1])
    results = {}
    for compact in (False, True):
        torch.manual_seed(0)
        model, criterion = tiny_model(roi_num_samples=256), ce_criterion()
        _set_compact(model, compact)
        torch.manual_seed(1)  # the same anchor and RoI samples in both runs
        out = model(data["images"], data["image_sizes"], data["targets"])
        losses = criterion(out, data["targets"])
        sum(losses.values()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results[compact] = (losses, grads, out["roi_valid"])
    roi_valid = results[True][2]
    assert (roi_valid.sum(dim=1) < roi_valid.shape[1]).any()  # some RoI slots are padding
    for name in LOSS_NAMES:
        torch.testing.assert_close(results[True][0][name], results[False][0][name])
    for compact, padded in zip(results[True][1], results[False][1], strict=True):
        torch.testing.assert_close(compact, padded, rtol=1e-4, atol=1e-6)


def test_compile_switch_compiles_backbone_and_heads_in_place(monkeypatch):
    """``compile=True`` calls ``nn.Module.compile`` (in place: parameter names and checkpoints
    stay the same) on the backbone, RPN head and box head; torch's own compile is replaced by a
    recorder here, as importing inductor alone takes seconds."""
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    model = tiny_model(compile=True)
    assert compiled == [model.backbone, model.rpn_head, model.roi_head.box_head]
    compiled.clear()
    tiny_model()
    assert compiled == []


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


def test_gradients_reach_unfrozen_backbone_layers_only():
    torch.manual_seed(0)
    backbone = VGG16BNBackbone(weights=None, frozen_blocks=2)
    model = build_model(
        backbone=backbone,
        box_head=MLPBoxHead(in_channels=512, resolution=7, hidden_dim=32),
        pooler=torchvision.ops.RoIAlign(7, 1.0 / 16, 2, True),
        num_classes=NUM_CLASSES,
        anchor_sizes=(16, 32, 64),
        rpn_post_nms_top_n=POST_NMS,
        roi_num_samples=ROI_SAMPLES,
    )
    data = random_batch([(64, 64)], [2])
    out = model(data["images"], data["image_sizes"], data["targets"])
    sum(ce_criterion()(out, data["targets"]).values()).backward()
    frozen_end = 14  # conv1_1 .. pool2: features[0:14] are blocks 1 and 2
    trainable = 0
    for name, param in backbone.features.named_parameters():
        if int(name.split(".")[0]) < frozen_end:
            assert not param.requires_grad and param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None, name
            assert torch.isfinite(param.grad).all() and (param.grad != 0).any(), name
            trainable += 1
    assert trainable > 0
    assert not any(p.requires_grad for p in backbone.features[:frozen_end].parameters())
    for module in (model.rpn_head, model.roi_head):
        assert all(p.grad is not None for p in module.parameters())


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


# ----------------------------------------------------------------------------- overfitting


def two_shapes_images(seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Two noisy 64 x 64 images, each with a red rectangle (class 1) and a blue one (class 2)."""
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.tensor(
        [
            [[6.0, 8.0, 30.0, 40.0], [36.0, 22.0, 60.0, 54.0]],
            [[10.0, 34.0, 42.0, 58.0], [34.0, 4.0, 58.0, 28.0]],
        ]
    )
    labels = torch.tensor([[1, 2], [2, 1]])
    colours = {1: torch.tensor([1.5, -1.0, -1.0]), 2: torch.tensor([-1.0, -1.0, 1.5])}
    images = torch.randn(2, 3, 64, 64, generator=generator) * 0.1
    for b in range(2):
        for box, label in zip(boxes[b].long().tolist(), labels[b].tolist(), strict=True):
            x1, y1, x2, y2 = box
            images[b, :, y1:y2, x1:x2] = colours[label][:, None, None]
    targets = {"boxes": boxes, "labels": labels, "box_valid": torch.ones(2, 2, dtype=torch.bool)}
    return images, torch.tensor([[64, 64], [64, 64]]), targets


@pytest.mark.parametrize("focal", [False, True], ids=["cross_entropy", "focal"])
def test_overfits_two_synthetic_images(focal):
    seed = 0  # for reproducibility only: the property holds for other seeds (0-4 tried)
    torch.manual_seed(seed)
    images, image_sizes, targets = two_shapes_images(seed)
    model = tiny_model(focal=focal)
    criterion = focal_criterion() if focal else ce_criterion()
    steps = 200
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [steps * 3 // 4], gamma=0.1)
    model.train()
    for _ in range(steps):
        losses = criterion(model(images, image_sizes, targets), targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        dets = model.detect(model(images, image_sizes))
    for b, det in enumerate(dets):
        # the two best detections are the two objects: IoU > 0.7, right label
        top_boxes, top_labels = det["boxes"][:2], det["labels"][:2]
        assert len(top_boxes) == 2, f"image {b}: {len(top_boxes)} detections"
        iou = box_iou(targets["boxes"][b], top_boxes)  # [GT, detections]
        right = (iou > 0.7) & (targets["labels"][b][:, None] == top_labels[None, :])
        assert right.any(dim=1).all(), (
            f"image {b}: IoU {iou.tolist()}, labels {top_labels.tolist()}"
        )


# ----------------------------------------------------------------------------- host syncs

# Ops that make a CUDA host wait for the device: tensors built from host data (a blocking
# host-to-device copy), data-dependent output sizes, and reading values back.
_SYNCING_OPS = {
    "aten.lift_fresh.default",
    "aten.nonzero.default",
    "aten._local_scalar_dense.default",
    "aten.masked_select.default",
    "aten.is_nonzero.default",
    "aten.equal.default",
    "aten.unique_dim.default",
    "aten._unique2.default",
    "aten.unique_consecutive.default",
    "aten.repeat_interleave.Tensor",
}


class _SyncRecorder(TorchDispatchMode):
    """Records every op that would synchronise with a CUDA device, with where it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        bool_index = name.startswith(("aten.index.", "aten.index_put")) and any(
            torch.is_tensor(i) and i.dtype == torch.bool for i in (args[1] or ())
        )
        if name in _SYNCING_OPS or bool_index:
            frames = [f for f in traceback.extract_stack() if "/detector/" in f.filename]
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            self.found.append(f"{name} at {where}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("make_criterion", [ce_criterion, focal_criterion])
def test_target_assignment_and_losses_have_no_host_sync_ops(make_criterion):
    """CPU stand-in for the CUDA sync check below: the criterion and the RoI sampler call no op
    that would make a CUDA host wait."""
    torch.manual_seed(0)
    model, criterion = tiny_model(), make_criterion()
    data = random_batch([(64, 96), (64, 64)], [2, 0])
    targets = data["targets"]
    out = model(data["images"], data["image_sizes"], targets)
    with _SyncRecorder() as recorder:
        model.roi_sampler(out["proposals"], out["proposal_valid"], targets)
        losses = criterion(out, targets)
    assert recorder.found == []
    assert set(losses) == set(LOSS_NAMES)


# ----------------------------------------------------------------------------- CUDA


def _to(data: dict, device) -> dict:
    moved = {k: v.to(device) for k, v in data.items() if torch.is_tensor(v)}
    moved["targets"] = {k: v.to(device) for k, v in data["targets"].items()}
    return moved


@pytest.mark.gpu
@pytest.mark.parametrize("make_criterion", [ce_criterion, focal_criterion])
def test_bf16_autocast_forward_and_backward(cuda_device, make_criterion):
    torch.manual_seed(0)
    model, criterion = tiny_model().to(cuda_device), make_criterion()
    data = _to(random_batch([(64, 96), (64, 64)], [2, 0]), cuda_device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(data["images"], data["image_sizes"], data["targets"], detect=True)
        losses = criterion(out, data["targets"])
    for value in losses.values():
        assert value.dtype == torch.float32 and torch.isfinite(value)
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    dets = model.detect(out, data["scales"])
    assert len(dets) == 2 and all(d["boxes"].device.type == "cuda" for d in dets)


@pytest.mark.gpu
@pytest.mark.parametrize("make_criterion", [ce_criterion, focal_criterion])
def test_target_assignment_and_losses_do_not_sync_with_the_host(cuda_device, make_criterion):
    torch.manual_seed(0)
    model, criterion = tiny_model().to(cuda_device), make_criterion()
    data = _to(random_batch([(64, 96), (64, 64)], [2, 0]), cuda_device)
    targets = data["targets"]
    for check in (False, True):  # the first round warms up kernels and caches
        out = model(data["images"], data["image_sizes"], targets)  # proposal NMS syncs: outside
        torch.cuda.synchronize()
        if check:
            torch.cuda.set_sync_debug_mode("error")
        try:
            model.roi_sampler(out["proposals"], out["proposal_valid"], targets)
            losses = criterion(out, targets)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.gpu
@pytest.mark.xfail(
    reason="issue #12 part 3, open: torchvision's CUDA NMS (proposal generation) copies its "
    "suppression mask to the host, one sync per call; the rest of the step is sync-free",
    strict=False,
)
def test_whole_training_step_syncs_only_for_the_finiteness_check(cuda_device):
    torch.manual_seed(0)
    model, criterion = tiny_model().to(cuda_device), ce_criterion()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    data = _to(random_batch([(64, 96), (64, 64)], [2, 0]), cuda_device)
    for check in (False, True):  # the first round warms up kernels and caches
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if check else 0)
        try:
            optimizer.zero_grad(set_to_none=True)
            out = model(data["images"], data["image_sizes"], data["targets"])
            loss = sum(criterion(out, data["targets"]).values())
            loss.backward()
            optimizer.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.isfinite(loss)  # the one sync a training step is allowed
