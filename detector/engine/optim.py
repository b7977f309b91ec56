"""Optimiser parameter groups, learning-rate schedules (linear warmup, then step or cosine) and
``PhaseOptimizer``: the optimiser, LR scheduler and gradient scaler of the current phase, and
``check_optimization``: a checkpoint's optimiser, scheduler and scaler states checked against the
ones the phase will have, before a resume restores anything."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from detector.checkpoint import CheckpointMismatchError
from detector.engine.checked_values import Where, part, plain_data, show
from detector.engine.resume_checks import MAX_PHASE_ITERATIONS

__all__ = ["PhaseOptimizer", "check_optimization", "lr_lambda", "param_groups"]

SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


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

    def groups(self, model: nn.Module) -> list[dict]:
        """The param groups of ``model``'s trainable parameters (what ``start`` optimises)."""
        return param_groups(model, weight_decay=self.weight_decay)

    def start(self, model: nn.Module, iterations: int) -> None:
        """The optimiser of ``model``'s trainable parameters and a schedule of ``iterations``."""
        self.optimizer = self.factory(self.groups(model))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, self.lr_lambda_factory(total_iters=iterations))
        if self._pending is not None:
            pending, self._pending = self._pending, None
            try:
                self.optimizer.load_state_dict(pending["optimizer"])
                self.scheduler.load_state_dict(pending["scheduler"])
            except (ValueError, KeyError, TypeError, RuntimeError) as error:
                raise CheckpointMismatchError(f"the checkpoint's optimizer state does not fit "
                                              f"this phase's optimiser: {error}") from None

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
        if state.get("optimizer") is not None:
            self._pending = {k: state.get(k) for k in ("optimizer", "scheduler")}
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


def check_optimization(state: dict, where: Where, *, optimization: PhaseOptimizer,
                       groups: list[dict] | None, iterations: int) -> None:
    """A checkpoint's ``optimizer``, ``scheduler`` and ``scaler`` against what the phase being
    resumed will have; raises ``CheckpointError`` / ``CheckpointMismatchError`` naming the key.

    Args:
        state: the checkpoint. where: its ``Where``.
        optimization: this run's ``PhaseOptimizer`` (its factories make a throwaway optimiser).
        groups: the param groups the phase's optimiser will get (``param_groups``); None: the
            run is finished (no optimiser is restored).
        iterations: the phase's iterations (for its scheduler).
    """
    scaler = state.get("scaler")
    if scaler is not None and where.mapping(scaler, "scaler"):  # {}: a disabled scaler's
        if set(scaler) != set(SCALER_KEYS):
            raise where.error("scaler", f"does not hold exactly {list(SCALER_KEYS)}")
        for key in SCALER_KEYS[:3]:
            where.number(scaler[key], f"scaler.{key}", low=0.0)
        where.integer(scaler["growth_interval"], "scaler.growth_interval", 1, 10**9)
        where.integer(scaler["_growth_tracker"], "scaler._growth_tracker", 0, 10**9)
    optimizer, scheduler = state.get("optimizer"), state.get("scheduler")
    if (optimizer is None) != (scheduler is None):
        raise where.error("optimizer", "and scheduler must both be states or both be None")
    if optimizer is None or groups is None:
        return
    fresh = optimization.factory(groups)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(
        fresh, optimization.lr_lambda_factory(total_iters=iterations))
    params = [p for group in fresh.param_groups for p in group["params"]]
    ids = _check_groups(where.mapping(optimizer, "optimizer"), fresh.state_dict(), where)
    _check_parameter_state(optimizer, dict(zip(ids, params, strict=True)), where)
    _check_scheduler(where.mapping(scheduler, "scheduler"), fresh_scheduler.state_dict(),
                     len(fresh.param_groups), where)


def _check_groups(saved: dict, fresh: dict, where: Where) -> list[int]:
    """The saved param groups: as many as the fresh ones, each with as many parameters and
    hyperparameters of the same kinds. Returns the saved parameter ids, in order."""
    groups = where.sequence(saved.get("param_groups"), "optimizer.param_groups", most=64)
    if len(groups) != len(fresh["param_groups"]):
        raise where.error("optimizer.param_groups", f"has {len(groups)} groups, this phase's "
                          f"optimiser {len(fresh['param_groups'])}", CheckpointMismatchError)
    ids: list[int] = []
    for i, (group, ours) in enumerate(zip(groups, fresh["param_groups"], strict=True)):
        key = f"optimizer.param_groups[{i}]"
        group = where.mapping(group, key)
        params = where.sequence(group.get("params"), f"{key}.params", len(ours["params"]))
        ids += [where.integer(p, f"{key}.params", 0, 10**9) for p in params]
        for name, value in group.items():
            if name == "params" or (name not in ours and plain_data(value, budget=100)):
                continue
            if name not in ours or not _same_kind(value, ours[name]):
                raise where.error(f"{key}.{part(name)}", f"is {show(value)}, not like "
                                                         f"{show(ours.get(name))}")
        where.number(group.get("lr", 0.0), f"{key}.lr", low=0.0)
    if sorted(ids) != list(range(len(ids))):
        raise where.error("optimizer.param_groups", "do not number their parameters 0, 1, ...")
    return ids


def _same_kind(value, reference) -> bool:
    if isinstance(reference, bool) or reference is None:
        return value is None or isinstance(value, bool)
    if isinstance(reference, int | float):
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))
    if isinstance(reference, list | tuple):
        return (isinstance(value, list | tuple) and len(value) == len(reference)
                and all(_same_kind(v, r) for v, r in zip(value, reference, strict=True)))
    if isinstance(reference, str):
        return isinstance(value, str) and len(value) <= 100
    return False


def _check_parameter_state(saved: dict, params: dict[int, torch.Tensor], where: Where) -> None:
    """Each parameter's state (momentum buffers, ...): tensors of its shape (or 0-dim counters),
    finite; numbers; None."""
    state = where.mapping(saved.get("state", {}), "optimizer.state")
    for index, entry in state.items():
        key = f"optimizer.state[{show(index)}]"
        if index not in params:
            raise where.error(key, "belongs to no parameter of the phase")
        for name, value in where.mapping(entry, key).items():
            if isinstance(value, torch.Tensor):
                fits = (value.dim() == 0 or value.shape == params[index].shape) and (
                    value.is_floating_point() and value.layout == torch.strided)
                if not fits or not bool(torch.isfinite(value).all()):
                    raise where.error(f"{key}.{part(name)}", f"is {show(value)}, not a finite "
                                      f"state of a parameter of shape "
                                      f"{list(params[index].shape)}")
            elif value is not None and not _same_kind(value, 0.0):
                raise where.error(f"{key}.{part(name)}", f"is {show(value)}, not a number")


def _check_scheduler(saved: dict, fresh: dict, groups: int, where: Where) -> None:
    """LambdaLR's state: only its own keys (it sets each as an attribute), numbers in range, no
    function attributes (``lr_lambdas`` all None)."""
    for name, value in saved.items():
        key = f"scheduler.{part(name)}"
        if name == "lr_lambdas":
            if any(fn is not None for fn in where.sequence(value, key, groups)):
                raise where.error(key, "must be None for each group (plain functions)")
        elif name in ("base_lrs", "_last_lr"):
            for i, lr in enumerate(where.sequence(value, key, groups)):
                where.number(lr, f"{key}[{i}]", low=0.0)
        elif name in ("last_epoch", "_step_count"):
            where.integer(value, key, 0, MAX_PHASE_ITERATIONS + 1)
        elif name == "verbose" and (isinstance(value, bool) or (isinstance(value, str)
                                                                and value == "deprecated")):
            continue  # older torch versions
        elif name not in fresh or not _same_kind(value, fresh[name]):
            raise where.error(key, f"is {show(value)}, not a state of this run's scheduler")
