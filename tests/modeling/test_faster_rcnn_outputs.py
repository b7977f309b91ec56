"""detector/modeling/faster_rcnn.py and build.py: what the assembled model outputs.

Output shapes and dtypes for several batch layouts (images without boxes included), validation
losses and detections in one eval-mode call, external proposals, the compact and the padded RoI
paths (same detections, losses and gradients) and the compile switch. The tiny stride-16 model
of helpers/tiny_faster_rcnn.py keeps all of it fast on a CPU.
"""

from __future__ import annotations

import pytest
import torch
from helpers.tiny_faster_rcnn import (
    BATCH_LAYOUTS,
    NUM_ANCHORS,
    NUM_CLASSES,
    POST_NMS,
    ROI_SAMPLES,
    ce_criterion,
    check_detections,
    one_thread,  # noqa: F401  (autouse: one intra-op thread for every test here)
    random_batch,
    tiny_model,
)
from torch import nn

from detector.modeling.faster_rcnn import LOSS_NAMES, FasterRCNN


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
        check_detections(model.detect(out, data["scales"]), batch, image_sizes * 2, 100)


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
        check_detections(dets, 2, data["image_sizes"] * 2, 100)
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
