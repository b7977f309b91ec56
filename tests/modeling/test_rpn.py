"""Tests for detector/modeling/rpn.py: RPN head layout and initialisation, anchor masks, proposal
generation (clipping, top-k, per-image NMS) and the RPN criterion (hand-computed losses)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detector.modeling.rpn import ProposalGenerator, RPNCriterion, RPNHead, anchors_inside
from detector.ops.boxes import BoxCoder
from detector.ops.losses import BinaryCrossEntropy, SigmoidFocalLoss
from detector.ops.matcher import Matcher

# ----------------------------------------------------------------------------- RPNHead


@pytest.mark.parametrize(("batch", "hf", "wf"), [(1, 3, 5), (2, 4, 4), (3, 2, 7)])
def test_rpn_head_shapes_and_location_major_layout(batch, hf, wf):
    num_anchors = 3
    head = RPNHead(in_channels=8, num_anchors=num_anchors, conv_channels=6)
    features = torch.randn(batch, 8, hf, wf)
    logits, deltas = head(features)
    assert logits.shape == (batch, hf * wf * num_anchors) and logits.dtype == torch.float32
    assert deltas.shape == (batch, hf * wf * num_anchors, 4) and deltas.dtype == torch.float32
    # index (y * Wf + x) * a + j holds anchor j of cell (y, x), as in detector.ops.anchors
    hidden = torch.relu(head.conv(features))
    raw_logits = head.objectness(hidden)  # [B, a, Hf, Wf]
    raw_deltas = head.deltas(hidden).view(batch, num_anchors, 4, hf, wf)
    for y, x, j in [(0, 0, 0), (hf - 1, wf - 1, num_anchors - 1), (hf // 2, wf - 1, 1)]:
        index = (y * wf + x) * num_anchors + j
        torch.testing.assert_close(logits[:, index], raw_logits[:, j, y, x])
        torch.testing.assert_close(deltas[:, index], raw_deltas[:, j, :, y, x])


def test_rpn_head_objectness_prior_sets_the_starting_probability():
    head = RPNHead(in_channels=16, num_anchors=9, objectness_prior=0.01)
    expected_bias = torch.full((9,), -math.log(99.0))
    torch.testing.assert_close(head.objectness.bias.data, expected_bias)
    logits, _ = head(torch.randn(2, 16, 5, 6))
    # conv weights are N(0, 0.01): every anchor starts within a hair of p = 0.01
    torch.testing.assert_close(
        torch.sigmoid(logits), torch.full_like(logits, 0.01), atol=1e-3, rtol=0
    )


def test_rpn_head_without_prior_starts_at_one_half_and_rejects_bad_priors():
    head = RPNHead(in_channels=4, num_anchors=2)
    assert (head.objectness.bias == 0).all()
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="objectness_prior"):
            RPNHead(in_channels=4, num_anchors=2, objectness_prior=bad)


# ----------------------------------------------------------------------------- anchors_inside


def test_anchors_inside_centre_rule_and_border_rule():
    anchors = torch.tensor(
        [
            [-10.0, -10.0, 10.0, 10.0],  # centre (0, 0): inside; crosses the border
            [50.0, 10.0, 70.0, 20.0],  # centre x 60 inside a 64-wide image, x2 beyond it
            [60.0, 50.0, 80.0, 60.0],  # centre x 70: outside a 64-wide image
            [2.0, 2.0, 30.0, 30.0],  # fully inside
        ]
    )
    sizes = torch.tensor([[64, 64], [32, 80]])  # (h, w)
    assert anchors_inside(anchors, sizes).tolist() == [
        [True, True, False, True],
        [True, True, False, True],  # image 1 is 32 high: anchor 2 (centre y 55) is out anyway
    ]
    assert anchors_inside(anchors, sizes, border=0.0).tolist() == [
        [False, False, False, True],
        [False, True, False, True],
    ]
    assert anchors_inside(anchors, sizes, border=10.0).tolist() == [
        [True, True, False, True],
        [True, True, False, True],
    ]


# ----------------------------------------------------------------------------- ProposalGenerator


def _generator(**kwargs) -> ProposalGenerator:
    kwargs = {"pre_nms_top_n": (100, 100), "post_nms_top_n": (100, 100), **kwargs}
    return ProposalGenerator(box_coder=BoxCoder(), **kwargs)


def test_proposals_are_clipped_to_each_images_own_size():
    anchors = torch.tensor([[-20.0, -20.0, 100.0, 100.0], [5.0, 5.0, 25.0, 15.0]])
    sizes = torch.tensor([[40, 60], [64, 30]])  # (h, w)
    logits = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    boxes, scores, valid = _generator().eval()(anchors, logits, torch.zeros(2, 2, 4), sizes)
    assert valid.all()
    torch.testing.assert_close(
        boxes[0], torch.tensor([[0.0, 0.0, 60.0, 40.0], [5.0, 5.0, 25.0, 15.0]])
    )
    torch.testing.assert_close(
        boxes[1], torch.tensor([[0.0, 0.0, 30.0, 64.0], [5.0, 5.0, 25.0, 15.0]])
    )
    torch.testing.assert_close(scores, logits)


def test_proposals_decode_the_deltas_of_their_own_anchor():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 30.0]])
    deltas = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, math.log(2.0), 0.0]]])
    logits = torch.tensor([[0.0, 1.0]])  # anchor 1 first
    boxes, _, valid = _generator().eval()(anchors, logits, deltas, torch.tensor([[100, 100]]))
    # anchor 1: centre (30, 25), 20 x 10 -> centre x + 0.5 * 20 = 40, width doubled to 40
    torch.testing.assert_close(
        boxes[0], torch.tensor([[20.0, 20.0, 60.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    )
    assert valid.all()


def _grid_anchors(count: int) -> torch.Tensor:
    """``count`` disjoint 10 x 10 anchors along a row, 20 px apart."""
    x1 = torch.arange(count, dtype=torch.float32) * 20
    return torch.stack((x1, torch.zeros(count), x1 + 10, torch.full((count,), 10.0)), dim=1)


def test_proposals_keep_at_most_post_nms_top_n_per_image_best_first():
    anchors = _grid_anchors(10)
    logits = torch.stack((torch.arange(10.0), -torch.arange(10.0)))  # opposite orders
    generator = _generator(post_nms_top_n=(4, 2))
    sizes = torch.tensor([[20, 200], [20, 200]])
    boxes, scores, valid = generator.train()(anchors, logits, torch.zeros(2, 10, 4), sizes)
    assert boxes.shape == (2, 4, 4) and valid.all()
    assert scores.tolist() == [[9.0, 8.0, 7.0, 6.0], [0.0, -1.0, -2.0, -3.0]]
    torch.testing.assert_close(boxes[0], anchors[[9, 8, 7, 6]])
    torch.testing.assert_close(boxes[1], anchors[[0, 1, 2, 3]])
    boxes, scores, valid = generator.eval()(anchors, logits, torch.zeros(2, 10, 4), sizes)
    assert boxes.shape == (2, 2, 4) and scores.tolist() == [[9.0, 8.0], [0.0, -1.0]]


def test_proposals_pre_nms_top_n_limits_the_candidates():
    anchors = _grid_anchors(6)
    logits = torch.arange(6.0)[None]
    generator = _generator(pre_nms_top_n=(5, 3))
    _, scores, valid = generator.eval()(
        anchors, logits, torch.zeros(1, 6, 4), torch.tensor([[20, 200]])
    )
    assert scores.tolist() == [[5.0, 4.0, 3.0]] and valid.all()


def _overlapping_anchors() -> torch.Tensor:
    # anchors 0 and 1 overlap at IoU 361 / 439 = 0.82; anchor 2 is far away
    return torch.tensor([[0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 21.0, 21.0], [40.0, 40.0, 60.0, 60.0]])


def test_proposal_nms_is_per_image():
    anchors = _overlapping_anchors()
    # image 1 scores the same boxes higher: a batch-wide NMS would let it suppress image 0's
    logits = torch.tensor([[3.0, 2.0, 1.0], [5.0, 4.0, 0.0]])
    sizes = torch.tensor([[64, 64], [64, 64]])
    boxes, scores, valid = _generator().eval()(anchors, logits, torch.zeros(2, 3, 4), sizes)
    assert valid.tolist() == [[True, True, False], [True, True, False]]
    assert scores[:, :2].tolist() == [[3.0, 1.0], [5.0, 0.0]]
    torch.testing.assert_close(boxes[:, :2], anchors[[0, 2]].expand(2, 2, 4))
    # padding: zero boxes, -inf scores
    assert (boxes[:, 2] == 0).all() and (scores[:, 2] == -math.inf).all()


def test_nms_in_training_false_keeps_overlapping_proposals_in_training_only():
    anchors = _overlapping_anchors()
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    sizes = torch.tensor([[64, 64]])
    generator = _generator(nms_in_training=False)
    boxes, scores, valid = generator.train()(anchors, logits, torch.zeros(1, 3, 4), sizes)
    assert valid.all() and scores.tolist() == [[3.0, 2.0, 1.0]]
    torch.testing.assert_close(boxes[0], anchors)
    _, _, valid = generator.eval()(anchors, logits, torch.zeros(1, 3, 4), sizes)
    assert valid.tolist() == [[True, True, False]]  # inference always runs NMS
    _, _, valid = _generator(nms_in_training=True).train()(
        anchors, logits, torch.zeros(1, 3, 4), sizes
    )
    assert valid.tolist() == [[True, True, False]]


def test_proposals_drop_boxes_below_min_size():
    # anchor 0 lies right of a 64-wide image: clipped to zero width; anchor 1 is 0.5 px wide
    anchors = torch.tensor(
        [[70.0, 0.0, 90.0, 20.0], [10.0, 10.0, 10.5, 30.0], [0.0, 0.0, 8.0, 8.0]]
    )
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    args = (anchors, logits, torch.zeros(1, 3, 4), torch.tensor([[64, 64]]))
    _, scores, valid = _generator().eval()(*args)
    assert valid.tolist() == [[True, True, False]] and scores[0, :2].tolist() == [2.0, 1.0]
    _, scores, valid = _generator(min_size=1.0).eval()(*args)
    assert valid.tolist() == [[True, False, False]] and scores[0, 0] == 1.0


def test_proposals_are_detached():
    logits = torch.zeros(1, 3, requires_grad=True)
    deltas = torch.zeros(1, 3, 4, requires_grad=True)
    boxes, scores, _ = _generator().train()(
        _overlapping_anchors(), logits, deltas, torch.tensor([[64, 64]])
    )
    assert not boxes.requires_grad and not scores.requires_grad


# ----------------------------------------------------------------------------- RPNCriterion

# Six anchors against one ground truth [0, 0, 10, 10] in a 64 x 64 image, RPN matcher (0.3, 0.7):
HAND_ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # IoU 1            -> foreground
        [1.0, 0.0, 11.0, 10.0],  # IoU 90/110       -> foreground, target dx = (5 - 6) / 10
        [0.0, 0.0, 10.0, 6.0],  # IoU 0.6          -> ignored
        [0.0, 0.0, 5.0, 5.0],  # IoU 0.25         -> background
        [20.0, 20.0, 30.0, 30.0],  # IoU 0            -> background
        [40.0, 40.0, 50.0, 50.0],  # IoU 0            -> background
    ]
)
HAND_TARGETS = [1, 1, None, 0, 0, 0]  # None = ignored
# foreground anchors of the two-image batch below (image 1 has no boxes)
HAND_FG = torch.tensor([[True, True, False, False, False, False], [False] * 6])


def _rpn_matcher() -> Matcher:
    return Matcher(thresholds=(0.3, 0.7), labels=(0, -1, 1), allow_low_quality_matches=True)


def _criterion(cls_loss, num_samples=None, **kwargs) -> RPNCriterion:
    return RPNCriterion(
        matcher=_rpn_matcher(),
        box_coder=BoxCoder(),
        cls_loss=cls_loss,
        num_samples=num_samples,
        **kwargs,
    )


def _hand_batch():
    """Image 0 holds the ground truth; image 1 has none (a padded, invalid row)."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.3, -2.0, 1.5], [0.7, -0.4, 1.2, -3.0, 0.0, 2.5]])
    deltas = torch.zeros(2, 6, 4)
    deltas[0, 0] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # foreground: |0.5| > beta, L1 branch
    deltas[0, 4] = 1.0  # background anchor: its deltas must not count
    deltas[1] = 3.0  # image without boxes: nothing to regress
    outputs = {
        "anchors": HAND_ANCHORS,
        "pred_rpn_logits": logits,
        "pred_rpn_deltas": deltas,
        "image_sizes": torch.tensor([[64, 64], [64, 64]]),
    }
    targets = {
        "boxes": torch.tensor([[[0.0, 0.0, 10.0, 10.0]], [[0.0, 0.0, 0.0, 0.0]]]),
        "box_valid": torch.tensor([[True], [False]]),
    }
    return outputs, targets


def _focal(logit: float, target: int, alpha: float | None, gamma: float) -> float:
    """Binary focal loss of one anchor, straight from the paper's formula."""
    p = 1.0 / (1.0 + math.exp(-logit))
    p_t = p if target == 1 else 1.0 - p
    alpha_t = 1.0 if alpha is None else (alpha if target == 1 else 1.0 - alpha)
    return -alpha_t * (1.0 - p_t) ** gamma * math.log(p_t)


def _smooth_l1(d: float, beta: float) -> float:
    return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta


def test_sampling_free_focal_rpn_loss_is_normalised_by_positives():
    outputs, targets = _hand_batch()
    losses = _criterion(SigmoidFocalLoss(alpha=0.25, gamma=2.0))(outputs, targets)
    logits = outputs["pred_rpn_logits"].tolist()
    total = sum(
        _focal(x, t, 0.25, 2.0)
        for x, t in zip(logits[0], HAND_TARGETS, strict=True)
        if t is not None
    )
    total += sum(_focal(x, 0, 0.25, 2.0) for x in logits[1])  # no boxes: all background
    num_pos = 2
    assert losses["loss_rpn_cls"].dtype == torch.float32
    assert losses["loss_rpn_cls"].item() == pytest.approx(total / num_pos, rel=1e-5)
    beta = 1.0 / 9
    box = _smooth_l1(0.5, beta) + _smooth_l1(-0.1 - 0.0, beta)  # anchor 0 (pred 0.5), anchor 1
    assert losses["loss_rpn_box"].item() == pytest.approx(box / num_pos, rel=1e-5)


def test_sampled_rpn_loss_is_normalised_by_sampled_anchors():
    outputs, targets = _hand_batch()
    # 256 per image exceeds the candidates: every non-ignored anchor is drawn (5 + 6 of them)
    losses = _criterion(BinaryCrossEntropy(), num_samples=256)(outputs, targets)
    logits = outputs["pred_rpn_logits"].tolist()
    total = sum(
        _focal(x, t, None, 0.0)
        for x, t in zip(logits[0], HAND_TARGETS, strict=True)
        if t is not None
    )
    total += sum(_focal(x, 0, None, 0.0) for x in logits[1])
    assert losses["loss_rpn_cls"].item() == pytest.approx(total / 11, rel=1e-5)
    box = _smooth_l1(0.5, 1.0 / 9) + _smooth_l1(-0.1, 1.0 / 9)
    assert losses["loss_rpn_box"].item() == pytest.approx(box / 11, rel=1e-5)


def test_sampled_rpn_loss_with_a_small_sample():
    # 2 per image at half foreground: image 0 draws 1 fg + 1 bg, image 1 (no boxes) 2 bg. All fg
    # anchors share one logit and all bg anchors another, so the loss does not depend on the draw.
    outputs, targets = _hand_batch()
    outputs["pred_rpn_logits"] = torch.where(HAND_FG, 0.8, -0.3).float()
    for seed in range(3):
        torch.manual_seed(seed)
        losses = _criterion(BinaryCrossEntropy(), num_samples=2)(outputs, targets)
        expected = (_focal(0.8, 1, None, 0) + 3 * _focal(-0.3, 0, None, 0)) / 4
        assert losses["loss_rpn_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_anchor_border_ignores_cross_boundary_anchors():
    outputs, targets = _hand_batch()
    outputs["anchors"] = HAND_ANCHORS - 1.0  # anchors 0-3 now cross the top-left border
    outputs["pred_rpn_logits"] = torch.zeros(2, 6)
    centre = _criterion(BinaryCrossEntropy(), num_samples=256)(outputs, targets)
    strict = _criterion(BinaryCrossEntropy(), num_samples=256, anchor_border=0.0)(outputs, targets)
    # every used anchor costs log 2 here, so the normalised loss stays log 2; the positives,
    # all crossing the border, disappear from the box loss under the strict rule
    assert centre["loss_rpn_cls"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert strict["loss_rpn_cls"].item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert centre["loss_rpn_box"].item() > 0
    assert strict["loss_rpn_box"].item() == 0.0


@pytest.mark.parametrize("num_samples", [None, 256])
def test_rpn_focal_with_gamma_zero_equals_cross_entropy(num_samples):
    outputs, targets = _hand_batch()
    outputs["pred_rpn_logits"] = torch.randn(2, 6)
    torch.manual_seed(0)
    ce = _criterion(BinaryCrossEntropy(), num_samples=num_samples)(outputs, targets)
    torch.manual_seed(0)
    focal = _criterion(SigmoidFocalLoss(alpha=None, gamma=0.0), num_samples=num_samples)(
        outputs, targets
    )
    for name in ce:
        torch.testing.assert_close(focal[name], ce[name], rtol=1e-6, atol=0)


def test_rpn_focal_down_weights_easy_anchors():
    outputs, targets = _hand_batch()

    def ratio(margin: float) -> float:
        """focal / cross-entropy when every anchor's logit is ``margin`` on its correct side."""
        outputs["pred_rpn_logits"] = torch.where(HAND_FG, margin, -margin).float()
        focal = _criterion(SigmoidFocalLoss(alpha=None, gamma=2.0))(outputs, targets)[
            "loss_rpn_cls"
        ]
        ce = _criterion(BinaryCrossEntropy())(outputs, targets)["loss_rpn_cls"]
        return (focal / ce).item()

    sigmoid = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    # each anchor is scaled by (1 - p_t)^2 = sigmoid(-margin)^2
    assert ratio(4.0) == pytest.approx(sigmoid(-4.0) ** 2, rel=1e-4)  # easy: ~3e-4
    assert ratio(-1.0) == pytest.approx(sigmoid(1.0) ** 2, rel=1e-4)  # hard: ~0.53
    assert ratio(4.0) < 1e-3 < 0.5 < ratio(-1.0)


@pytest.mark.parametrize("num_samples", [None, 256])
def test_rpn_loss_without_any_boxes(num_samples):
    outputs, targets = _hand_batch()
    targets = {"boxes": torch.zeros(2, 0, 4), "box_valid": torch.zeros(2, 0, dtype=torch.bool)}
    logits = outputs["pred_rpn_logits"].clone().requires_grad_(True)
    deltas = outputs["pred_rpn_deltas"].clone().requires_grad_(True)
    outputs.update(pred_rpn_logits=logits, pred_rpn_deltas=deltas)
    losses = _criterion(SigmoidFocalLoss(), num_samples=num_samples)(outputs, targets)
    assert torch.isfinite(losses["loss_rpn_cls"]) and losses["loss_rpn_cls"] > 0
    assert losses["loss_rpn_box"].item() == 0.0
    sum(losses.values()).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(deltas.grad).all()
    assert (deltas.grad == 0).all()


def test_rpn_box_loss_gradient_only_reaches_positive_anchors():
    outputs, targets = _hand_batch()
    deltas = outputs["pred_rpn_deltas"].clone().requires_grad_(True)
    outputs["pred_rpn_deltas"] = deltas
    _criterion(BinaryCrossEntropy())(outputs, targets)["loss_rpn_box"].backward()
    touched = (deltas.grad != 0).any(dim=-1)
    assert touched.tolist() == [[True, True, False, False, False, False], [False] * 6]
    # reference: F.smooth_l1_loss on the two positives, divided by the two positives
    pred = deltas.detach()[0, :2]
    target = torch.tensor([[0.0, 0.0, 0.0, 0.0], [-0.1, 0.0, 0.0, 0.0]])
    expected = F.smooth_l1_loss(pred, target, beta=1.0 / 9, reduction="sum") / 2
    got = _criterion(BinaryCrossEntropy())(outputs, targets)["loss_rpn_box"]
    torch.testing.assert_close(got.detach(), expected)
