"""Timing for the whole-model benchmark: interleaved medians (so that load on a shared machine hits
both sides alike), peak CUDA memory per step, FLOP counts, the device's bf16 peak, and data-loader
throughput.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "BF16_PEAK_TFLOPS",
    "StepTimes",
    "bf16_peak_tflops",
    "count_flops",
    "interleaved_times",
    "loader_images_per_second",
    "resident_bytes",
]

# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, matched as substrings of
# ``torch.cuda.get_device_name()`` in this order (SXM parts; PCIe boards are lower).
BF16_PEAK_TFLOPS = (
    ("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
    ("A10", 125.0),
)


@dataclass
class StepTimes:
    """Per-step wall times (seconds) and, on CUDA, the largest memory a step added (bytes)."""

    seconds: list[float]
    peak_extra_bytes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, device: torch.device) -> tuple[float, int]:
    cuda = device.type == "cuda"
    _sync(device)
    if cuda:
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    elapsed = time.perf_counter() - start
    extra = torch.cuda.max_memory_allocated(device) - before if cuda else 0
    return elapsed, extra


def interleaved_times(
    fns: dict[str, Callable], *, steps: int, warmup: int, device: torch.device,
    progress: Callable[[str], None] | None = None,
) -> dict[str, StepTimes]:
    """Run each callable ``warmup`` times, then ``steps`` rounds of one call each, in turn; every
    other round runs them in reverse order, so that no callable always follows the same one."""
    for round_ in range(warmup):
        for name, fn in fns.items():
            fn()
            if progress:
                progress(f"warm-up {round_ + 1}/{warmup}: {name}")
    out = {name: StepTimes(seconds=[]) for name in fns}
    for round_ in range(steps):
        for name, fn in list(fns.items())[:: -1 if round_ % 2 else 1]:
            seconds, extra = _timed(fn, device)
            out[name].seconds.append(seconds)
            out[name].peak_extra_bytes = max(out[name].peak_extra_bytes, extra)
            if progress:
                progress(f"step {round_ + 1}/{steps}: {name} {seconds:.3f} s")
    return out


def resident_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes held between steps: parameters, buffers and optimiser state."""
    tensors = [*model.parameters(), *model.buffers()]
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def count_flops(fn: Callable) -> int:
    """Floating-point operations (multiply-add = 2) torch's FlopCounterMode sees in ``fn()``."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def bf16_peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a CUDA device by name, or None when it is not in the table."""
    for key, value in BF16_PEAK_TFLOPS:
        if key in device_name:
            return value
    return None


def loader_images_per_second(loader: Iterable[dict], *, batches: int, warmup: int = 2) -> float:
    """Images per second the loader delivers (the first ``warmup`` batches start the workers and
    are not counted; the loader is restarted when an epoch ends)."""

    def forever():
        while True:
            yield from loader

    stream = forever()
    for _ in range(warmup):
        next(stream)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        images += len(next(stream)["images"])
    return images / (time.perf_counter() - start)
