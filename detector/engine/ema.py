"""An exponential moving average (EMA) of a model's weights: ``train.ema_decay``.

After every optimiser step that was taken (a skipped non-finite step is no step), each
floating-point parameter of the average moves towards the live model's:

    average <- d_t * average + (1 - d_t) * weight,   d_t = decay * (1 - exp(-t / warmup))

where ``t`` is the number of updates so far, this one included (1, 2, ...). The warm-up of the
decay (``warmup`` steps, the time constant: d_t reaches 63 % of ``decay`` after ``warmup``
updates, 95 % after 3 x ``warmup``) keeps the first, random-ish weights from dominating the
average of a short run; ``warmup=0`` turns it off (d_t = decay from the first update). The
buffers (BatchNorm running mean/var and ``num_batches_tracked``) are COPIED from the live model,
not averaged: they are statistics of the live weights' activations, and averaging them would
mix statistics of other weights.

The average is a float32 copy of the model (a model trained under bf16/fp16 autocast keeps
float32 weights; a model whose weights are of a lower precision is averaged in float32 all the
same), on the model's device and in its memory format (channels-last stays channels-last). An
update is two ``torch._foreach`` calls (a lerp over the parameters, a copy of the buffers) with
the decay as a Python number: no host-device synchronisation, no Python loop over tensors on
the hot path.

Under ``DistributedDataParallel`` every rank averages its unwrapped module once per step: the
weights are the same on every rank after the all-reduced step, so the averages are too, with no
communication (the BatchNorm buffers, rank-local as in the live model, are broadcast from rank 0
before each evaluation by ``detector.evaluation.sharded.sync_buffers``).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from detector.errors import OptionError

__all__ = ["EMAOptions", "ModelEMA", "check_ema_options", "ema_decay_at"]

log = logging.getLogger("detector.train")


def check_ema_options(decay, warmup) -> None:
    """Raises ``OptionError`` (named ``decay`` or ``warmup``) unless 0 < decay < 1 and
    ``warmup`` is an integer >= 0."""
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not (
            math.isfinite(decay) and 0.0 < decay < 1.0):
        raise OptionError("decay", f"decay must be a number strictly between 0 and 1 (e.g. "
                                   f"0.999; null: no averaging), got {decay!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise OptionError("warmup", f"warmup must be an integer >= 0 (optimiser steps; 0: no "
                                    f"warm-up of the decay), got {warmup!r}")


def ema_decay_at(updates: int, *, decay: float, warmup: int) -> float:
    """The decay of update number ``updates`` (1-based): ``decay * (1 - exp(-updates /
    warmup))``, or ``decay`` when ``warmup`` is 0."""
    if warmup <= 0:
        return float(decay)
    return float(decay) * (1.0 - math.exp(-updates / warmup))


@dataclass(frozen=True)
class EMAOptions:
    """The trainer's weight-average options (``Trainer(ema=...)``); the constructor refuses a
    bad value with an ``OptionError`` naming it (``decay``, ``warmup``).

    Args:
        decay (float): 0 < decay < 1 (e.g. 0.999: an average over about 1000 steps).
        warmup (int): the decay's warm-up time constant in optimiser steps (0: none).
        eval_raw (bool): also evaluate the raw (not averaged) weights at each evaluation and
            report their ``raw_AP`` and ``raw_AP50`` (doubles the evaluation time).
    """

    decay: float
    warmup: int = 100
    eval_raw: bool = True

    def __post_init__(self) -> None:
        check_ema_options(self.decay, self.warmup)
        if not isinstance(self.eval_raw, bool):
            raise OptionError("eval_raw", f"eval_raw must be true or false, got "
                                          f"{self.eval_raw!r}")


class ModelEMA:
    """A float32 averaged copy of ``model`` (see the module docstring for the rule).

    Args:
        model (nn.Module): the live model (unwrapped: not its DDP wrapper), already on its
            device and in its memory format.
        decay (float): 0 < decay < 1.
        warmup (int): the decay's warm-up time constant in updates (0: none).

    Attributes:
        module (nn.Module): the averaged model (eval mode, no gradients): what is evaluated and
            saved as ``best.pth``/``final.pth``.
        updates (int): updates since the average (re)started.
    """

    def __init__(self, *, model: nn.Module, decay: float, warmup: int = 100) -> None:
        check_ema_options(decay, warmup)
        self.decay, self.warmup = float(decay), int(warmup)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        with torch.no_grad():  # float32 whatever the live model's floating-point precision
            for p in self.module.parameters():
                if p.is_floating_point() and p.dtype != torch.float32:
                    p.data = p.data.float()
        self.updates = 0
        self._averaged, self._copied = self._split(self.module)

    @staticmethod
    def _split(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(the floating-point parameters: averaged, the buffers and other parameters: copied),
        in the module's own order."""
        averaged = [p for p in model.parameters() if p.is_floating_point()]
        copied = [p for p in model.parameters() if not p.is_floating_point()]
        return averaged, copied + list(model.buffers())

    def current_decay(self) -> float:
        """The decay the next update will use."""
        return ema_decay_at(self.updates + 1, decay=self.decay, warmup=self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One update from the live ``model`` (the same structure; unwrapped), after a step."""
        weight = 1.0 - self.current_decay()
        self.updates += 1
        averaged, copied = self._split(model)
        if averaged:
            if any(p.dtype != a.dtype for p, a in zip(averaged, self._averaged, strict=True)):
                averaged = [p.to(a.dtype) for p, a in zip(averaged, self._averaged, strict=True)]
            torch._foreach_lerp_(self._averaged, averaged, weight)
        if copied:
            torch._foreach_copy_(self._copied, copied)

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Restart the average at ``model``'s weights (no updates yet: the warm-up starts
        again)."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0

    def state_dict(self) -> dict:
        """``{"weights": the averaged state dict, "updates": int, "decay": float}``."""
        return {"weights": self.module.state_dict(), "updates": self.updates,
                "decay": self.decay}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()`` (the weights are copied into the average in place: its
        device and memory format stay)."""
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
