"""What a run ended with, as the ``final_metrics.json`` a study reads: ``status`` is ``finished``
(the COCO metrics of the final evaluation) or ``diverged`` (the NaN/Inf guard stopped it: where,
at which learning rate, and the last finite losses logged before it).

A run folder without ``final_metrics.json`` is still running or was killed; see
:mod:`detector.study.runs`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detector.study.curves import read_metrics_jsonl

__all__ = ["FINISHED", "DIVERGED", "INCOMPLETE", "diverged_record", "finished_record",
           "last_logged_losses"]

FINISHED, DIVERGED, INCOMPLETE = "finished", "diverged", "incomplete"


def finished_record(metrics: Mapping[str, Any] | None, *, iterations: int, wall_time_s: float,
                    skipped_steps: int = 0) -> dict[str, Any]:
    """``final_metrics.json`` of a completed run: the metrics (or none, without a val set) plus
    ``status``, ``iterations``, ``wall_time_s`` and ``skipped_steps``."""
    return {**(metrics or {}), "status": FINISHED, "iterations": int(iterations),
            "wall_time_s": float(wall_time_s), "skipped_steps": int(skipped_steps)}


def diverged_record(*, iteration: int, lr: float, terms: Mapping[str, float],
                    metrics_jsonl: str | os.PathLike, wall_time_s: float,
                    checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """``final_metrics.json`` of a run the NaN/Inf guard stopped.

    Args:
        iteration: 1-based iteration of the failed step; ``lr`` its learning rate.
        terms: the non-finite values by name (``loss_*``, ``grad_norm``); written as strings
            (``"nan"``, ``"inf"``) since JSON has no such numbers.
        metrics_jsonl: the run's ``metrics.jsonl``: its last training record gives the last
            finite losses (``None`` when the run diverged before its first log point).
        checkpoint: the last good state, if one was written.
    """
    return {"status": DIVERGED, "iteration": int(iteration), "lr": float(lr),
            "nonfinite": {k: str(v) for k, v in terms.items()},
            "last_finite": last_logged_losses(metrics_jsonl),
            "iterations": int(iteration) - 1, "wall_time_s": float(wall_time_s),
            "checkpoint": None if checkpoint is None else str(checkpoint)}


def last_logged_losses(metrics_jsonl: str | os.PathLike) -> dict[str, float] | None:
    """The newest training record of a ``metrics.jsonl`` with every loss term finite:
    ``{"iter", "loss", "loss_*", "grad_norm"}`` (what it has of them), or None."""
    path = Path(metrics_jsonl)
    if not path.is_file():
        return None
    for record in reversed(read_metrics_jsonl(path)):
        kept = {k: v for k, v in record.items()
                if k in ("iter", "loss", "grad_norm") or k.startswith("loss_")}
        if "loss" in kept and all(isinstance(v, int | float) and math.isfinite(v)
                                  for v in kept.values()):
            return kept
    return None
