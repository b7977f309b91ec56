"""When the trainer evaluates on the val set, the last result (part of a checkpoint), and the
best one so far (``detector.engine.best``: best.pth, the early stop). With a weight average
(``detector.engine.ema``) the evaluated model is the average, and the raw weights can be scored
beside it (``raw_AP``, ``raw_AP50``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from detector.engine.best import BestCheckpoint
from detector.engine.guard import StopSignal
from detector.engine.logger import TrainLogger, format_duration
from detector.engine.position import Every
from detector.engine.schedules import Phase
from detector.evaluation.inference import EvaluationStopped, voc_metrics
from detector.evaluation.sharded import evaluate_sharded

__all__ = ["RAW_KEYS", "PeriodicEvaluation"]

log = logging.getLogger("detector.train")
RAW_KEYS = ("AP", "AP50")  # the raw weights' metrics reported beside the average's (raw_AP, ...)


class PeriodicEvaluation:
    """COCO evaluation every ``period`` steps of a phase whose model is a whole detector
    (``Phase.evaluable``), and once at the end of training; a stop request abandons it.

    Args:
        loader (DataLoader, optional): val batches (under torchrun: this rank's shard; detections
            are gathered on rank 0); None: never evaluate.
        period (int): phase iterations between evaluations; 0 = only at the end.
        device (torch.device), precision (str), progress (bool): how to run the model.
        logger (TrainLogger): where each result goes.
        stop_signal (StopSignal): checked between val batches.
        best (BestCheckpoint, optional): told of each result (writes best.pth at a new best).
        metrics (sequence of str): ``voc07`` and/or ``voc`` add the Pascal VOC mAP (keys
            ``VOC07``/``VOC`` and their per-class tables) to the COCO metrics, which are always
            computed; ``coco`` alone (the default) adds nothing.
    """

    def __init__(self, *, loader: DataLoader | None, period: int, device: torch.device,
                 precision: str, progress: bool, logger: TrainLogger,
                 stop_signal: StopSignal, best: BestCheckpoint | None = None,
                 metrics: Sequence[str] = ("coco",)) -> None:
        self.loader, self.every = loader, Every(int(period))
        self.device, self.precision, self.progress = device, precision, progress
        self.logger, self.stop_signal, self.best = logger, stop_signal, best
        self.metric_names = tuple(metrics)
        self.last_metrics: dict | None = None
        self.last_iteration: int | None = None
        self.last_detections: list[dict] | None = None  # of the newest evaluation (rank 0)

    def due(self, phase: Phase, phase_iter: int) -> bool:
        """Whether to evaluate after step ``phase_iter`` (1-based) of ``phase``."""
        return self.loader is not None and self.every(phase_iter) and phase.evaluable

    def final_due(self, phase: Phase, iteration: int) -> bool:
        """Whether training that ended with ``phase`` at ``iteration`` still needs its final
        evaluation (not done yet at this iteration)."""
        return (self.loader is not None and phase.evaluable
                and self.last_iteration != iteration)

    def run(self, model: nn.Module, phase: Phase, iteration: int, *,
            raw: nn.Module | None = None) -> dict | None:
        """COCO metrics of ``model`` on the val set, or None when a stop request abandoned the
        evaluation (logged as skipped; nothing is recorded for it).

        Args:
            raw (nn.Module, optional): the raw weights when ``model`` is their average: scored
                too, as ``raw_AP`` and ``raw_AP50`` in the metrics (the rest of the result,
                best.pth and the detections are ``model``'s).
        """
        t0 = time.perf_counter()
        log.info("evaluation at iteration %d (%d val images%s)", iteration,
                 len(self.loader.dataset), "; the weight average and the raw weights"
                 if raw is not None else "")
        try:
            raw_metrics = None
            if raw is not None:
                raw_metrics, _ = self._evaluate(raw)
            metrics, self.last_detections = self._evaluate(model)
        except EvaluationStopped as stopped:
            log.warning("evaluation at iteration %d skipped: %s arrived during it (%s after %s)",
                        iteration, self.stop_signal.reason, stopped,
                        format_duration(time.perf_counter() - t0))
            return None
        if metrics is not None:  # every rank holds all detections: the same VOC numbers
            metrics = {**metrics, **voc_metrics(self.loader.dataset, self.last_detections,
                                                self.metric_names)}
            if raw_metrics is not None:
                metrics.update({f"raw_{k}": raw_metrics.get(k) for k in RAW_KEYS})
        self.last_iteration = iteration
        self.logger.eval_point(phase=phase.name, iteration=iteration, metrics=metrics)
        log.info("evaluation took %s", format_duration(time.perf_counter() - t0))
        self.last_metrics = metrics
        if self.best is not None:
            self.best.update(metrics, iteration, model)
        return metrics

    def _evaluate(self, model: nn.Module) -> tuple[dict | None, list[dict]]:
        return evaluate_sharded(model, self.loader, device=self.device, precision=self.precision,
                                progress=self.progress,
                                should_stop=lambda: self.stop_signal.requested)

    def state_dict(self) -> dict:
        return {"last_metrics": self.last_metrics, "last_eval_iteration": self.last_iteration}

    def load_state_dict(self, state: dict) -> None:
        self.last_metrics = state.get("last_metrics")
        self.last_iteration = state.get("last_eval_iteration")
