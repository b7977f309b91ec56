"""Where and how a model runs: device and precision choice, autocast, moving batches, seeding.

Shared by training, evaluation and inference (it imports only ``detector.errors``). The value
rules of ``device``, ``precision`` and ``channels_last`` live here, once: a bad value is an
``OptionError`` (one line for the tools)."""

from __future__ import annotations

import contextlib
import random
import re
import warnings

import numpy as np
import torch

from detector.errors import OptionError

__all__ = ["LAYOUTS", "PRECISIONS", "apply_layout", "autocast", "check_layout_setting",
           "resolve_device", "resolve_layout", "resolve_precision", "seed_everything",
           "to_device"]

PRECISIONS = ("fp32", "bf16", "fp16")  # what a run computes in ("auto" chooses one)

# memory layouts of a training run (train.channels_last; see resolve_layout)
LAYOUTS = ("channels_last", "contiguous", "mixed")
# "mixed": the leading convolutions with at most this many input channels keep the standard layout
MIXED_NCHW_MAX_CHANNELS = 128


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu", "cuda" or "cuda:N" as given.

    Raises:
        OptionError: another name, or a CUDA device this machine does not have.
    """
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise OptionError("device", f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device", f"device={name} was asked for but CUDA is not available; "
                                    f"use device=cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise OptionError("device", f"device={name} but this machine has "
                                    f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the device computes bfloat16 natively (CUDA with bf16 support, or a
    CPU whose oneDNN kernels support it, e.g. AVX-512 BF16 / AMX), else "fp32"; others as given.

    Raises:
        OptionError: a precision other than auto or one of ``PRECISIONS``.
    """
    if precision != "auto":
        if precision not in PRECISIONS:
            raise OptionError("precision", f"precision must be auto, fp32, bf16 or fp16, got "
                                           f"{precision!r}")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


def resolve_layout(setting: bool | str, device: torch.device, precision: str) -> str:
    """The memory layout of a training run from ``train.channels_last``: True -> "channels_last",
    False -> "contiguous", "auto" -> "mixed" on a CPU in fp32, else "channels_last".

    Why "auto" differs on a CPU in fp32 (measured with ``tools/profile_step.py`` on a 2-core AVX2
    CPU, VGG16-BN, batch 4 at 128 px): oneDNN's channels-last convolution backward runs at about
    half the speed of the standard layout's where the channels are few and the maps large
    (conv1_2: 295 vs 124 ms per step), while the forward and the deep layers favour channels-last;
    the mixed layout takes the faster of each (about 8 % per step). With bf16 or on CUDA,
    channels-last throughout was the faster (~10 % on the bf16 CPU)."""
    check_layout_setting(setting)
    if setting is True or setting is False:
        return "channels_last" if setting else "contiguous"
    return "mixed" if device.type == "cpu" and precision == "fp32" else "channels_last"


def check_layout_setting(setting: bool | str) -> None:
    """Raise ``OptionError`` unless ``setting`` is True, False or "auto" (``resolve_layout``)."""
    if not (setting is True or setting is False or (isinstance(setting, str) and
                                                   setting == "auto")):
        raise OptionError("channels_last", f"channels_last must be true, false or auto, got "
                                           f"{setting!r}")


def apply_layout(model: torch.nn.Module, layout: str) -> torch.memory_format:
    """Put ``model``'s weights in ``layout`` (in place) and return the memory format its input
    images should have.

    Args:
        layout: "channels_last" (every 4-d weight NHWC: convolutions run NHWC kernels),
            "contiguous" (the standard NCHW layout) or "mixed": channels-last except the leading
            run of convolutions (in module order) with at most 128 input channels, which stay
            NCHW with the images (for VGG16: conv1_1 to conv3_1); the first channels-last weight
            switches the activations to channels-last from there on.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "contiguous":
        model.to(memory_format=torch.contiguous_format)
        return torch.contiguous_format
    model.to(memory_format=torch.channels_last)
    if layout == "channels_last":
        return torch.channels_last
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            if module.in_channels > MIXED_NCHW_MAX_CHANNELS:
                break
            module.to(memory_format=torch.contiguous_format)
    return torch.contiguous_format


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
