"""Packing: turn a per-row selection mask into a fixed-size, padded index without host syncs,
and the switch that decides when dropping the padding (one host sync) is worth it instead.

Shorthand: B images, N candidate rows per image, K packed slots per image.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gather_rows", "is_exporting", "pack_rows", "use_compaction"]


def pack_rows(mask: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """Indices of the first ``capacity`` True entries of each row, in row order, padded.

    Args:
        mask (BoolTensor[B, N]): selected rows.
        capacity (int): K, the number of slots per image.

    Returns:
        index (LongTensor[B, K]): column of each packed entry (0 in padding slots).
        valid (BoolTensor[B, K]): True for slots that hold a selected row.
    """
    batch, num = mask.shape
    rank = mask.long().cumsum(dim=1) - 1
    slot = torch.where(mask & (rank < capacity), rank, torch.full_like(rank, capacity))
    index = torch.zeros((batch, capacity + 1), dtype=torch.long, device=mask.device)
    columns = torch.arange(num, device=mask.device).expand(batch, num)
    index = index.scatter(1, slot, columns)[:, :capacity]
    valid = torch.arange(capacity, device=mask.device)[None, :] < mask.sum(dim=1, keepdim=True)
    return index, valid


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """values (Tensor[B, N, ...]), index (LongTensor[B, K]) -> (Tensor[B, K, ...]) rows per image."""
    shape = (*index.shape, *values.shape[2:])
    expanded = index.view(*index.shape, *([1] * (values.dim() - 2))).expand(shape)
    return values.gather(1, expanded)


def is_exporting() -> bool:
    """Whether a static graph is being captured: TorchScript-based ONNX export, tracing,
    ``torch.export`` and so the dynamo ONNX exporter, or ``torch.compile`` (all of which
    ``torch.compiler.is_compiling`` or the first two checks report). Data-dependent shapes and
    CPU-only shortcuts stay out of such graphs."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def use_compaction(compact: bool | None, device: torch.device) -> bool:
    """Whether to drop padding rows (data-dependent sizes, one host sync) rather than compute on
    the fixed-size padded tensors.

    ``compact=None`` (automatic) compacts on the CPU only, where reading a count back is free and
    padding rows cost real time; CUDA keeps the padded, sync-free path. Never while exporting or
    compiling (`is_exporting`): those need static shapes whatever ``compact`` says.
    """
    if is_exporting():
        return False
    return device.type == "cpu" if compact is None else bool(compact)
