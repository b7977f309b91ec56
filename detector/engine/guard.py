"""Stopping training safely: on a non-finite loss or gradient, on a loss that explodes
(``DivergenceGuard``), and on SIGINT/SIGTERM.

The trainer checks, once per step and with a single host sync, that every loss term and the
gradient norm are finite. ``on_nonfinite="stop"`` writes the last good state (the step is checked
before the optimiser applies it) and raises ``NonFiniteError``; ``"skip"`` drops the step,
counts it and goes on. A finite loss can diverge too (7e9 and rising at a learning rate of
1e3): ``DivergenceGuard`` stops a run whose logged loss stays far above its first step's (the
rule is in its docstring) with ``DivergedError``, the parent of ``NonFiniteError``. A ``StopSignal`` is a flag that SIGINT/SIGTERM set while it is
``installed()``; the trainer finishes the current step (or abandons an evaluation after the
current batch), writes a checkpoint and returns.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections.abc import Iterator
from pathlib import Path

import torch

from detector.engine import distributed as dist
from detector.errors import OptionError

__all__ = ["NONFINITE_HINT", "DivergedError", "DivergenceGuard", "NonFiniteError", "StopSignal",
           "describe_nonfinite", "gather_values", "grad_norm", "step_flags"]

log = logging.getLogger("detector.train")

NONFINITE_HINT = (
    "Hints: lower the learning rate, add or lengthen the warmup, clip the gradient norm, check "
    "the annotations for broken boxes (NaN/inf, negative or huge coordinates); or skip such "
    "steps instead of stopping")


class DivergedError(FloatingPointError):
    """Training stopped because it diverged.

    Attributes:
        reason (str): how, in a few words (e.g. ``loss 3.1e+09 = 1.2e+09 x the first step's``).
        terms (dict[str, float]): the values that tell (loss terms, ``grad_norm``) by name.
        iteration (int): the 1-based iteration where it was found.
        lr (float): the learning rate there.
        checkpoint (Path | None): the last good state, if one was written before raising.
    """

    def __init__(self, message: str, *, reason: str, terms: dict[str, float], iteration: int,
                 lr: float, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.reason, self.terms, self.iteration = reason, terms, iteration
        self.lr, self.checkpoint = lr, checkpoint


class NonFiniteError(DivergedError):
    """Training stopped because a loss term or the gradient norm is NaN or infinite
    (``terms``: the offending values; ``checkpoint``: the last good state, written before
    raising)."""

    def __init__(self, message: str, *, terms: dict[str, float], iteration: int, lr: float,
                 checkpoint: Path | None) -> None:
        reason = "non-finite " + (", ".join(terms) or "value")
        super().__init__(message, reason=reason, terms=terms, iteration=iteration, lr=lr,
                         checkpoint=checkpoint)


class DivergenceGuard:
    """Tells a run whose loss explodes from one that only fluctuates.

    The rule: the reference is the total loss of the first training step, taken before any
    update (so no learning rate has touched it; under torchrun, its mean over ranks). At each
    log point the logged total loss (the mean over the log window) is compared with it. When that
    loss is above ``factor`` x the reference, or non-finite, at ``window`` log points in a row,
    the run has diverged and ``check`` raises ``DivergedError`` naming the loss, the ratio and
    the iteration. A single spike is averaged over its log window and forgiven at the next
    point; a healthy run's loss falls below its start. ``factor=None`` or ``window=0``: off.

    After a resume the reference comes back with ``load_state_dict`` (or, without one, is the
    first step after the resume).
    """

    def __init__(self, *, factor: float | None = 100.0, window: int = 3) -> None:
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, int | float)
                                   or not factor > 1):
            raise OptionError("factor", f"factor must be a number > 1 (or None: off), got "
                                        f"{factor!r}")
        self.factor, self.window = factor, max(0, int(window))
        self.reference: float | None = None
        self.strikes = 0  # log points in a row above the limit

    @property
    def enabled(self) -> bool:
        return self.factor is not None and self.window > 0

    def observe_step(self, losses: dict[str, torch.Tensor] | None) -> None:
        """Called after every step with its loss terms (None: a skipped step); takes the
        first finite one's total as the reference (one host sync, once)."""
        if self.reference is not None or not losses or not self.enabled:
            return
        total = torch.stack([v.detach().float() for v in losses.values()]).sum()
        reference = float(dist.all_reduce(total.reshape(1)))
        if math.isfinite(reference):  # a NaN first step (then skipped) is no yardstick
            self.reference = reference

    def check(self, *, loss: float, iteration: int, lr: float,
              terms: dict[str, float] | None = None) -> None:
        """At a log point: count it if ``loss`` (the logged total) is above the limit or
        non-finite; raise ``DivergedError`` at the ``window``-th such point in a row."""
        if not self.enabled or self.reference is None:
            return
        limit = self.factor * self.reference
        over = not math.isfinite(loss) or (self.reference > 0 and loss > limit)
        self.strikes = self.strikes + 1 if over else 0
        if self.strikes < self.window:
            return
        what = (f"loss {loss:.3g} non-finite" if not math.isfinite(loss) else
                f"loss {loss:.3g} = {loss / self.reference:.3g} x the first step's "
                f"{self.reference:.3g}")
        reason = f"{what} at {self.window} log points in a row (limit {self.factor:g} x)"
        raise DivergedError(
            f"{reason}, at iteration {iteration}, learning rate {lr:.3g}. "
            f"{NONFINITE_HINT.split('; or')[0]}", reason=reason,
            terms=dict(terms or {"loss": loss}), iteration=iteration, lr=lr)

    def state_dict(self) -> dict:
        return {"reference": self.reference, "strikes": self.strikes}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.reference, self.strikes = state.get("reference"), int(state.get("strikes", 0))


def describe_nonfinite(values: dict[str, float], *, iteration: int, phase: str, phase_iter: int,
                       phase_total: int, lr: float) -> tuple[dict[str, float], str]:
    """The non-finite entries of ``values`` and one line naming them, the iteration and the LR.

    Args:
        values: loss terms and ``grad_norm`` as floats.
        iteration: 1-based global iteration of the step; ``phase_iter`` its index in the phase.
    """
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    named = ", ".join(f"{k}={v}" for k, v in bad.items()) or "a value on another process"
    return bad, (f"non-finite {named} at iteration {iteration} (phase {phase}, step "
                 f"{phase_iter}/{phase_total}), learning rate {lr:.3g}")


def grad_norm(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
              max_norm: float | None) -> torch.Tensor:
    """The total norm of the (unscaled) gradients of ``optimizer``'s parameters, a 0-dim tensor
    on their device; clips them to ``max_norm`` when given. Call after ``backward``."""
    scaler.unscale_(optimizer)  # a no-op for a disabled scaler
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm([p.grad for p in params])
    return torch.nn.utils.clip_grad_norm_(params, float("inf"))


def step_flags(checked: dict[str, torch.Tensor], *, stop_requested: bool) -> tuple[bool, bool]:
    """(is any value of ``checked`` non-finite, is a stop requested), each on any rank.

    Args:
        checked: 0-dim tensors (loss terms, gradient norm) of this rank.

    This is the step's single host sync: one stacked finiteness test, reduced over ranks with
    the stop flag so that every rank takes the same decision."""
    device = next(iter(checked.values())).device
    values = torch.stack([v.detach().float().to(device) for v in checked.values()])
    finite = torch.isfinite(values).all()
    if not dist.is_distributed():
        return not finite.item(), stop_requested
    stop = torch.full((), float(stop_requested), device=finite.device)  # a fill, not a copy
    bad, stop_any = dist.all_reduce(torch.stack([(~finite).float(), stop]), op="max").tolist()
    return bool(bad), bool(stop_any)


def gather_values(checked: dict[str, torch.Tensor]) -> dict[str, float]:
    """``checked`` as floats, a non-finite value of any rank winning (for the message)."""
    values: dict[str, float] = {}
    for part in dist.all_gather_objects({k: float(v.detach()) for k, v in checked.items()}):
        values.update({k: v for k, v in part.items() if k not in values or not math.isfinite(v)})
    return values


class StopSignal:
    """A stop request the trainer checks after every step.

    ``request()`` sets it from code; while ``installed()``, SIGINT and SIGTERM set it (a second
    SIGINT raises ``KeyboardInterrupt`` at once). ``reason`` names what asked ("SIGTERM", ...);
    ``exit_code`` is the shell convention for it (128 + signal number, 1 for a code request).
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.reason is not None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum is not None else 1

    def request(self, reason: str = "stop requested", signum: int | None = None) -> None:
        self.reason, self.signum = reason, signum

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request(name, signum)
        log.warning("%s received: finishing the current step (or evaluation batch), then "
                    "writing a checkpoint (Ctrl-C again aborts at once, without one)", name)

    @contextlib.contextmanager
    def installed(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
                  ) -> Iterator[StopSignal]:
        """Route ``signals`` to this flag inside the block; the previous handlers come back
        after it, however it ends (an exception, a failure to install the second handler): no
        handler of this flag outlives the block. Must run in the main thread."""
        previous: dict[int, object] = {}
        try:
            for s in signals:
                previous[s] = signal.signal(s, self._handle)
            yield self
        finally:
            for s, handler in previous.items():  # None: set outside Python; the default then
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
