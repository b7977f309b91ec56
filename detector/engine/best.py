"""The best checkpoint and stopping early: which evaluation scored best so far, the model file
written for it (``checkpoints/best.pth``, the same payload as ``final.pth``:
``save_model_file``), and how many evaluations in a row did not improve on it.

``BestRule`` holds the options (the metric, ``max``/``min``, the patience; its constructor refuses
a bad one with an ``OptionError`` naming it), ``BestTracker`` the pure bookkeeping (part of a
training checkpoint: ``state_dict``/``load_state_dict``) and ``BestCheckpoint`` the tracker plus
the file. A NaN or missing (``None``: undefined) value never improves; a metric name the
evaluation does not report is an ``OptionError`` at the first evaluation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from detector.checkpoint import save_checkpoint
from detector.engine import distributed as dist
from detector.errors import OptionError

__all__ = ["MODES", "BestCheckpoint", "BestRule", "BestTracker", "save_model_file"]

log = logging.getLogger("detector.train")
MODES = ("max", "min")


def save_model_file(path: str | Path, *, model: nn.Module, extra: dict, iteration: int) -> Path:
    """Write a model file (``final.pth``, ``best.pth``) atomically: ``extra`` (``config``,
    ``class_names``, ``label_to_cat_id``), the model's weights and the ``iteration`` they are of:
    what eval, predict, export and serve load."""
    return save_checkpoint(path, {**extra, "model": model.state_dict(), "iteration": int(iteration)})


@dataclass(frozen=True)
class BestRule:
    """What "best" means.

    Args:
        metric (str, optional): a key of the evaluation's metrics (``AP50``, ``AP``, ...);
            None: no best checkpoint and no early stop.
        mode (str): ``max`` (higher is better) or ``min``.
        patience (int, optional): stop after this many evaluations in a row without improvement
            (>= 1; None: never).
    """

    metric: str | None = None
    mode: str = "max"
    patience: int | None = None

    def __post_init__(self) -> None:
        """Raises ``OptionError`` (named ``metric``, ``mode`` or ``patience``) for a bad value."""
        if self.metric is not None and (not isinstance(self.metric, str) or not self.metric):
            raise OptionError("metric", f"metric must be a metric name or null, got "
                                        f"{self.metric!r}")
        if self.mode not in MODES:
            raise OptionError("mode", f"mode must be 'max' or 'min', got {self.mode!r}")
        patience = self.patience
        if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool)
                                     or patience < 1):
            raise OptionError("patience", f"patience must be null or an integer >= 1, got "
                                          f"{patience!r}")
        if patience is not None and self.metric is None:
            raise OptionError("patience", "patience needs a metric to watch (metric is null)")


class BestTracker:
    """The best value so far of ``rule.metric``, the iteration it was scored at, and the
    evaluations since (``bad``: without improvement)."""

    def __init__(self, *, rule: BestRule) -> None:
        self.rule = rule
        self.value: float | None = None
        self.iteration: int | None = None
        self.bad = 0

    @property
    def stop_due(self) -> bool:
        """Whether the patience ran out (the run should stop)."""
        return self.rule.patience is not None and self.bad >= self.rule.patience

    def better(self, value: float | None) -> bool:
        """Whether ``value`` improves on the best so far (NaN and None never do)."""
        if value is None or not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.rule.mode == "max" else value < self.value

    def observe(self, metrics: dict, iteration: int) -> bool:
        """Count one evaluation's ``metrics`` at ``iteration``; True when it is the new best."""
        if self.rule.metric is None:
            return False
        if self.rule.metric not in metrics:
            known = ", ".join(k for k, v in metrics.items() if isinstance(v, int | float | None))
            raise OptionError("metric", f"metric {self.rule.metric!r} is not one the evaluation "
                                        f"reports ({known})")
        value = metrics[self.rule.metric]
        value = float(value) if isinstance(value, int | float) else None
        if not self.better(value):
            self.bad += 1
            return False
        self.value, self.iteration, self.bad = value, int(iteration), 0
        return True

    def record(self) -> dict | None:
        """``{"metric", "value", "iteration"}`` of the best so far (final_metrics.json), or None."""
        if self.value is None:
            return None
        return {"metric": self.rule.metric, "value": self.value, "iteration": self.iteration}

    def state_dict(self) -> dict:
        return {"metric": self.rule.metric, "mode": self.rule.mode, "value": self.value,
                "iteration": self.iteration, "bad_evaluations": self.bad}

    def load_state_dict(self, state: dict | None) -> None:
        """Continue from ``state_dict()`` (checked by ``resume_checks``); None (a checkpoint
        from before) or another metric or mode: start fresh."""
        self.value, self.iteration, self.bad = None, None, 0
        if state is None:
            return
        if (state.get("metric"), state.get("mode")) != (self.rule.metric, self.rule.mode):
            log.warning("the checkpoint tracked the best %s (%s), this run %s (%s): the best "
                        "value starts afresh", state.get("metric"), state.get("mode"),
                        self.rule.metric, self.rule.mode)
            return
        self.value, self.iteration = state.get("value"), state.get("iteration")
        self.bad = int(state.get("bad_evaluations", 0))


class BestCheckpoint(BestTracker):
    """A ``BestTracker`` that writes ``path`` (``save_model_file``, rank 0) at each new best.

    Args:
        rule (BestRule): the metric, mode and patience.
        path (Path): ``checkpoints/best.pth`` of the run.
        extra (dict, optional): the plain values of every model file (``config``, ...).
    """

    def __init__(self, *, rule: BestRule, path: str | Path, extra: dict | None = None) -> None:
        super().__init__(rule=rule)
        self.path, self.extra = Path(path), dict(extra or {})

    def update(self, metrics: dict, iteration: int, model: nn.Module) -> bool:
        """Count an evaluation of ``model`` at ``iteration``; write ``path`` when it is the new
        best (every rank decides alike: the metrics are broadcast). Returns whether it was."""
        improved = self.observe(metrics, iteration)
        if improved:
            if dist.is_main():
                save_model_file(self.path, model=model, extra=self.extra, iteration=iteration)
            log.info("new best %s %.4f at iteration %d: %s", self.rule.metric, self.value,
                     iteration, self.path)
        elif self.rule.metric is not None:
            shown = "none yet" if self.value is None else f"{self.value:.4f} at it {self.iteration}"
            log.info("%s did not improve (best %s; %d evaluation(s) without improvement%s)",
                     self.rule.metric, shown, self.bad, "" if self.rule.patience is None
                     else f" of {self.rule.patience}")
        if self.stop_due:
            log.warning("early stop: %s has not improved for %d evaluations (best %s at "
                        "iteration %s)", self.rule.metric, self.bad, self.value, self.iteration)
        return improved
