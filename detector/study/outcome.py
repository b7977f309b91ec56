"""What a run ended with, as the ``final_metrics.json`` a study reads: ``status`` is ``finished``
(the COCO metrics of the final evaluation) or ``diverged`` (the NaN/Inf guard or the divergence
guard stopped it: why, where, at which learning rate, and the last finite losses logged before
it). A finished run also holds ``final_results.json``: the final evaluation's detections as COCO
results (original category ids), which :mod:`detector.study.analysis` reads.

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

__all__ = ["FINISHED", "DIVERGED", "FINAL_RESULTS", "INCOMPLETE", "diverged_record",
           "finished_record", "last_logged_losses"]

FINISHED, DIVERGED, INCOMPLETE = "finished", "diverged", "incomplete"
FINAL_RESULTS = "final_results.json"  # a run folder's final detections (COCO results)


def finished_record(metrics: Mapping[str, Any] | None, *, iterations: int, wall_time_s: float,
                    skipped_steps: int = 0) -> dict[str, Any]:
    """``final_metrics.json`` of a completed run: the metrics (or none, without a val set) plus
    ``status``, ``iterations``, ``wall_time_s`` and ``skipped_steps``."""
    return {**(metrics or {}), "status": FINISHED, "iterations": int(iterations),
            "wall_time_s": float(wall_time_s), "skipped_steps": int(skipped_steps)}


def diverged_record(*, iteration: int, lr: float, terms: Mapping[str, float],
                    metrics_jsonl: str | os.PathLike, wall_time_s: float,
                    checkpoint: str | os.PathLike | None = None,
                    reason: str | None = None) -> dict[str, Any]:
    """``final_metrics.json`` of a run the NaN/Inf guard or the divergence guard stopped.

    Args:
        iteration: 1-based iteration of the failed step (or of the log point where the loss was
            found exploded); ``lr`` its learning rate.
        terms: the values that tell, by name (``loss_*``, ``grad_norm``): ``nonfinite`` holds
            the NaN/Inf ones as strings (``"nan"``, ``"inf"``: JSON has no such numbers),
            ``values`` all of them (finite ones as numbers).
        reason: how it diverged, in a few words (default: the non-finite terms named).
        metrics_jsonl: the run's ``metrics.jsonl``: its last training record gives the last
            finite losses (``None`` when the run diverged before its first log point).
        checkpoint: the last good state, if one was written.
    """
    nonfinite = {k: str(v) for k, v in terms.items() if not math.isfinite(v)}
    return {"status": DIVERGED, "reason": reason or "non-finite " + (", ".join(nonfinite) or "value"),
            "iteration": int(iteration), "lr": float(lr), "nonfinite": nonfinite,
            "values": {k: float(v) if math.isfinite(v) else str(v) for k, v in terms.items()},
            "last_finite": last_logged_losses(metrics_jsonl),
            # a non-finite step is never applied; a loss found exploded at a log point was
            "iterations": int(iteration) - (1 if nonfinite else 0),
            "wall_time_s": float(wall_time_s),
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
