"""Tests for detector/ops/losses.py: exact reductions to cross-entropy, torchvision reference, hand cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from detector.ops.losses import (
    BinaryCrossEntropy,
    CrossEntropy,
    SigmoidFocalLoss,
    SoftmaxFocalLoss,
)


def _binary_inputs(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, generator=generator) * 4
    targets = (torch.rand(n, generator=generator) > 0.7).float()
    return logits, targets


def _softmax_inputs(n: int = 200, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, c, generator=generator) * 4
    targets = torch.randint(0, c, (n,), generator=generator)
    return logits, targets


# ---------------------------------------------------------------- binary


def test_bce_matches_hand_value():
    # x = 0 -> p = 0.5 -> loss log 2 whatever the target; x = log 3 -> p = 3/4.
    logits = torch.tensor([0.0, 0.0, math.log(3.0), math.log(3.0)])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = torch.tensor([math.log(2), math.log(2), -math.log(0.75), -math.log(0.25)])
    torch.testing.assert_close(BinaryCrossEntropy()(logits, targets), expected)


def test_sigmoid_focal_gamma0_no_alpha_equals_bce_exactly():
    logits, targets = _binary_inputs()
    focal = SigmoidFocalLoss(alpha=None, gamma=0.0)(logits, targets)
    assert torch.equal(focal, BinaryCrossEntropy()(logits, targets))


@pytest.mark.parametrize("alpha", [0.25, 0.5, None])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_sigmoid_focal_matches_torchvision(alpha, gamma):
    logits, targets = _binary_inputs()
    ours = SigmoidFocalLoss(alpha=alpha, gamma=gamma)(logits, targets)
    reference = sigmoid_focal_loss(
        logits, targets, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="none"
    )
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_sigmoid_focal_down_weights_easy_example_by_exact_factor():
    # p_t = 0.9 (easy) and p_t = 0.1 (hard), both positives: x = +-log 9.
    logits = torch.tensor([math.log(9.0), -math.log(9.0)])
    targets = torch.ones(2)
    ce = BinaryCrossEntropy()(logits, targets)
    focal = SigmoidFocalLoss(alpha=None, gamma=2.0)(logits, targets)
    ratio = focal / ce
    torch.testing.assert_close(ratio, torch.tensor([0.1**2, 0.9**2]))
    # The easy example is down-weighted 81x more than the hard one.
    torch.testing.assert_close(ratio[1] / ratio[0], torch.tensor(81.0))


def test_sigmoid_focal_alpha_weights_positives_and_negatives():
    # gamma = 0 isolates alpha: positives get alpha, negatives 1 - alpha.
    logits = torch.tensor([0.0, 0.0])
    targets = torch.tensor([1.0, 0.0])
    loss = SigmoidFocalLoss(alpha=0.25, gamma=0.0)(logits, targets)
    torch.testing.assert_close(loss, torch.tensor([0.25, 0.75]) * math.log(2))


def test_sigmoid_focal_rejects_bad_parameters():
    with pytest.raises(ValueError, match="alpha"):
        SigmoidFocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        SigmoidFocalLoss(gamma=-1.0)


# ---------------------------------------------------------------- softmax


def test_cross_entropy_matches_hand_value():
    # Uniform logits over 4 classes -> loss log 4; one-hot-ish logits (log 3, 0) -> p = 3/4.
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -math.inf, -math.inf]])
    targets = torch.tensor([2, 0])
    expected = torch.tensor([math.log(4.0), -math.log(0.75)])
    torch.testing.assert_close(CrossEntropy()(logits, targets), expected)


def test_softmax_focal_gamma0_no_alpha_equals_cross_entropy_exactly():
    logits, targets = _softmax_inputs()
    focal = SoftmaxFocalLoss(alpha=None, gamma=0.0)(logits, targets)
    assert torch.equal(focal, CrossEntropy()(logits, targets))


def test_softmax_focal_matches_direct_formula():
    logits, targets = _softmax_inputs()
    p_t = logits.softmax(-1).gather(1, targets[:, None]).squeeze(1)
    expected = -((1 - p_t) ** 2.0) * torch.log(p_t)
    torch.testing.assert_close(SoftmaxFocalLoss(gamma=2.0)(logits, targets), expected)


def test_softmax_focal_two_classes_equals_sigmoid_focal():
    # Softmax over (0, x) is sigmoid(x): scalar alpha on foreground == binary alpha on positives.
    logits, targets = _binary_inputs()
    two_class = torch.stack([torch.zeros_like(logits), logits], dim=1)
    softmax = SoftmaxFocalLoss(alpha=0.25, gamma=2.0)(two_class, targets.long())
    sigmoid = SigmoidFocalLoss(alpha=0.25, gamma=2.0)(logits, targets)
    torch.testing.assert_close(softmax, sigmoid, rtol=1e-5, atol=1e-6)


def test_softmax_focal_down_weights_easy_example_by_exact_factor():
    # Three classes, target 1. Easy: logits (0, log 18, 0) -> p_t = 18/20 = 0.9.
    # Hard: logits (log 4.5, 0, log 4.5) -> p_t = 1/10.
    logits = torch.tensor([[0.0, math.log(18.0), 0.0], [math.log(4.5), 0.0, math.log(4.5)]])
    targets = torch.tensor([1, 1])
    ce = CrossEntropy()(logits, targets)
    torch.testing.assert_close(ce, torch.tensor([-math.log(0.9), -math.log(0.1)]))
    ratio = SoftmaxFocalLoss(gamma=2.0)(logits, targets) / ce
    torch.testing.assert_close(ratio, torch.tensor([0.01, 0.81]))


def test_softmax_focal_scalar_alpha_convention():
    # Uniform logits over 3 classes: CE = log 3 for every target; gamma = 0 isolates alpha.
    logits = torch.zeros(3, 3)
    targets = torch.tensor([0, 1, 2])
    loss = SoftmaxFocalLoss(alpha=0.25, gamma=0.0)(logits, targets)
    torch.testing.assert_close(loss, torch.tensor([0.75, 0.25, 0.25]) * math.log(3.0))


def test_softmax_focal_per_class_alpha():
    logits = torch.zeros(3, 3)
    targets = torch.tensor([2, 0, 1])
    loss = SoftmaxFocalLoss(alpha=[0.1, 2.0, 3.0], gamma=0.0)(logits, targets)
    torch.testing.assert_close(loss, torch.tensor([3.0, 0.1, 2.0]) * math.log(3.0))


def test_softmax_focal_per_class_alpha_length_is_checked():
    with pytest.raises(ValueError, match="3 entries"):
        SoftmaxFocalLoss(alpha=[0.1, 0.2, 0.3])(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="non-negative"):
        SoftmaxFocalLoss(alpha=[0.1, -0.2])


# ---------------------------------------------------------------- dtypes, extremes, gradients


def _all_losses_and_inputs():
    binary = _binary_inputs(20)
    softmax = _softmax_inputs(20)
    return [
        (BinaryCrossEntropy(), *binary),
        (SigmoidFocalLoss(), *binary),
        (SigmoidFocalLoss(alpha=None, gamma=0.5), *binary),
        (CrossEntropy(), *softmax),
        (SoftmaxFocalLoss(), *softmax),
        (SoftmaxFocalLoss(alpha=0.25, gamma=0.5), *softmax),
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_float32_outputs(dtype):
    for loss_fn, logits, targets in _all_losses_and_inputs():
        low = loss_fn(logits.to(dtype), targets)
        assert low.dtype == torch.float32, loss_fn
        assert torch.isfinite(low).all(), loss_fn
        # Same as computing on the rounded inputs in float32.
        assert torch.equal(low, loss_fn(logits.to(dtype).float(), targets)), loss_fn


def test_autocast_gives_float32_outputs():
    for loss_fn, logits, targets in _all_losses_and_inputs():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = loss_fn(logits.to(torch.bfloat16), targets)
        assert out.dtype == torch.float32, loss_fn


def _extreme_cases():
    binary_logits = torch.tensor([100.0, -100.0, 100.0, -100.0])
    binary_targets = torch.tensor([1.0, 1.0, 0.0, 0.0])
    softmax_logits = torch.tensor([[100.0, -100.0, 0.0], [-100.0, 100.0, -100.0]])
    softmax_targets = torch.tensor([0, 0])
    return [
        (loss_fn, binary_logits, binary_targets)
        for loss_fn in (BinaryCrossEntropy(), SigmoidFocalLoss(), SigmoidFocalLoss(gamma=0.5))
    ] + [
        (loss_fn, softmax_logits, softmax_targets)
        for loss_fn in (CrossEntropy(), SoftmaxFocalLoss(), SoftmaxFocalLoss(gamma=0.5))
    ]


@pytest.mark.parametrize("case", range(6))
def test_extreme_logits_give_finite_losses_and_gradients(case):
    loss_fn, logits, targets = _extreme_cases()[case]
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, targets)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_extreme_logits_values():
    # Confidently right -> ~0; confidently wrong -> ~100 (CE) for both binary and softmax.
    binary = SigmoidFocalLoss(alpha=None, gamma=2.0)(
        torch.tensor([100.0, -100.0]), torch.tensor([1.0, 1.0])
    )
    torch.testing.assert_close(binary, torch.tensor([0.0, 100.0]))
    softmax = SoftmaxFocalLoss(gamma=2.0)(
        torch.tensor([[100.0, -100.0], [-100.0, 100.0]]), torch.tensor([0, 0])
    )
    torch.testing.assert_close(softmax, torch.tensor([0.0, 200.0]))


def test_focal_gradients_match_autograd_of_direct_formula():
    logits, targets = _binary_inputs(50)
    ours = logits.clone().requires_grad_(True)
    SigmoidFocalLoss(gamma=2.0)(ours, targets).sum().backward()
    ref = logits.clone().requires_grad_(True)
    sigmoid_focal_loss(ref, targets, alpha=0.25, gamma=2.0, reduction="sum").backward()
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_empty_inputs():
    assert BinaryCrossEntropy()(torch.zeros(0), torch.zeros(0)).shape == (0,)
    assert SigmoidFocalLoss()(torch.zeros(0), torch.zeros(0)).shape == (0,)
    assert CrossEntropy()(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).shape == (0,)
    assert SoftmaxFocalLoss(alpha=0.25)(
        torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)
    ).shape == (0,)


@pytest.mark.gpu
def test_losses_on_cuda_under_autocast(cuda_device):
    for loss_fn, logits, targets in _all_losses_and_inputs():
        logits, targets = logits.to(cuda_device), targets.to(cuda_device)
        with torch.autocast("cuda", dtype=torch.float16):
            out = loss_fn(logits.half(), targets)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        expected = loss_fn(logits.half().float().cpu(), targets.cpu())
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-5)
    alpha = SoftmaxFocalLoss(alpha=[0.5, 1.0, 1.0, 1.0, 2.0])
    logits, targets = _softmax_inputs()
    out = alpha(logits.to(cuda_device), targets.to(cuda_device))
    torch.testing.assert_close(out.cpu(), alpha(logits, targets), rtol=1e-5, atol=1e-5)


def test_cross_entropy_equals_nll_of_log_softmax():
    logits, targets = _softmax_inputs(4)
    torch.testing.assert_close(
        CrossEntropy()(logits, targets),
        F.nll_loss(logits.log_softmax(-1), targets, reduction="none"),
    )
