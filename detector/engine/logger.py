"""What the user watches: a log line every N iterations, eval lines, TensorBoard scalars and a
``metrics.jsonl`` file with one JSON object per log point; ``LogWindow`` gathers the steps between
two log points."""

from __future__ import annotations

import datetime
import logging
import math
import os
import resource
import stat
import time
from pathlib import Path

import torch

from detector.engine import distributed as dist
from detector.engine.monitor import ratio_key, write_histograms
from detector.errors import UserError
from detector.run_files import METRICS, TENSORBOARD, append_record, eval_record, train_record

__all__ = ["LogWindow", "RunFolderError", "TrainLogger", "format_duration", "memory_mb",
           "mean_max"]

log = logging.getLogger("detector.train")


def format_duration(seconds: float) -> str:
    """Seconds -> "H:MM:SS"."""
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


def memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process's peak resident memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def mean_max(values: list[torch.Tensor]) -> tuple[float, float] | None:
    """(mean, max) of the finite 0-dim tensors in ``values`` (fp16 overflow steps, which the
    GradScaler skips, have an inf norm), or None if there are none."""
    stacked = torch.stack(values).float()
    finite = stacked[stacked.isfinite()]
    if finite.numel() == 0:
        return None
    return tuple(torch.stack((finite.mean(), finite.max())).tolist())


class LogWindow:
    """The steps since the last log point: summed loss terms, pre-clipping gradient norms and
    the time they took. Skipped (non-finite) steps are not counted."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.losses: dict[str, torch.Tensor] = {}
        self.norms: list[torch.Tensor] = []
        self.count, self.start = 0, time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor] | None, norm: torch.Tensor) -> None:
        """One step's detached loss terms (None: a skipped step) and its gradient norm."""
        if losses is None:
            return
        for k, v in losses.items():
            self.losses[k] = self.losses.get(k, 0.0) + v
        self.norms.append(norm)
        self.count += 1

    def summary(self) -> tuple[float, dict[str, float], tuple[float, float] | None]:
        """(seconds per counted step, mean of each loss term over the window and over ranks,
        (mean, max) gradient norm); call only when ``count`` > 0."""
        elapsed = (time.perf_counter() - self.start) / self.count
        values = torch.stack([v.float() for v in self.losses.values()]) / self.count
        averaged = dict(zip(self.losses, dist.all_reduce(values).tolist(), strict=True))
        return elapsed, averaged, mean_max(self.norms)


class RunFolderError(UserError, OSError):
    """A file of the run folder that training writes is not one it may write (a symlink, a
    FIFO, ...)."""


class TrainLogger:
    """Writes the same numbers to the console log, ``metrics.jsonl`` and TensorBoard.

    Args:
        output_dir (Path): run directory; ``metrics.jsonl`` and ``tensorboard/`` go there.
        tensorboard (bool): also write TensorBoard event files.
        enabled (bool): False makes every call a no-op (non-zero ranks in distributed runs).
    """

    def __init__(self, *, output_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.tensorboard = tensorboard
        self._writer = None  # made at the first record: a run refused at its start writes none
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.output_dir / METRICS
        try:
            mode = os.lstat(self.metrics_path).st_mode
        except FileNotFoundError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):  # e.g. a shared run folder's link to a file elsewhere
            raise RunFolderError(f"{self.metrics_path} is not a regular file (a symlink, a "
                                 f"FIFO, a folder, ...): training appends its records to it; "
                                 f"move it away or train into another output_dir")

    @property
    def writer(self):
        """The TensorBoard ``SummaryWriter`` of ``output_dir/tensorboard`` (None: off)."""
        if self._writer is None and self.tensorboard and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / TENSORBOARD))
        return self._writer

    def _write(self, record: dict, iteration: int, prefix: str) -> None:
        append_record(self.metrics_path, record)  # an OSError, never a hang, on a FIFO or link
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("iter", "phase_iter"):
                    if math.isfinite(value):
                        self.writer.add_scalar(f"{prefix}/{key}", value, iteration)

    def train_point(self, *, phase: str, iteration: int, phase_iter: int, phase_total: int,
                    losses: dict[str, float], lr: float, sec_per_iter: float, eta: float,
                    memory: float, grad_norm: tuple[float, float] | None = None,
                    grad_ratios: dict[str, float] | None = None) -> None:
        """One training log point (averages over the last window).

        ``grad_norm`` is (mean, max) over the window of the total gradient norm before clipping:
        a mean far above ``clip_grad_norm`` means clipping, not the lr, sets the step size; a
        lone max spike is the first sign of divergence. ``grad_ratios`` (block -> ||grad|| / ||w||
        at the last step, ``detector.engine.monitor``) go to metrics.jsonl and TensorBoard as
        ``grad_ratio_<block>`` (dots as underscores: ``grad_ratio_backbone_conv1``), not to the
        console line."""
        if not self.enabled:
            return
        total = sum(losses.values())
        terms = "  ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in losses.items())
        grad = "" if grad_norm is None else f"  grad {grad_norm[0]:.2f} (max {grad_norm[1]:.2f})"
        log.info(
            "[%s] iter %d/%d  loss %.4f (%s)%s  lr %.2e  %.3f s/it  eta %s  mem %.0f MiB",
            phase, phase_iter, phase_total, total, terms, grad, lr, sec_per_iter,
            format_duration(eta), memory,
        )
        record = train_record(
            iteration=iteration, phase=phase, phase_iter=phase_iter, losses=losses, lr=lr,
            sec_per_iter=sec_per_iter, memory_mb=memory, grad_norm=grad_norm,
            extra={ratio_key(block): r for block, r in (grad_ratios or {}).items()})
        self._write(record, iteration, "train")

    def histograms(self, model: torch.nn.Module, iteration: int) -> None:
        """TensorBoard histograms of each block's weights and gradients (``train.histogram_period``)."""
        if self.writer is not None:
            write_histograms(self.writer, model, iteration)

    def eval_point(self, *, phase: str, iteration: int, metrics: dict) -> None:
        """One evaluation result (AP, AP50, ...)."""
        if not self.enabled:
            return
        def shown(key: str) -> str:
            value = metrics.get(key)
            return "n/a" if value is None else f"{value:.4f}"

        raw = (f" (raw weights: AP {shown('raw_AP')}  AP50 {shown('raw_AP50')})"
               if "raw_AP" in metrics else "")
        log.info("[%s] eval at iter %d: AP %s  AP50 %s%s", phase, iteration, shown("AP"),
                 shown("AP50"), raw)
        self._write(eval_record(iteration=iteration, phase=phase, metrics=metrics), iteration,
                    "val")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
