"""Tests for detector/modeling/roi_head.py: RoI sampling (GT appended, sample sizes, sampling-free),
the head's shapes and per-image pooling, and the ROI criterion (hand-computed losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from detector.modeling.box_head import MLPBoxHead
from detector.modeling.roi_head import ROICriterion, ROIHead, ROISampler
from detector.ops.boxes import BoxCoder, box_iou
from detector.ops.losses import CrossEntropy, SoftmaxFocalLoss
from detector.ops.matcher import Matcher

ROI_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))

# ----------------------------------------------------------------------------- ROISampler


def _sampler(num_samples=512, positive_fraction=0.25, matcher=None, append_gt=True) -> ROISampler:
    return ROISampler(
        matcher=matcher or Matcher(thresholds=(0.5,), labels=(0, 1)),
        box_coder=ROI_CODER,
        num_samples=num_samples,
        positive_fraction=positive_fraction,
        append_gt=append_gt,
    )


def _targets(boxes: list[list[list[float]]], labels: list[list[int]]) -> dict:
    """Pad per-image lists of boxes/labels to a batch."""
    g = max(len(b) for b in boxes)
    out = {
        "boxes": torch.zeros(len(boxes), g, 4),
        "labels": torch.zeros(len(boxes), g, dtype=torch.long),
        "box_valid": torch.zeros(len(boxes), g, dtype=torch.bool),
    }
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        if b:
            out["boxes"][i, : len(b)] = torch.tensor(b)
            out["labels"][i, : len(b)] = torch.tensor(lab)
            out["box_valid"][i, : len(b)] = True
    return out


FAR = [[200.0, 200.0, 220.0, 220.0], [230.0, 200.0, 250.0, 220.0], [200.0, 230.0, 220.0, 250.0]]


@pytest.mark.parametrize("num_samples", [8, None])
def test_ground_truth_is_appended_with_its_label(num_samples):
    targets = _targets(
        [[[10.0, 10.0, 50.0, 40.0], [60.0, 5.0, 90.0, 70.0]], [[0.0, 0.0, 30.0, 30.0]]],
        [[1, 3], [2]],
    )
    proposals = torch.tensor(FAR).expand(2, 3, 4)  # no overlap with any ground truth
    out = _sampler(num_samples=num_samples)(proposals, torch.ones(2, 3, dtype=torch.bool), targets)
    for b in range(2):
        for g in range(int(targets["box_valid"][b].sum())):
            gt = targets["boxes"][b, g]
            hit = out["roi_valid"][b] & (out["rois"][b] == gt).all(dim=-1)
            assert hit.sum() == 1
            assert out["gt_roi_labels"][b][hit].item() == targets["labels"][b, g].item()
            assert (out["gt_roi_deltas"][b][hit] == 0).all()  # GT regresses onto itself
        # only the ground truth is foreground here
        assert (out["gt_roi_labels"][b] > 0).sum() == targets["box_valid"][b].sum()
    # the padded ground-truth row of image 1 never becomes a RoI
    assert not (out["roi_valid"][1] & (out["rois"][1] == 0).all(dim=-1)).any()


def test_without_append_gt_far_proposals_are_all_background():
    targets = _targets([[[10.0, 10.0, 50.0, 40.0]]], [[1]])
    proposals = torch.tensor(FAR)[None]
    out = _sampler(append_gt=False)(proposals, torch.ones(1, 3, dtype=torch.bool), targets)
    assert out["rois"].shape == (1, 3, 4)
    assert out["gt_roi_labels"].tolist() == [[0, 0, 0]]


def _jittered(box: list[float], count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` boxes within 2 px of ``box`` on each side (IoU > 0.5 for a 40 x 30 box)."""
    return torch.tensor(box) + (torch.rand(count, 4, generator=generator) * 4 - 2)


def test_sample_size_and_foreground_fraction():
    generator = torch.Generator().manual_seed(0)
    gt = [10.0, 10.0, 50.0, 40.0]
    fg = _jittered(gt, 10, generator)
    bg = torch.tensor([[100.0 + 5 * i, 100.0, 120.0 + 5 * i, 130.0] for i in range(20)])
    proposals = torch.stack((torch.cat((fg, bg)), torch.cat((bg, fg))))  # [2, 30, 4]
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, :25] = False  # image 1: 5 fg proposals + GT, no background
    targets = _targets([[gt], [gt]], [[2], [2]])
    assert (box_iou(fg, torch.tensor([gt])) > 0.5).all()
    for seed in range(3):
        torch.manual_seed(seed)
        out = _sampler(num_samples=16, positive_fraction=0.25)(proposals, valid, targets)
        assert out["rois"].shape == (2, 16, 4) and out["gt_roi_labels"].shape == (2, 16)
        labels, roi_valid = out["gt_roi_labels"], out["roi_valid"]
        # image 0: 11 fg candidates (10 + GT) -> 4 of them, 12 of the 20 bg
        assert (labels[0] == 2).sum() == 4 and (labels[0] == 0).sum() == 12 and roi_valid[0].all()
        # image 1: 6 fg candidates, no bg -> 4 fg, rest padding
        assert (labels[1] == 2).sum() == 4 and roi_valid[1].sum() == 4
        assert (labels[1][~roi_valid[1]] == -1).all()
        # foreground targets decode back onto the ground truth
        is_fg = labels > 0
        decoded = ROI_CODER.decode(out["rois"][is_fg], out["gt_roi_deltas"][is_fg])
        torch.testing.assert_close(decoded, torch.tensor(gt).expand_as(decoded))
        assert (out["gt_roi_deltas"][~is_fg] == 0).all()


def test_sampling_free_keeps_every_non_ignored_candidate_in_order():
    gt = [0.0, 0.0, 10.0, 10.0]
    proposals = torch.tensor(
        [
            [
                [50.0, 50.0, 60.0, 60.0],  # IoU 0: below 0.1 -> ignored
                [0.0, 0.0, 10.0, 2.5],  # IoU 0.25 -> background
                [1.0, 0.0, 11.0, 10.0],  # IoU 0.82 -> foreground
                [0.0, 0.0, 10.0, 10.0],  # padding (invalid)
                [0.0, 0.0, 10.0, 4.0],  # IoU 0.4 -> background
            ]
        ]
    )
    valid = torch.tensor([[True, True, True, False, True]])
    matcher = Matcher(thresholds=(0.1, 0.5), labels=(-1, 0, 1))
    out = _sampler(num_samples=None, matcher=matcher)(proposals, valid, _targets([[gt]], [[3]]))
    assert out["rois"].shape == (1, 6, 4)  # capacity: 5 proposals + 1 GT
    assert out["roi_valid"].tolist() == [[True, True, True, True, False, False]]
    kept = proposals[0, [1, 2, 4]].tolist() + [gt]
    assert out["rois"][0, :4].tolist() == kept
    assert out["gt_roi_labels"].tolist() == [[0, 3, 0, 3, -1, -1]]


def test_sampler_with_no_ground_truth_in_the_batch():
    proposals = torch.tensor(FAR).expand(3, 3, 4)
    valid = torch.tensor([[True, True, True], [True, False, True], [False, False, False]])
    targets = _targets([[], [], []], [[], [], []])
    out = _sampler(num_samples=8)(proposals, valid, targets)
    assert out["rois"].shape == (3, 3, 4) and out["gt_roi_labels"].dtype == torch.long
    assert out["roi_valid"].sum(dim=1).tolist() == [3, 2, 0]
    assert (out["gt_roi_labels"][out["roi_valid"]] == 0).all()
    assert (out["gt_roi_labels"][~out["roi_valid"]] == -1).all()
    assert (out["gt_roi_deltas"] == 0).all()
    # nothing at all to sample from
    empty = _sampler(num_samples=8)(
        torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), _targets([[], []], [[], []])
    )
    assert empty["rois"].shape == (2, 0, 4) and empty["gt_roi_labels"].shape == (2, 0)


# ----------------------------------------------------------------------------- ROIHead


def _head(channels=4, resolution=3, num_classes=3, hidden=16) -> ROIHead:
    return ROIHead(
        pooler=torchvision.ops.RoIAlign(resolution, 1.0 / 8, 2, True),
        box_head=MLPBoxHead(in_channels=channels, resolution=resolution, hidden_dim=hidden),
        num_classes=num_classes,
    )


@pytest.mark.parametrize(("batch", "num_rois"), [(1, 5), (2, 3), (3, 1), (2, 0)])
def test_roi_head_shapes(batch, num_rois):
    head = _head(num_classes=3)
    rois = torch.rand(batch, num_rois, 2) * 30
    rois = torch.cat((rois, rois + 10), dim=-1)
    logits, deltas = head(torch.randn(batch, 4, 6, 6), rois)
    assert logits.shape == (batch, num_rois, 4) and logits.dtype == torch.float32
    assert deltas.shape == (batch, num_rois, 12) and deltas.dtype == torch.float32


def test_roi_head_pools_each_roi_from_its_own_image():
    head = _head()
    features = torch.randn(3, 4, 6, 6)
    rois = torch.tensor([[5.0, 5.0, 30.0, 40.0], [0.0, 10.0, 20.0, 20.0]]).expand(3, 2, 4)
    logits, deltas = head(features, rois)
    assert not torch.allclose(logits[0], logits[1])  # same boxes, different images
    for b in range(3):
        one_logits, one_deltas = head(features[b : b + 1], rois[b : b + 1])
        torch.testing.assert_close(logits[b : b + 1], one_logits)
        torch.testing.assert_close(deltas[b : b + 1], one_deltas)


def _rois_with_padding(batch: int, num: int, counts: list[int]) -> tuple[torch.Tensor, ...]:
    """Random RoIs inside a 48 x 48 image; image i has ``counts[i]`` valid rows, scattered."""
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, num, 2, generator=generator) * 30
    rois = torch.cat((xy, xy + 4 + torch.rand(batch, num, 2, generator=generator) * 14), dim=-1)
    valid = torch.zeros(batch, num, dtype=torch.bool)
    for i, n in enumerate(counts):
        valid[i, torch.randperm(num, generator=generator)[:n]] = True
    return rois, valid


@pytest.mark.parametrize("counts", [[3, 0], [7, 2], [0, 0], [7, 7]])
def test_compacted_roi_head_equals_the_padded_one_on_valid_rows(counts):
    head = _head(num_classes=3)
    features = torch.randn(2, 4, 6, 6)
    rois, valid = _rois_with_padding(2, 7, counts)
    head.compact = False
    padded = head(features, rois, valid)
    head.compact = True
    compact = head(features, rois, valid)
    for full, small in zip(padded, compact, strict=True):
        assert small.shape == full.shape
        torch.testing.assert_close(small[valid], full[valid], rtol=1e-6, atol=1e-7)
        assert (small[~valid] == 0).all()


def test_compacted_roi_head_gives_the_padded_gradients_on_valid_rows():
    grads = {}
    features = torch.randn(2, 4, 6, 6)
    rois, valid = _rois_with_padding(2, 7, [5, 2])
    for compact in (False, True):
        torch.manual_seed(0)
        head = _head(num_classes=3)
        head.compact = compact
        logits, deltas = head(features, rois, valid)
        (logits[valid].square().sum() + deltas[valid].sum()).backward()
        grads[compact] = [p.grad for p in head.parameters()]
    for padded, compact in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(compact, padded, rtol=1e-5, atol=1e-6)


def test_roi_head_keeps_the_padded_path_while_exporting(monkeypatch):
    head = _head(num_classes=3)
    head.compact = True
    rois, valid = _rois_with_padding(2, 7, [3, 1])
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    logits, _ = head(torch.randn(2, 4, 6, 6), rois, valid)
    assert (logits[~valid] != 0).any()  # padding rows were scored: no compaction


class _Capture(nn.Module):
    """A box head that records the pooled features and passes them on flattened."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features
        self.pooled = None

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        self.pooled = pooled
        return pooled.flatten(1)


def test_roi_head_keeps_box_coordinates_exact_under_bf16_autocast():
    # a horizontal ramp f(x) = x - 135, exact in bf16; RoIs at x 130.4 .. 140.4 pool to values
    # around 0.4. Rounding the RoIs to bf16 (step 1 px at x in [128, 256)) would shift them by 0.4.
    ramp = (torch.arange(160.0) - 135).expand(1, 1, 8, 160)
    pooler = torchvision.ops.RoIAlign((2, 2), 1.0, 2, True)
    head = ROIHead(pooler=pooler, box_head=_Capture(4), num_classes=1)
    rois = torch.tensor([[[130.4, 1.3, 140.4, 6.6]]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        head(ramp.to(torch.bfloat16), rois)
    reference = pooler(ramp, torch.tensor([[0.0, 130.4, 1.3, 140.4, 6.6]]))
    torch.testing.assert_close(head.box_head.pooled.float(), reference, atol=0.05, rtol=0)


# ----------------------------------------------------------------------------- ROICriterion


def _roi_outputs(labels: list[list[int]], num_classes: int = 3, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    labels_t = torch.tensor(labels)
    b, s = labels_t.shape
    return {
        "gt_roi_labels": labels_t,
        "pred_roi_logits": torch.randn(b, s, num_classes + 1, generator=generator),
        "pred_roi_deltas": torch.randn(b, s, 4 * num_classes, generator=generator),
        "gt_roi_deltas": torch.zeros(b, s, 4),
    }


def test_roi_box_loss_uses_only_the_ground_truth_class_deltas():
    outputs = _roi_outputs([[3, 0, -1, 1]])  # K = 3: fg of class 3, bg, padding, fg of class 1
    targets = torch.tensor([[0.3, -0.2, 0.1, 0.4], [-0.5, 0.2, 0.0, 0.1]])
    outputs["gt_roi_deltas"][0, [0, 3]] = targets
    deltas = torch.full((1, 4, 3, 4), 100.0)  # garbage everywhere ...
    deltas[0, 0, 2] = targets[0]  # ... except class 3's slot of RoI 0
    deltas[0, 3, 0] = targets[1]  # ... and class 1's slot of RoI 3
    outputs["pred_roi_deltas"] = deltas.flatten(2)
    criterion = ROICriterion(cls_loss=CrossEntropy())
    assert criterion(outputs)["loss_box"].item() == 0.0
    deltas[0, 0, 2, 2] += 0.5  # dw off by 0.5: smooth L1 (beta 1) = 0.5 * 0.5^2 = 0.125
    outputs["pred_roi_deltas"] = deltas.flatten(2)
    # normalised by the three used RoIs (two fg, one bg); the padding RoI does not count
    assert criterion(outputs)["loss_box"].item() == pytest.approx(0.125 / 3, rel=1e-6)
    by_pos = ROICriterion(cls_loss=CrossEntropy(), normalize_by_positives=True)
    assert by_pos(outputs)["loss_box"].item() == pytest.approx(0.125 / 2, rel=1e-6)


def test_roi_classification_loss_is_the_mean_over_used_rois():
    outputs = _roi_outputs([[1, 0, 3, -1], [0, -1, -1, -1], [2, 2, 0, 0]])
    # padding must not count
    outputs["pred_roi_logits"][0, 3] = torch.tensor([50.0, -50.0, 0.0, 0.0])
    labels = outputs["gt_roi_labels"]
    used = labels >= 0
    expected = F.cross_entropy(outputs["pred_roi_logits"][used], labels[used])
    losses = ROICriterion(cls_loss=CrossEntropy())(outputs)
    assert set(losses) == {"loss_cls", "loss_box"}
    torch.testing.assert_close(losses["loss_cls"], expected)
    by_pos = ROICriterion(cls_loss=CrossEntropy(), normalize_by_positives=True)(outputs)
    expected_sum = F.cross_entropy(outputs["pred_roi_logits"][used], labels[used], reduction="sum")
    torch.testing.assert_close(by_pos["loss_cls"], expected_sum / 4)  # four foreground RoIs


def test_roi_focal_with_gamma_zero_equals_cross_entropy():
    outputs = _roi_outputs([[1, 0, 3, -1], [0, 2, -1, -1]])
    for by_pos in (False, True):
        ce = ROICriterion(cls_loss=CrossEntropy(), normalize_by_positives=by_pos)(outputs)
        focal = ROICriterion(
            cls_loss=SoftmaxFocalLoss(alpha=None, gamma=0.0), normalize_by_positives=by_pos
        )(outputs)
        for name in ce:
            torch.testing.assert_close(focal[name], ce[name], rtol=1e-6, atol=0)


def test_roi_focal_down_weights_easy_rois():
    outputs = _roi_outputs([[1, 0, 3, 2]], num_classes=3)
    labels = outputs["gt_roi_labels"]

    def ratio(margin: float) -> float:
        # the target logit is ``margin``, the other three 0: p_t = e^m / (e^m + 3)
        outputs["pred_roi_logits"] = F.one_hot(labels, 4).float() * margin
        focal = ROICriterion(cls_loss=SoftmaxFocalLoss(gamma=2.0))(outputs)["loss_cls"]
        ce = ROICriterion(cls_loss=CrossEntropy())(outputs)["loss_cls"]
        return (focal / ce).item()

    def modulating(margin: float) -> float:
        return (1.0 - math.exp(margin) / (math.exp(margin) + 3.0)) ** 2

    assert ratio(6.0) == pytest.approx(modulating(6.0), rel=1e-4)  # easy: ~5e-5
    assert ratio(-1.0) == pytest.approx(modulating(-1.0), rel=1e-4)  # hard: ~0.84
    assert ratio(6.0) < 1e-3 < 0.5 < ratio(-1.0)


def test_roi_losses_without_foreground():
    outputs = _roi_outputs([[0, 0, -1], [-1, -1, -1]])
    logits = outputs["pred_roi_logits"].requires_grad_(True)
    deltas = outputs["pred_roi_deltas"].requires_grad_(True)
    for by_pos in (False, True):
        losses = ROICriterion(cls_loss=SoftmaxFocalLoss(), normalize_by_positives=by_pos)(outputs)
        assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
        assert losses["loss_box"].item() == 0.0
        sum(losses.values()).backward()
        assert torch.isfinite(logits.grad).all() and (deltas.grad == 0).all()
        logits.grad = deltas.grad = None
