"""Optimiser parameter groups, learning-rate schedules (linear warmup, then step or cosine) and
``PhaseOptimizer``: the optimiser, LR scheduler and gradient scaler of the current phase."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["PhaseOptimizer", "lr_lambda", "param_groups"]


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


class PhaseOptimizer:
    """A fresh optimiser and LR scheduler for each phase (or the ones a checkpoint held, for the
    phase it stopped in), and one gradient scaler for the whole run.

    Args:
        optimizer (Callable): param groups -> ``torch.optim.Optimizer`` (e.g. a partial SGD).
        lr_lambda (Callable): ``total_iters=`` -> per-iteration LR multiplier function.
        weight_decay (float): applied to weights, not to biases and norm parameters.
        scaler (torch.amp.GradScaler): loss scaling (enabled for fp16 on CUDA only).
    """

    def __init__(self, *, optimizer: Callable, lr_lambda: Callable, weight_decay: float,
                 scaler: torch.amp.GradScaler) -> None:
        self.factory, self.lr_lambda_factory = optimizer, lr_lambda
        self.weight_decay = float(weight_decay)
        self.scaler = scaler
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._pending: dict | None = None  # states of a resumed phase, loaded by ``start``

    def start(self, model: nn.Module, iterations: int) -> None:
        """The optimiser of ``model``'s trainable parameters and a schedule of ``iterations``."""
        self.optimizer = self.factory(param_groups(model, weight_decay=self.weight_decay))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, self.lr_lambda_factory(total_iters=iterations))
        if self._pending is not None:
            self.optimizer.load_state_dict(self._pending["optimizer"])
            self.scheduler.load_state_dict(self._pending["scheduler"])
            self._pending = None

    @property
    def lr(self) -> float:
        """The learning rate of the next step (first parameter group)."""
        return self.optimizer.param_groups[0]["lr"]

    def step_scheduler(self) -> None:
        with warnings.catch_warnings():  # after a skipped first step: "step() before ..."
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

    def state_dict(self) -> dict:
        """``optimizer`` and ``scheduler`` (None before the first phase starts) and ``scaler``."""
        started = self.optimizer is not None
        return {"optimizer": self.optimizer.state_dict() if started else None,
                "scheduler": self.scheduler.state_dict() if started else None,
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Takes effect at the next ``start`` (the optimiser of the phase being resumed)."""
        if state["optimizer"] is not None:
            self._pending = {k: state[k] for k in ("optimizer", "scheduler")}
        if state["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
