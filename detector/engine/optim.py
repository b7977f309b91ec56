"""Optimiser parameter groups and learning-rate schedules (linear warmup, then step or cosine)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["lr_lambda", "param_groups"]


def param_groups(model: nn.Module, *, weight_decay: float) -> list[dict]:
    """Trainable parameters split into two groups: weights with ``weight_decay``, and biases plus
    normalisation parameters (BN/GN/LN scales and shifts) with none.

    Returns:
        list of param-group dicts for a ``torch.optim`` constructor; empty groups are left out.
    """
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, norm_types) or name == "bias":
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def lr_lambda(
    *,
    total_iters: int,
    warmup_iters: int = 0,
    warmup_factor: float = 0.001,
    decay: str = "step",
    steps: Sequence[float] = (),
    gamma: float = 0.1,
    min_factor: float = 0.0,
) -> Callable[[int], float]:
    """A multiplier of the base learning rate per iteration, for ``torch.optim.lr_scheduler.LambdaLR``.

    Args:
        total_iters (int): iterations of the phase.
        warmup_iters (int): linear ramp from ``warmup_factor`` to 1 over these iterations.
        warmup_factor (float): multiplier at iteration 0.
        decay (str): "step" (multiply by ``gamma`` at each of ``steps``), "cosine" (half cosine from
            1 to ``min_factor`` at ``total_iters``) or "constant".
        steps (Sequence[float]): step iterations; values in (0, 1) are fractions of ``total_iters``.
        gamma (float): step multiplier.
        min_factor (float): final multiplier of the cosine decay.
    """
    if decay not in ("step", "cosine", "constant"):
        raise ValueError(f"decay must be 'step', 'cosine' or 'constant', got {decay!r}")
    milestones = sorted(int(s * total_iters) if 0 < s < 1 else int(s) for s in steps)

    def factor(it: int) -> float:
        warm = 1.0
        if it < warmup_iters:
            alpha = it / max(1, warmup_iters)
            warm = warmup_factor * (1 - alpha) + alpha
        if decay == "step":
            return warm * gamma ** sum(it >= m for m in milestones)
        if decay == "cosine":
            progress = min(1.0, it / max(1, total_iters))
            return warm * (min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress)))
        return warm

    return factor
