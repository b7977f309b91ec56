"""Class-balanced loss weights by the effective number of samples (Cui et al., CVPR 2019).

Shorthand: K foreground classes (labels 1..K), background 0.

A class seen ``n`` times has an effective number of samples ``(1 - beta^n) / (1 - beta)`` (the
expected volume its samples cover when each new one overlaps the old ones with probability beta);
its weight is the inverse: ``(1 - beta) / (1 - beta^n)``. ``beta = 0`` weighs every class
equally (plain CE / focal loss); ``beta -> 1`` tends to inverse frequency ``1 / n``.

Background convention (``class_balanced_alpha``): the paper classifies images and has no
background class; here the foreground weights are normalised to sum to K (mean 1) and background
weighs 1, the mean foreground weight. Background is not a class of the training split's boxes
(its count is whatever the RoI sampler draws, 3 of every 4 RoIs), so it gets no effective number
of its own; weight 1 leaves its loss as in the unweighted loss, keeps the foreground/background
balance of the sampler on average, and makes ``beta = 0`` exactly the unweighted loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BACKGROUND_WEIGHT", "class_balanced_alpha", "class_balanced_weights"]

BACKGROUND_WEIGHT = 1.0  # the mean foreground weight after normalisation (see the module doc)


def class_balanced_weights(counts: Tensor | Sequence[int], beta: float) -> Tensor:
    """Per-class weights ``(1 - beta) / (1 - beta^n_c)``, normalised to sum to K.

    Args:
        counts (Tensor[K] | Sequence[int]): training boxes per foreground class (>= 0). A class
            without boxes is weighed as if it had one (it has no positives to weigh; its weight
            only enters the normalisation).
        beta (float): in [0, 1]; 0 gives equal weights, 1 gives inverse frequency.

    Returns:
        Tensor[K]: float32 weights, mean 1.
    """
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"class-balanced beta must be in [0, 1], got {beta}")
    n = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if n.numel() == 0:
        raise ValueError("class-balanced weights need the count of at least one class")
    if bool((n < 0).any()) or not bool(torch.isfinite(n).all()):
        raise ValueError(f"class counts must be finite and non-negative, got {n.tolist()}")
    n = n.clamp(min=1.0)
    if beta == 1.0:  # the limit of (1 - beta) / (1 - beta^n) as beta -> 1
        raw = 1.0 / n
    elif beta == 0.0:  # 0^n = 0 for n >= 1
        raw = torch.ones_like(n)
    else:  # 1 - beta^n = -expm1(n log beta): accurate when beta^n is close to 1
        raw = (1.0 - beta) / -torch.expm1(n * torch.log(n.new_tensor(beta)))
    return (raw * (n.numel() / raw.sum())).float()


def class_balanced_alpha(counts: Tensor | Sequence[int], beta: float) -> Tensor:
    """The ROI classifier's per-class weights, background first: ``[BACKGROUND_WEIGHT, w_1, ...,
    w_K]`` with ``w = class_balanced_weights(counts, beta)`` (the ``alpha`` sequence of
    ``detector.ops.losses.SoftmaxFocalLoss``; ``gamma=0`` makes that a weighted cross-entropy).

    Args:
        counts (Tensor[K] | Sequence[int]): training boxes per foreground class.
        beta (float): in [0, 1].

    Returns:
        Tensor[K + 1]: float32.
    """
    weights = class_balanced_weights(counts, beta)
    return torch.cat((weights.new_tensor([BACKGROUND_WEIGHT]), weights))
