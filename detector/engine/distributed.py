"""Multi-GPU / multi-node training through ``torchrun``: process group, DDP, reductions.

``torchrun --nproc_per_node=N tools/train_net.py ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; ``init_distributed`` joins them (nccl on
CUDA, gloo on the CPU). Every rank trains on its own shard of each epoch (the distributed
``AspectRatioGroupedBatchSampler``), gradients are averaged by ``DistributedDataParallel``, and
logged losses are averaged over ranks. Only rank 0 logs, writes checkpoints and runs COCO
evaluation, on the detections gathered from every rank
(``detector.evaluation.sharded.evaluate_sharded``). Without torchrun every helper here is the
single-process identity.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "all_gather_objects",
    "all_reduce",
    "broadcast_object",
    "cleanup_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main",
    "launched_by_torchrun",
    "wrap_ddp",
]

log = logging.getLogger("detector.train")


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device, *, timeout_s: float = 1800.0) -> torch.device:
    """Join the torchrun process group if launched by torchrun; returns this rank's device.

    Args:
        device (torch.device): the requested device; ``cuda`` becomes ``cuda:LOCAL_RANK`` and
            selects the nccl backend, ``cpu`` the gloo backend.
    """
    if not launched_by_torchrun() or is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    log.info("rank %d/%d joined the %s process group on %s", get_rank(), get_world_size(),
             backend, device)
    return device


def cleanup_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group is initialised (any world size)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs, writes files and evaluates."""
    return get_rank() == 0


def all_reduce(tensor: torch.Tensor, *, op: str = "mean") -> torch.Tensor:
    """``tensor`` reduced over ranks in place ("mean", "sum" or "max"); returned for chaining."""
    if not is_distributed():
        return tensor
    ops = {"mean": dist.ReduceOp.SUM, "sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    dist.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor /= get_world_size()
    return tensor


def all_gather_objects(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if not is_distributed():
        return [obj]
    gathered: list = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, *, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed, else ``model`` itself.

    Wrap after setting which parameters train (DDP registers those that require grad at
    construction), once per phase. ``find_unused_parameters`` because phases freeze parts and
    some outputs (e.g. the RPN's, when proposals come from another model) get no gradient."""
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

