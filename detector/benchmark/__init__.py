"""Whole-model benchmark against torchvision's FasterRCNN, and what our model costs in FLOPs
(``tools/bench_model.py``)."""

from detector.benchmark.flops import (
    CpuPeak,
    count_model_flops,
    cpu_peak_gflops,
    dense_roi_align,
    fixed_rois,
    parameter_counts,
)
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
    "CpuPeak",
    "StepTimes",
    "SyntheticBatch",
    "bf16_peak_tflops",
    "build_ours",
    "build_torchvision",
    "copy_weights",
    "count_flops",
    "count_model_flops",
    "cpu_peak_gflops",
    "dense_roi_align",
    "fixed_rois",
    "interleaved_times",
    "loader_images_per_second",
    "make_optimizer",
    "make_steps",
    "parameter_counts",
    "resident_bytes",
    "synthetic_batch",
]
