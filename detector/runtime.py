"""Where and how a model runs: device and precision choice, autocast, moving batches, seeding.

Shared by training, evaluation and inference (it imports nothing of the package)."""

from __future__ import annotations

import contextlib
import random
import warnings

import numpy as np
import torch

__all__ = ["autocast", "resolve_device", "resolve_precision", "seed_everything", "to_device"]


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; any other torch device string as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name} was asked for but CUDA is not available; use device=cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the device computes bfloat16 natively (CUDA with bf16 support, or a
    CPU whose oneDNN kernels support it, e.g. AVX-512 BF16 / AMX), else "fp32"; others as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a Batch dict (docs/design.md) to ``device`` (non-blocking)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def autocast(device: torch.device, precision: str):
    """Autocast context: "fp32" (none), "bf16" (CUDA, or CPUs with bf16 support via oneDNN) or
    "fp16" (CUDA only; pair it with a GradScaler). Losses are computed in float32 regardless."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cpu" and precision == "fp16":
        warnings.warn("fp16 mixed precision needs CUDA; running fp32 on the CPU", stacklevel=2)
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
