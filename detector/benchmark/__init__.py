"""Whole-model benchmark against torchvision's FasterRCNN (``tools/bench_model.py``)."""

from detector.benchmark.reference import (
    BenchSettings,
    build_ours,
    build_torchvision,
    copy_weights,
)
from detector.benchmark.steps import SyntheticBatch, make_optimizer, make_steps, synthetic_batch
from detector.benchmark.timing import (
    StepTimes,
    bf16_peak_tflops,
    count_flops,
    interleaved_times,
    loader_images_per_second,
    resident_bytes,
)

__all__ = [
    "BenchSettings",
    "StepTimes",
    "SyntheticBatch",
    "bf16_peak_tflops",
    "build_ours",
    "build_torchvision",
    "copy_weights",
    "count_flops",
    "interleaved_times",
    "loader_images_per_second",
    "make_optimizer",
    "make_steps",
    "resident_bytes",
    "synthetic_batch",
]
