"""Tests for detector/modeling/postprocess.py: score threshold, class-wise and per-image NMS,
max_detections, class-specific decoding, clipping and the mapping back to original pixels."""

from __future__ import annotations

import pytest
import torch

from detector.modeling.postprocess import DetectionPostprocessor, boxes_to_original
from detector.ops.boxes import BoxCoder

K = 2  # foreground classes in these hand cases


def _post(**kwargs) -> DetectionPostprocessor:
    return DetectionPostprocessor(box_coder=BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), **kwargs)


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """Class probabilities (background first) of each RoI of one image -> logits [1, R, K + 1]."""
    return torch.tensor(probs).log()[None]


def _run(post, rois, probs, deltas=None, sizes=((100, 100),), valid=None, scales=None):
    rois = torch.tensor(rois)[None] if not torch.is_tensor(rois) else rois
    logits = _logits(probs) if not torch.is_tensor(probs) else probs
    b, r = rois.shape[:2]
    deltas = torch.zeros(b, r, 4 * K) if deltas is None else deltas
    valid = torch.ones(b, r, dtype=torch.bool) if valid is None else valid
    return post(rois, valid, logits, deltas, torch.tensor(sizes), scales)


def test_score_threshold_drops_low_class_scores():
    dets = _run(_post(score_threshold=0.05), [[10.0, 10.0, 30.0, 30.0]], [[0.90, 0.04, 0.06]])
    assert len(dets) == 1
    assert dets[0]["labels"].tolist() == [2]
    assert dets[0]["scores"].tolist() == pytest.approx([0.06], rel=1e-5)
    torch.testing.assert_close(dets[0]["boxes"], torch.tensor([[10.0, 10.0, 30.0, 30.0]]))


def test_classwise_nms_keeps_other_classes_and_suppresses_the_same_class():
    rois = [[10.0, 10.0, 50.0, 50.0], [12.0, 12.0, 52.0, 52.0], [11.0, 11.0, 51.0, 51.0]]
    probs = [[0.098, 0.900, 0.002], [0.198, 0.002, 0.800], [0.298, 0.700, 0.002]]
    det = _run(_post(nms_threshold=0.5), rois, probs)[0]
    # RoI 1 (class 2) overlaps RoI 0 (class 1) at IoU 0.83 and survives; RoI 2 (class 1,
    # IoU 0.91 with RoI 0) is suppressed
    assert det["labels"].tolist() == [1, 2]
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8], rel=1e-5)
    torch.testing.assert_close(det["boxes"], torch.tensor(rois[:2]))
    det = _run(_post(nms_threshold=0.95), rois, probs)[0]
    assert det["labels"].tolist() == [1, 2, 1]
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7], rel=1e-5)


def test_max_detections_keeps_the_best_scores_in_order():
    rois = [[40.0 * i, 0.0, 40.0 * i + 30.0, 30.0] for i in range(5)]
    fg = [0.9, 0.5, 0.7, 0.3, 0.8]
    probs = [[0.999 - p, p, 0.001] for p in fg]
    det = _run(_post(max_detections=3), rois, probs, sizes=((100, 300),))[0]
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7], rel=1e-5)
    torch.testing.assert_close(det["boxes"], torch.tensor(rois)[[0, 4, 2]])
    assert len(_run(_post(max_detections=100), rois, probs, sizes=((100, 300),))[0]["boxes"]) == 5


def test_deltas_of_each_class_decode_their_own_box():
    deltas = torch.zeros(1, 1, 4 * K)
    deltas[0, 0, 4] = 1.0  # class 2: dx = 1 / 10 of the width -> +2 px
    det = _run(_post(), [[0.0, 0.0, 20.0, 20.0]], [[0.2, 0.3, 0.5]], deltas=deltas)[0]
    assert det["labels"].tolist() == [2, 1]
    torch.testing.assert_close(
        det["boxes"], torch.tensor([[2.0, 0.0, 22.0, 20.0], [0.0, 0.0, 20.0, 20.0]])
    )


def test_boxes_are_clipped_to_each_image():
    rois = torch.tensor([[[50.0, 50.0, 90.0, 90.0]], [[50.0, 50.0, 90.0, 90.0]]])
    logits = torch.cat((_logits([[0.1, 0.9, 1e-4]]), _logits([[0.1, 0.9, 1e-4]])))
    dets = _run(_post(), rois, logits, sizes=((100, 100), (70, 60)))
    torch.testing.assert_close(dets[0]["boxes"], torch.tensor([[50.0, 50.0, 90.0, 90.0]]))
    torch.testing.assert_close(dets[1]["boxes"], torch.tensor([[50.0, 50.0, 60.0, 70.0]]))


def test_boxes_are_mapped_back_to_original_pixels():
    # resized = original * (sy, sx) with (sy, sx) = (0.5, 2.0): x / 2, y * 2
    det = _run(
        _post(), [[20.0, 10.0, 60.0, 30.0]], [[0.1, 0.9, 1e-4]], scales=torch.tensor([[0.5, 2.0]])
    )[0]
    torch.testing.assert_close(det["boxes"], torch.tensor([[10.0, 20.0, 30.0, 60.0]]))
    boxes = torch.tensor([[[20.0, 10.0, 60.0, 30.0]], [[3.0, 6.0, 9.0, 12.0]]])
    scales = torch.tensor([[0.5, 2.0], [3.0, 3.0]])
    expected = torch.tensor([[[10.0, 20.0, 30.0, 60.0]], [[1.0, 2.0, 3.0, 4.0]]])
    torch.testing.assert_close(boxes_to_original(boxes, scales), expected)


def test_nms_never_crosses_images_and_padding_rois_are_ignored():
    rois = torch.tensor([[10.0, 10.0, 50.0, 50.0], [70.0, 10.0, 90.0, 40.0]]).expand(3, 2, 4)
    probs = [[0.1, 0.9, 1e-4], [0.3, 0.7, 1e-4]]
    logits = torch.cat(
        (_logits(probs), _logits(probs) + torch.tensor([0.0, 1.0, 0.0]), _logits(probs))
    )
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    dets = _run(_post(), rois, logits, sizes=((100, 100),) * 3, valid=valid)
    assert [len(d["boxes"]) for d in dets] == [2, 1, 0]
    torch.testing.assert_close(dets[0]["boxes"], rois[0])
    torch.testing.assert_close(dets[1]["boxes"], rois[1, :1])
    assert dets[2]["boxes"].shape == (0, 4) and dets[2]["labels"].shape == (0,)
    for det in dets:
        assert det["boxes"].dtype == torch.float32 and det["scores"].dtype == torch.float32
        assert det["labels"].dtype == torch.long


def test_tiny_boxes_are_dropped():
    det = _run(
        _post(min_size=1.0),
        [[10.0, 10.0, 10.5, 30.0], [0.0, 0.0, 8.0, 8.0]],
        [[0.1, 0.9, 1e-4], [0.2, 0.8, 1e-4]],
    )[0]
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
