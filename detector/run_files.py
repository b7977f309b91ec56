"""A run folder's files: their names, what a ``metrics.jsonl`` record and a
``final_metrics.json`` hold, and the one reader and writer of each. Training writes them,
resume rewinds the log, the studies and the predictor read them back.

A run folder (the ``output_dir`` of a training run) holds:

- ``config.json`` (:data:`CONFIG`): the resolved config, written atomically as training starts.
- ``.hydra/overrides.yaml`` (:data:`OVERRIDES`): the command-line overrides (Hydra writes it).
- ``metrics.jsonl`` (:data:`METRICS`): one JSON object per line, appended at each log point:
  a training record (:func:`train_record`) or an evaluation record (:func:`eval_record`). A
  killed run may leave a half-written last line; readers skip such lines with a warning.
- ``checkpoints/`` (:data:`CHECKPOINTS`: ``iter_*.pth``, ``final.pth`` (:data:`FINAL`) and,
  with ``train.best_metric``, ``best.pth`` (:data:`BEST`: the best evaluation's weights); see
  :mod:`detector.checkpoint`), ``tensorboard/``, ``loss_curves.png`` and the training log.
- once the run has ended, ``final_metrics.json`` (:data:`FINAL_METRICS`): ``status``
  :data:`FINISHED` or :data:`EARLY_STOPPED` (:func:`finished_record`; both :data:`COMPLETED`:
  the metrics are the run's result) or :data:`DIVERGED` (:func:`diverged_record`), and
  ``best`` (``{"metric", "value", "iteration"}``) when a best checkpoint was kept;
  without it the run is :data:`INCOMPLETE` (still running, or killed). A finished run with a
  val set also holds ``final_results.json`` (:data:`FINAL_RESULTS`): the final evaluation's
  detections as COCO results (original category ids), which the error analysis reads.

The JSON files are written atomically (:mod:`detector.fileio`) and read with the bounded
readers of :mod:`detector.untrusted` (a run folder may come from someone else).
"""

from __future__ import annotations

import json
import math
import os
import stat
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detector.fileio import atomic_write_text, atomic_writer
from detector.untrusted import MAX_FILE_BYTES, read_bytes, read_json, shown

__all__ = ["BEST", "CHECKPOINTS", "COMPLETED", "CONFIG", "DIVERGED", "EARLY_STOPPED", "FINAL",
           "FINAL_METRICS", "FINAL_RESULTS", "FINISHED", "HYDRA", "INCOMPLETE", "LOSS_CURVES", "METRICS", "OVERRIDES", "RUN_MARKERS",
           "TENSORBOARD", "append_record", "diverged_record", "drop_records_after",
           "eval_record", "finished_record", "last_logged_losses", "parse_record",
           "read_config", "read_final_metrics", "read_metrics_jsonl", "train_record",
           "write_config", "write_final_metrics"]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
FINAL_METRICS = "final_metrics.json"
FINAL_RESULTS = "final_results.json"
CHECKPOINTS = "checkpoints"
FINAL = "final.pth"  # in CHECKPOINTS: the weights at the end of training
BEST = "best.pth"  # in CHECKPOINTS: the weights of the best evaluation (train.best_metric)
TENSORBOARD = "tensorboard"
LOSS_CURVES = "loss_curves.png"
HYDRA = ".hydra"
OVERRIDES = f"{HYDRA}/overrides.yaml"
RUN_MARKERS = (CONFIG, METRICS, FINAL_METRICS, HYDRA)  # any of them: a run folder

FINISHED, DIVERGED, INCOMPLETE = "finished", "diverged", "incomplete"
EARLY_STOPPED = "early_stopped"  # finished before the schedule's end: the patience ran out
COMPLETED = (FINISHED, EARLY_STOPPED)  # the statuses whose metrics are a result


# --- metrics.jsonl ---------------------------------------------------------------------------


def train_record(*, iteration: int, phase: str, phase_iter: int, losses: Mapping[str, float],
                 lr: float, sec_per_iter: float, memory_mb: float,
                 grad_norm: tuple[float, float] | None = None,
                 extra: Mapping[str, float] | None = None) -> dict[str, Any]:
    """A training log point: ``iter`` (global), ``phase``, ``phase_iter``, ``loss`` (the sum of
    ``losses``), each ``loss_*`` term, ``lr``, ``sec_per_iter``, ``memory_mb`` (all averages
    over the window since the last point), then ``grad_norm``/``grad_norm_max`` (mean and max
    before clipping) when given and the ``extra`` keys (``grad_ratio_<block>``)."""
    record = {"iter": iteration, "phase": phase, "phase_iter": phase_iter,
              "loss": sum(losses.values()), **losses, "lr": lr, "sec_per_iter": sec_per_iter,
              "memory_mb": memory_mb}
    if grad_norm is not None:
        record["grad_norm"], record["grad_norm_max"] = grad_norm
    record.update(extra or {})
    return record


def eval_record(*, iteration: int, phase: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation point: ``iter``, ``phase`` and the numeric metrics (``AP``, ``AP50``, ...;
    per-class and PR tables are left to ``final_metrics.json``)."""
    record = {"iter": iteration, "phase": phase}
    record.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    return record


def append_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append ``record`` to the ``metrics.jsonl`` at ``path`` as one line (created if absent),
    without following a symbolic link and never blocking on a FIFO: a ``path`` that is no
    regular file of the run (a shared run folder) is an OSError, not a hang."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                 0o666)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        f.write(json.dumps(record) + "\n")


def parse_record(line: str) -> dict | None:
    """One ``metrics.jsonl`` line as a dict, or None (blank, half-written, not an object, a
    number of more than 4,300 digits or nesting deeper than the stack)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return record if isinstance(record, dict) else None


def _records(text: str, *, source: str) -> list[dict]:
    """The JSON objects of a ``metrics.jsonl``'s text; lines that are not (a half-written tail)
    are skipped with one warning naming ``source``, the first such line and how many more."""
    records, bad = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        record = parse_record(line)
        if record is None:
            bad.append(n)
            continue
        records.append(record)
    if bad:
        more = f" (and {len(bad) - 1} more lines)" if len(bad) > 1 else ""
        warnings.warn(f"{source}:{bad[0]}: not a JSON object, skipped{more}", stacklevel=3)
    return records


def read_metrics_jsonl(path: str | os.PathLike, *, limit: int | None = None) -> list[dict]:
    """The JSON objects of a ``metrics.jsonl``; lines that are not (a half-written tail, bytes
    that are not UTF-8) are skipped with one warning.

    Args:
        limit: None reads the run's own file as it is (FileNotFoundError when absent); a number
            of bytes reads someone else's with :func:`detector.untrusted.read_bytes`: ``[]``
            when absent, RunFileError when larger or no regular file.
    """
    if limit is None:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    else:
        text = (read_bytes(Path(path), limit=limit) or b"").decode("utf-8", errors="replace")
    return _records(text, source=shown(path))


def drop_records_after(metrics_path: str | os.PathLike, iteration: int) -> int:
    """Remove the ``metrics.jsonl`` records of iterations after ``iteration`` (logged by a run
    that was killed after its last checkpoint; the resumed run logs them again). Returns how
    many were dropped; the file is rewritten atomically, its other lines byte for byte (lines
    that are no record, or not UTF-8, are kept).

    Raises:
        ValueError: ``iteration`` is negative (it would drop every record).
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    lines = Path(metrics_path).read_bytes().splitlines(keepends=True)
    kept = [line for line in lines
            if _record_iteration(line.decode("utf-8", errors="replace")) <= iteration]
    if len(kept) != len(lines):
        with atomic_writer(metrics_path) as f:
            f.write(b"".join(kept))
    return len(lines) - len(kept)


def _record_iteration(line: str) -> float:
    """The ``iter`` of a line; -1 (kept by any rewind) when it has none that is finite."""
    record = parse_record(line)
    try:
        value = float(record.get("iter", -1)) if record is not None else -1
    except (TypeError, ValueError, OverflowError):
        return -1  # keep what cannot be read
    return value if math.isfinite(value) else -1


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


# --- final_metrics.json ----------------------------------------------------------------------


def finished_record(metrics: Mapping[str, Any] | None, *, iterations: int, wall_time_s: float,
                    skipped_steps: int = 0, best: Mapping[str, Any] | None = None,
                    early_stopped: bool = False) -> dict[str, Any]:
    """``final_metrics.json`` of a completed run: the metrics (or none, without a val set) plus
    ``status`` (:data:`EARLY_STOPPED` when ``early_stopped``, else :data:`FINISHED`),
    ``iterations``, ``wall_time_s``, ``skipped_steps`` and, when given, ``best``
    (``{"metric", "value", "iteration"}`` of the best checkpoint)."""
    record = {**(metrics or {}), "status": EARLY_STOPPED if early_stopped else FINISHED,
              "iterations": int(iterations), "wall_time_s": float(wall_time_s),
              "skipped_steps": int(skipped_steps)}
    if best is not None:
        record["best"] = {"metric": str(best["metric"]), "value": float(best["value"]),
                          "iteration": int(best["iteration"])}
    return record


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


def write_final_metrics(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``run_dir/final_metrics.json`` atomically (indented JSON; NaN/Inf refused:
    undefined metrics are ``null``); returns its path."""
    path = Path(run_dir) / FINAL_METRICS
    with atomic_writer(path, text=True) as f:
        json.dump(dict(record), f, indent=2, allow_nan=False)
    return path


def read_final_metrics(run_dir: str | os.PathLike, *, limit: int = MAX_FILE_BYTES) -> Any:
    """The JSON value of ``run_dir/final_metrics.json`` (None when absent: running, or
    killed); unchecked (see :mod:`detector.study.run_checks`). RunFileError when it is no
    regular file, over ``limit`` bytes or not JSON."""
    return read_json(Path(run_dir) / FINAL_METRICS, limit=limit)


# --- config.json -----------------------------------------------------------------------------


def write_config(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write the resolved config (plain containers) to ``run_dir/config.json`` atomically
    (JSON, indent 1); returns its path."""
    return atomic_write_text(Path(run_dir) / CONFIG, json.dumps(config, indent=1))


def read_config(run_dir: str | os.PathLike) -> Any:
    """The JSON value of ``run_dir/config.json`` (None when absent); unchecked. RunFileError
    when it is no regular file, too large or not JSON."""
    return read_json(Path(run_dir) / CONFIG)
