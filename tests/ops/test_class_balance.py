"""Class-balanced weights by the effective number of samples (detector.ops.class_balance):
hand-computed values, the beta -> 0 (equal weights) and beta -> 1 (inverse frequency) limits,
and the weighted losses they feed (SoftmaxFocalLoss with a per-class alpha)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detector.ops.class_balance import (
    BACKGROUND_WEIGHT,
    class_balanced_alpha,
    class_balanced_weights,
)
from detector.ops.losses import CrossEntropy, SoftmaxFocalLoss


def test_hand_computed_weights():
    # beta 0.9, counts (100, 10, 1): (1 - b) / (1 - b^n) = 0.1 / (1 - 0.9^100) = 0.1000027,
    # 0.1 / (1 - 0.9^10) = 0.1 / 0.6513216 = 0.1535340, 0.1 / 0.1 = 1; sum 1.2535367,
    # times 3 / sum (2.393229): 0.239329, 0.367442, 2.393229
    weights = class_balanced_weights([100, 10, 1], 0.9)
    assert weights.dtype == torch.float32 and weights.shape == (3,)
    assert weights.tolist() == pytest.approx([0.239329, 0.367442, 2.393229], abs=2e-6)
    assert float(weights.sum()) == pytest.approx(3.0)


def test_two_classes_hand_computed():
    # beta 0.5, counts (1, 2): 0.5 / 0.5 = 1, 0.5 / 0.75 = 2/3; sum 5/3; times 2 / sum: 1.2, 0.8
    assert class_balanced_weights([1, 2], 0.5).tolist() == pytest.approx([1.2, 0.8])


@pytest.mark.parametrize("beta", [0.0, 1e-9])
def test_beta_to_zero_gives_equal_weights(beta):
    assert class_balanced_weights([5000, 30, 1, 7], beta).tolist() == pytest.approx([1.0] * 4)


@pytest.mark.parametrize("beta", [1.0, 1 - 1e-9])
def test_beta_to_one_gives_inverse_frequency(beta):
    counts = torch.tensor([400.0, 100.0, 10.0])
    inverse = (1 / counts) * 3 / (1 / counts).sum()
    assert class_balanced_weights(counts, beta).tolist() == pytest.approx(inverse.tolist(),
                                                                           rel=1e-5)


def test_rarer_classes_weigh_more_and_equal_counts_equal_weights():
    weights = class_balanced_weights([300, 300, 30, 3000], 0.999)
    assert weights[0] == weights[1]
    assert weights[2] > weights[0] > weights[3]


def test_a_class_without_boxes_weighs_as_one_box():
    assert class_balanced_weights([50, 0], 0.99).tolist() == pytest.approx(
        class_balanced_weights([50, 1], 0.99).tolist())


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan")])
def test_beta_outside_zero_one_is_refused(beta):
    with pytest.raises(ValueError, match="beta must be in"):
        class_balanced_weights([1, 2], beta)


@pytest.mark.parametrize("counts", [[], [3, -1], [1.0, float("inf")]])
def test_bad_counts_are_refused(counts):
    with pytest.raises(ValueError):
        class_balanced_weights(counts, 0.9)


def test_alpha_puts_background_first_at_the_mean_foreground_weight():
    alpha = class_balanced_alpha([1, 2], 0.5)
    assert BACKGROUND_WEIGHT == 1.0
    assert alpha.tolist() == pytest.approx([1.0, 1.2, 0.8])


def test_class_balanced_ce_is_the_weighted_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=generator)
    targets = torch.tensor([0, 1, 2, 3] * 3)
    alpha = class_balanced_alpha([90, 9, 3], 0.99)
    got = SoftmaxFocalLoss(alpha=alpha.tolist(), gamma=0.0)(logits, targets)
    expected = F.cross_entropy(logits, targets, reduction="none") * alpha[targets]
    assert torch.allclose(got, expected, atol=1e-6)


def test_beta_zero_is_plain_ce_and_plain_focal():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 3, generator=generator)
    targets = torch.randint(0, 3, (10,), generator=generator)
    alpha = class_balanced_alpha([1000, 2], 0.0).tolist()
    assert torch.equal(SoftmaxFocalLoss(alpha=alpha, gamma=0.0)(logits, targets),
                       CrossEntropy()(logits, targets))
    assert torch.equal(SoftmaxFocalLoss(alpha=alpha, gamma=2.0)(logits, targets),
                       SoftmaxFocalLoss(alpha=None, gamma=2.0)(logits, targets))
