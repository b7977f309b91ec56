"""Tests for Soft-NMS (detector/modeling/postprocess.py: ``soft_nms`` and
``DetectionPostprocessor(nms=linear|gaussian)``): hand-computed decays, the min-score drop, the
sigma -> 0 limit, and a plain-loop reference on random cases."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision

from detector.errors import UserError
from detector.modeling.postprocess import DetectionPostprocessor, soft_nms
from detector.ops.boxes import BoxCoder

# two boxes of area 100 overlapping by 75: IoU 75 / 125 = 0.6
A, B = [0.0, 0.0, 10.0, 10.0], [0.0, 2.5, 10.0, 12.5]
FAR = [50.0, 50.0, 60.0, 60.0]


def _soft(boxes, scores, groups=None, **kwargs):
    kwargs = {"method": "linear", "iou_threshold": 0.5, "sigma": 0.5, "min_score": 1e-3} | kwargs
    scores = torch.tensor(scores)
    groups = torch.zeros(len(scores), dtype=torch.long) if groups is None else torch.tensor(groups)
    return soft_nms(torch.tensor(boxes), scores, groups, **kwargs)


def test_linear_decays_an_overlap_above_the_threshold_by_one_minus_iou():
    keep, scores = _soft([A, B, FAR], [0.9, 0.8, 0.7])
    assert keep.tolist() == [True, True, True]
    assert scores.tolist() == pytest.approx([0.9, 0.8 * (1 - 0.6), 0.7], rel=1e-5)
    # IoU 0.6 is not above 0.7: no decay
    _, scores = _soft([A, B], [0.9, 0.8], iou_threshold=0.7)
    assert scores.tolist() == pytest.approx([0.9, 0.8], rel=1e-6)


def test_gaussian_decays_by_exp_of_minus_iou_squared_over_sigma():
    keep, scores = _soft([A, B, FAR], [0.9, 0.8, 0.7], method="gaussian", sigma=0.5)
    assert keep.tolist() == [True, True, True]
    assert scores.tolist() == pytest.approx([0.9, 0.8 * math.exp(-0.36 / 0.5), 0.7], rel=1e-5)


def test_boxes_decayed_below_min_score_are_dropped_and_groups_are_separate():
    # linear: 0.8 * 0.4 = 0.32 < 0.5 -> dropped; the same box in another group is untouched
    keep, scores = _soft([A, B, B], [0.9, 0.8, 0.8], groups=[0, 0, 1], min_score=0.5)
    assert keep.tolist() == [True, False, True]
    assert scores[[0, 2]].tolist() == pytest.approx([0.9, 0.8], rel=1e-6)


def test_decay_is_sequential_over_picks():
    # C overlaps B at IoU 55 / 145 > 0.3 and A at 30 / 170 < 0.3; after A's pick B is
    # 0.8 * 0.4 = 0.32 < C's 0.7, so C is picked next and decays B again
    c = [0.0, 7.0, 10.0, 17.0]
    _, scores = _soft([A, B, c], [0.9, 0.8, 0.7], iou_threshold=0.3)
    assert scores.tolist() == pytest.approx([0.9, 0.8 * 0.4 * (1 - 55 / 145), 0.7], rel=1e-5)


def test_gaussian_with_tiny_sigma_is_hard_nms_at_iou_zero():
    # A and B overlap (0.6), B and C a little (15 / 185), A and C not, D is apart: hard NMS at
    # IoU 0 drops B (A's overlap) and keeps C (B, suppressed, suppresses nothing)
    boxes, scores = [A, B, [0.0, 11.0, 10.0, 21.0], FAR], [0.9, 0.8, 0.7, 0.6]
    keep, new = _soft(boxes, scores, method="gaussian", sigma=1e-6)
    assert keep.tolist() == [True, False, True, True]
    assert new[keep].tolist() == pytest.approx([0.9, 0.7, 0.6], rel=1e-6)
    hard = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), 0.0)
    assert hard.tolist() == keep.nonzero().squeeze(1).tolist()


def _iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _reference(boxes, scores, groups, method, nt, sigma, min_score):
    """The paper's algorithm, one group at a time, plain Python: {index: final score}."""
    out = {}
    for g in set(groups):
        live = {i: scores[i] for i in range(len(scores)) if groups[i] == g and scores[i] >= min_score}
        while live:
            best = max(live, key=lambda i: (live[i], -i))
            out[best] = live.pop(best)
            for i in list(live):
                o = _iou(boxes[best], boxes[i])
                w = (1 - o if o > nt else 1.0) if method == "linear" else math.exp(-o * o / sigma)
                live[i] *= w
                if live[i] < min_score:
                    del live[i]
    return out


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_matches_a_plain_loop_reference_on_random_cases(method):
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 25, (1,), generator=gen))
        xy = torch.rand(n, 2, generator=gen) * 40
        wh = torch.rand(n, 2, generator=gen) * 30 + 1
        boxes = torch.cat([xy, xy + wh], dim=1).double()
        scores = torch.rand(n, generator=gen).double()
        groups = torch.randint(0, 3, (n,), generator=gen)
        keep, new = soft_nms(boxes, scores, groups, method=method, iou_threshold=0.3,
                             sigma=0.5, min_score=0.05)
        ref = _reference(boxes.tolist(), scores.tolist(), groups.tolist(), method, 0.3, 0.5, 0.05)
        assert sorted(keep.nonzero().squeeze(1).tolist()) == sorted(ref)
        for i, s in ref.items():
            assert new[i].item() == pytest.approx(s, rel=1e-9)


def _post(**kwargs) -> DetectionPostprocessor:
    return DetectionPostprocessor(box_coder=BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)), **kwargs)


def test_postprocessor_soft_nms_returns_decayed_scores_best_first():
    rois = torch.tensor([[A, B, FAR]]) + 20  # inside a 100 x 100 image
    probs = torch.tensor([[[0.1, 0.9, 1e-6], [0.2, 0.8, 1e-6], [0.3, 0.7, 1e-6]]])
    post = _post(nms="linear", nms_threshold=0.5)
    det = post(rois, torch.ones(1, 3, dtype=torch.bool), probs.log(), torch.zeros(1, 3, 8),
               torch.tensor([[100, 100]]))[0]
    assert det["labels"].tolist() == [1, 1, 1]
    assert det["scores"].tolist() == pytest.approx([0.9, 0.7, 0.8 * 0.4], rel=1e-4)
    torch.testing.assert_close(det["boxes"], rois[0, [0, 2, 1]])
    hard = _post()(rois, torch.ones(1, 3, dtype=torch.bool), probs.log(), torch.zeros(1, 3, 8),
                   torch.tensor([[100, 100]]))[0]
    assert hard["scores"].tolist() == pytest.approx([0.9, 0.7], rel=1e-4)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"nms": "soft"}, "nms must be one of hard, linear, gaussian, got 'soft'"),
    ({"nms": "gaussian", "soft_nms_sigma": 0.0}, "soft_nms_sigma must be > 0"),
])
def test_bad_options_are_user_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        _post(**kwargs)


def test_empty_input():
    keep, scores = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                            method="linear", iou_threshold=0.5, sigma=0.5, min_score=1e-3)
    assert keep.shape == (0,) and scores.shape == (0,)


def test_export_refuses_soft_nms(monkeypatch):
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    rois = torch.tensor([[A, B]]) + 20
    with pytest.raises(UserError, match="nms=gaussian \\(Soft-NMS\\) cannot be exported to ONNX"):
        _post(nms="gaussian")(rois, torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, 3),
                              torch.zeros(1, 2, 8), torch.tensor([[100, 100]]))


def test_description_ranges_refuse_a_zero_sigma():
    from detector.modeling.spec_checks import SpecError, check_spec
    check_spec({"nms": "linear", "soft_nms_sigma": 0.5, "soft_nms_min_score": 0.001},
               constructors={}, path="model")
    with pytest.raises(SpecError, match="model.soft_nms_sigma must be a number in"):
        check_spec({"soft_nms_sigma": 0.0}, constructors={}, path="model")


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_cuda_matches_cpu(method, cuda_device):
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(200, 2, generator=gen) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=gen) * 50 + 1], dim=1)
    scores, groups = torch.rand(200, generator=gen), torch.randint(0, 6, (200,), generator=gen)
    kwargs = {"method": method, "iou_threshold": 0.3, "sigma": 0.5, "min_score": 0.01}
    keep, new = soft_nms(boxes, scores, groups, **kwargs)
    keep_c, new_c = soft_nms(boxes.to(cuda_device), scores.to(cuda_device),
                             groups.to(cuda_device), **kwargs)
    assert keep_c.cpu().tolist() == keep.tolist()
    torch.testing.assert_close(new_c.cpu()[keep], new[keep])


def test_exporting_a_soft_nms_model_is_refused_in_one_sentence(tmp_path):
    from helpers.tiny_checkpoint import tiny_model_spec

    from detector.modeling.spec import build_from_spec
    from detector.predict.onnx_export import export_onnx

    model = build_from_spec(tiny_model_spec(4) | {"nms": "linear"}).eval()
    with pytest.raises(UserError, match=r"^nms=linear \(Soft-NMS\) cannot be exported to ONNX"):
        export_onnx(model, tmp_path / "model.onnx", height=64, width=64)
