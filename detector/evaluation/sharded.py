"""COCO evaluation of a val set split over the ranks of a ``torchrun`` job.

Each rank's loader holds a shard of the val set (``build_dataloader(num_replicas=, rank=)``):
every rank predicts its shard with the same weights, rank 0 scores the detections of all ranks,
and every rank gets the metrics. Without a process group this is ``inference.evaluate`` with the
detections sorted by image id. The collectives are torch.distributed's own (this layer sits
below the training engine, whose ``engine/distributed.py`` joins and leaves the process group).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.utils.data import DataLoader

from detector.evaluation.inference import EvaluationStopped, predict, score_detections

__all__ = ["evaluate_sharded", "sync_buffers"]


def _distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def _is_main() -> bool:
    return not _distributed() or torch_dist.get_rank() == 0


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them before each training forward, which then updates them locally; call this
    before evaluating on every rank, so each shard is scored by the model rank 0 saves."""
    if _distributed():
        for buffer in model.buffers():
            torch_dist.broadcast(buffer, src=0)


def _gather(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if not _distributed():
        return [obj]
    gathered: list = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def _broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not _distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def evaluate_sharded(
    model: nn.Module, loader: DataLoader, *, device: torch.device, precision: str = "fp32",
    progress: bool = True, should_stop: Callable[[], bool] | None = None,
) -> tuple[dict | None, list[dict]]:
    """COCO evaluation when each rank's ``loader`` holds a shard of the val set: every rank
    predicts its shard, rank 0 evaluates the detections of all ranks, every rank gets the
    metrics. Single-process: the same as ``detector.evaluation.inference.evaluate``.

    ``should_stop`` (see ``predict``) is asked by each rank before each of its batches; when it
    stops any rank, every rank raises ``EvaluationStopped`` (after the gather, so no rank is
    left waiting in a collective).

    Returns:
        (metrics from ``detector.evaluation.evaluate_coco``, all detections sorted by image id).
    """
    sync_buffers(model)
    try:
        mine = predict(model, loader, device=device, precision=precision,
                       progress=progress and _is_main(), should_stop=should_stop)
    except EvaluationStopped as stopped:
        mine = stopped.images_done  # every rank still takes part in the gather below
    parts = _gather(mine)
    if any(isinstance(p, int) for p in parts):
        done = sum(p if isinstance(p, int) else len(p) for p in parts)
        raise EvaluationStopped(f"evaluation abandoned after {done} images (stop requested)",
                                images_done=done)
    detections = [d for part in parts for d in part]
    detections.sort(key=lambda d: d["image_id"])
    metrics = None
    if _is_main():
        metrics = score_detections(loader.dataset, detections)
    return _broadcast(metrics), detections
