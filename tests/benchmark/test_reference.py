"""Tests for detector/benchmark: the torchvision reference model given our weights computes the
same features, RPN outputs and pooled cells as ours (so the benchmark times the same work), and
the synthetic batch holds the same pixels and boxes in both formats."""

from __future__ import annotations

import torch

from detector.benchmark import (
    BenchSettings,
    build_ours,
    build_torchvision,
    copy_weights,
    synthetic_batch,
)


def test_torchvision_model_with_our_weights_computes_our_features_and_rpn_outputs():
    torch.manual_seed(0)
    settings = BenchSettings(height=64, width=96, num_classes=3, hidden_dim=32)
    ours, _ = build_ours(settings)
    tv = build_torchvision(settings)
    copy_weights(ours, tv)
    data = synthetic_batch(batch=2, height=64, width=96, num_classes=3,
                           device=torch.device("cpu"))
    ours.eval(), tv.eval()
    with torch.no_grad():
        out = ours(data.images, data.image_sizes)
        features = tv.backbone(data.images)
        objectness, deltas = tv.rpn.head([features])
    torch.testing.assert_close(features, ours.backbone(data.images))
    b, a, h, w = objectness[0].shape
    torch.testing.assert_close(objectness[0].permute(0, 2, 3, 1).reshape(b, -1),
                               out["pred_rpn_logits"])
    tv_deltas = deltas[0].view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
    torch.testing.assert_close(tv_deltas, out["pred_rpn_deltas"])
    bbox = tv.roi_heads.box_predictor.bbox_pred.weight
    assert (bbox[:4] == 0).all() and torch.equal(bbox[4:], ours.roi_head.bbox_pred.weight)


def test_both_poolers_compute_the_same_cells():
    """Ours pools with the sparse-product RoIAlign on the CPU, torchvision with its kernel: the
    same 7 x 7 cells for the same boxes (sampling ratio 2, not aligned)."""
    ours, _ = build_ours(BenchSettings(height=64, width=96, num_classes=3, hidden_dim=32))
    tv = build_torchvision(BenchSettings(height=64, width=96, num_classes=3, hidden_dim=32))
    assert ours.roi_head.pooler.backend == "auto"
    assert ours.roi_head.pooler.uses_sparse(torch.device("cpu"))
    features = torch.randn(2, 512, 4, 6, generator=torch.Generator().manual_seed(0))
    boxes = [torch.tensor([[3.0, 5.0, 60.0, 40.0], [0.0, 0.0, 96.0, 64.0]]),
             torch.tensor([[10.0, 20.0, 30.0, 25.0]])]
    rois = torch.cat([torch.cat((torch.full((len(b), 1), float(i)), b), dim=1)
                      for i, b in enumerate(boxes)])
    theirs = tv.roi_heads.box_roi_pool({"0": features}, boxes, [(64, 96), (64, 96)])
    torch.testing.assert_close(ours.roi_head.pooler(features, rois), theirs)
    other = build_ours(BenchSettings(height=64, width=96, num_classes=3, hidden_dim=32,
                                     roi_align_backend="torchvision"))[0]
    assert not other.roi_head.pooler.uses_sparse(torch.device("cpu"))


def test_synthetic_batch_formats_agree():
    data = synthetic_batch(batch=2, height=40, width=70, num_classes=5, device=torch.device("cpu"))
    assert data.images.shape == (2, 3, 64, 96)  # padded to multiples of 32
    assert (data.images[:, :, 40:] == 0).all() and (data.images[..., 70:] == 0).all()
    for i in range(2):
        assert torch.equal(data.tv_images[i], data.images[i, :, :40, :70])
        assert torch.equal(data.tv_targets[i]["boxes"], data.targets["boxes"][i])
    boxes = data.targets["boxes"]
    assert (boxes[..., 2:] <= torch.tensor([70.0, 40.0])).all() and (boxes[..., :2] >= 0).all()
    assert ((data.targets["labels"] >= 1) & (data.targets["labels"] <= 5)).all()
