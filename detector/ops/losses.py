"""Classification losses, handed to the heads and the criterion as callables (the criteria's box
regression loss is ``F.smooth_l1_loss``).

Shorthand: N elements (anchors or sampled proposals), C classes including background (C = K + 1).

Every loss returns one value per element (no reduction): the criterion decides how to normalise
(by the number of sampled elements, by the number of positives, ...). All losses compute in float32,
whatever the input dtype, so they behave the same under autocast.

Which classification loss a model uses is chosen by configuration, by building one of these objects
and passing it in; model code never branches on the loss name.

    binary (RPN objectness):   loss(logits: Tensor[N], targets: Tensor[N] float in {0, 1}) -> Tensor[N]
    softmax (ROI classifier):  loss(logits: Tensor[N, C], targets: Tensor[N] long)      -> Tensor[N]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BinaryCrossEntropy",
    "CrossEntropy",
    "SigmoidFocalLoss",
    "SoftmaxFocalLoss",
]

# Smallest positive normal float32. The modulating factor (1 - p_t) ** gamma is evaluated on
# max(1 - p_t, _TINY): the value changes by at most _TINY ** gamma (nothing, for gamma = 0), but the
# gradient of x ** gamma stays finite when p_t saturates to exactly 1 and gamma < 1.
_TINY = torch.finfo(torch.float32).tiny


def _modulating_factor(one_minus_pt: Tensor, gamma: float) -> Tensor:
    """``(1 - p_t) ** gamma`` with finite gradients; ``one_minus_pt (Tensor[N])``."""
    return one_minus_pt.clamp_min(_TINY).pow(gamma)


def _check_gamma(gamma: float) -> float:
    if gamma < 0:
        raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
    return float(gamma)


class BinaryCrossEntropy:
    """Per-element binary cross-entropy on logits.

    Call with ``logits (Tensor[N])`` (any float dtype) and ``targets (Tensor[N])`` (float, 0 or 1);
    returns ``Tensor[N]`` float32: ``-t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x))``.
    """

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")

    def __repr__(self) -> str:
        return "BinaryCrossEntropy()"


class SigmoidFocalLoss:
    """Per-element binary focal loss ``-alpha_t (1 - p_t) ** gamma log(p_t)`` on logits.

    ``p`` = sigmoid(logits); ``p_t`` = p for targets 1 and 1 - p for targets 0;
    ``alpha_t`` = alpha for targets 1 and 1 - alpha for targets 0. The log term is computed by
    binary cross-entropy on logits and ``1 - p_t`` as a sigmoid of the (signed) logit, so both
    stay accurate for large logits. With ``gamma=0, alpha=None`` it equals
    :class:`BinaryCrossEntropy` exactly.

    Args:
        alpha (float | None): weight of positives in [0, 1] (negatives get 1 - alpha);
            None = no weighting.
        gamma (float): focusing parameter >= 0; 0 turns the modulating factor off.

    Call with ``logits (Tensor[N])`` and ``targets (Tensor[N])`` (float, 0 or 1); returns
    ``Tensor[N]`` float32.
    """

    def __init__(self, *, alpha: float | None = 0.25, gamma: float = 2.0) -> None:
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"sigmoid focal loss alpha must be in [0, 1] or None, got {alpha}")
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = _check_gamma(gamma)

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        logits, targets = logits.float(), targets.float()
        ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        # 1 - p_t = t (1 - p) + (1 - t) p, with 1 - p = sigmoid(-x) (no cancellation near p = 1).
        one_minus_pt = targets * torch.sigmoid(-logits) + (1.0 - targets) * torch.sigmoid(logits)
        loss = ce * _modulating_factor(one_minus_pt, self.gamma)
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1.0 - self.alpha) * (1.0 - targets))
        return loss

    def __repr__(self) -> str:
        return f"SigmoidFocalLoss(alpha={self.alpha}, gamma={self.gamma})"


class CrossEntropy:
    """Per-element softmax cross-entropy.

    Call with ``logits (Tensor[N, C])`` (any float dtype) and ``targets (Tensor[N])`` (long, class
    indices in [0, C), 0 = background); returns ``Tensor[N]`` float32: ``-log softmax(x)[t]``.
    """

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets.long(), reduction="none")

    def __repr__(self) -> str:
        return "CrossEntropy()"


class SoftmaxFocalLoss:
    """Per-element multi-class focal loss ``-alpha_t (1 - p_t) ** gamma log(p_t)``.

    ``p_t`` is the softmax probability of the target class, computed through ``log_softmax`` so
    ``log(p_t)`` never underflows. With ``gamma=0, alpha=None`` it equals :class:`CrossEntropy`
    exactly.

    ``alpha`` convention:

    * ``None``: no class weighting (``alpha_t = 1``).
    * a float ``a`` in [0, 1]: ``alpha_t = a`` for foreground targets (classes 1..C-1) and
      ``1 - a`` for background targets (class 0) -- the binary focal-loss convention, with every
      foreground class playing "positive".
    * a sequence of C non-negative floats: ``alpha_t = alpha[t]`` (index 0 = background).

    Args:
        alpha (float | Sequence[float] | None): class weighting, see above.
        gamma (float): focusing parameter >= 0; 0 turns the modulating factor off.

    Call with ``logits (Tensor[N, C])`` and ``targets (Tensor[N])`` (long, in [0, C)); returns
    ``Tensor[N]`` float32.
    """

    def __init__(self, *, alpha: float | Sequence[float] | None = None, gamma: float = 2.0) -> None:
        self.gamma = _check_gamma(gamma)
        self.alpha: float | Tensor | None
        if alpha is None:
            self.alpha = None
        elif isinstance(alpha, (int, float)):
            if not 0.0 <= alpha <= 1.0:
                raise ValueError(f"softmax focal loss alpha must be in [0, 1], got {alpha}")
            self.alpha = float(alpha)
        else:
            weights = torch.as_tensor([float(a) for a in alpha], dtype=torch.float32)
            if weights.ndim != 1 or weights.numel() == 0 or bool((weights < 0).any()):
                raise ValueError(f"per-class alpha must be non-negative floats, got {list(alpha)}")
            self.alpha = weights

    def _alpha_t(self, targets: Tensor, num_classes: int) -> Tensor:
        """Weight of each element: ``targets (Tensor[N])`` -> ``Tensor[N]`` float32."""
        if isinstance(self.alpha, float):
            fg = (targets > 0).float()
            return self.alpha * fg + (1.0 - self.alpha) * (1.0 - fg)
        weights = self.alpha
        if weights.numel() != num_classes:
            raise ValueError(
                f"per-class alpha has {weights.numel()} entries but the logits have "
                f"{num_classes} classes"
            )
        return weights.to(targets.device)[targets]

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        targets = targets.long()
        log_p = F.log_softmax(logits.float(), dim=-1)
        log_pt = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        # 1 - p_t = -expm1(log p_t): accurate when p_t is close to 1.
        loss = -log_pt * _modulating_factor(-torch.expm1(log_pt), self.gamma)
        if self.alpha is not None:
            loss = loss * self._alpha_t(targets, logits.shape[-1])
        return loss

    def __repr__(self) -> str:
        alpha = self.alpha.tolist() if isinstance(self.alpha, Tensor) else self.alpha
        return f"SoftmaxFocalLoss(alpha={alpha}, gamma={self.gamma})"

