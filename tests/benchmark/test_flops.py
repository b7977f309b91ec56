"""Tests for detector/benchmark/flops.py: FLOP counts against formulas written out from the layer
shapes (a multiply-add counts 2), the stages adding up to the whole model, parameter counts, and
the CPU peak reckoned from /proc/cpuinfo text."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from detector.benchmark import (
    BenchSettings,
    build_ours,
    count_model_flops,
    cpu_peak_gflops,
    parameter_counts,
    synthetic_batch,
)
from detector.modeling.backbone import VGG16BNBackbone

# VGG16's 13 3x3 convs (pad 1) as (in, out) channels; "M" a 2x2 max-pool. Our backbone stops after
# conv5_3 (no pool5, no fully connected layers).
VGG16_CONVS = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256),
               (256, 256), "M", (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512),
               (512, 512)]


def vgg16_conv_flops(height: int, width: int) -> int:
    """sum over the convs of 2 * Cin * Cout * k * k * Hout * Wout (k = 3, 'same' padding)."""
    total = 0
    for layer in VGG16_CONVS:
        if layer == "M":
            height, width = height // 2, width // 2
            continue
        cin, cout = layer
        total += 2 * cin * cout * 3 * 3 * height * width
    return total


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def test_counter_counts_a_multiply_add_as_two_flops():
    conv, linear = nn.Conv2d(3, 4, kernel_size=3, padding=1), nn.Linear(256, 5)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        flops = _flops(lambda: linear(conv(x).flatten(1)))
    # conv: 2 images x 8x8 outputs x 4 channels x (3 x 3x3) multiply-adds; linear: 2 x 256 x 5
    assert flops == 2 * (2 * 8 * 8 * 4 * 3 * 3 * 3) + 2 * (2 * 256 * 5)


def test_vgg16_bn_backbone_at_224_is_the_conv_stack_30_7_gflops():
    backbone = VGG16BNBackbone(weights=None, frozen_blocks=0, norm="train").to("meta")
    assert not any(isinstance(m, nn.Linear) for m in backbone.modules())  # no classifier
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [
        layer for layer in VGG16_CONVS if layer != "M"]
    with torch.no_grad():
        counted = _flops(lambda: backbone(torch.empty(1, 3, 224, 224, device="meta")))
    expected = vgg16_conv_flops(224, 224)
    assert expected == pytest.approx(30.7e9, rel=0.01)  # the figure: convs only
    assert counted == pytest.approx(expected, rel=0.01)


@pytest.fixture(scope="module")
def tiny():
    """Our benchmark model at 64x96 (features 4x6), K = 3, a 32-wide box head, and its inputs."""
    torch.manual_seed(0)
    settings = BenchSettings(height=64, width=96, num_classes=3, hidden_dim=32)
    model, _ = build_ours(settings)
    data = synthetic_batch(batch=2, height=64, width=96, num_classes=3, device=torch.device("cpu"))
    return model, data


def test_stage_flops_match_the_layer_formulas_and_add_up_to_the_whole(tiny):
    model, data = tiny
    flops = count_model_flops(model, data.images, data.image_sizes, rois_per_image=10)
    batch, rois, cells, hidden, k = 2, 10, 4 * 6, 32, 3
    assert flops["backbone"] == batch * vgg16_conv_flops(64, 96)
    assert flops["rpn"] == 2 * batch * cells * (512 * 512 * 9 + 512 * 9 + 512 * 36)
    assert flops["roi_head"] == 2 * batch * rois * (512 * 7 * 7 * hidden + hidden * hidden
                                                    + hidden * (k + 1) + hidden * 4 * k)
    assert flops["other"] == 0  # anchors, proposals, NMS, post-processing: no matmul / conv
    assert flops["total"] == flops["backbone"] + flops["rpn"] + flops["roi_head"]
    assert flops["rois_per_image"] == rois
    assert not model.training
    # RoIAlign counts 0 whichever backend runs (the sparse product would count as a dense matmul)
    assert model.roi_head.pooler.backend == "auto"
    model.roi_head.pooler.backend = "sparse"
    try:
        again = count_model_flops(model, data.images, data.image_sizes, rois_per_image=10)
    finally:
        model.roi_head.pooler.backend = "auto"
    assert again == flops


def test_roi_head_flops_scale_with_the_roi_count(tiny):
    model, data = tiny
    few = count_model_flops(model, data.images, data.image_sizes, rois_per_image=5)
    many = count_model_flops(model, data.images, data.image_sizes, rois_per_image=20)
    assert many["roi_head"] == 4 * few["roi_head"]
    assert many["backbone"] == few["backbone"] and many["rpn"] == few["rpn"]


def test_parameter_counts_per_stage_add_up(tiny):
    model, _ = tiny
    params = parameter_counts(model)
    hidden, k = 32, 3
    assert params["rpn"] == 512 * 512 * 9 + 512 + (512 + 1) * 9 + (512 + 1) * 36
    assert params["roi_head"] == ((512 * 49 + 1) * hidden + (hidden + 1) * hidden
                                  + (hidden + 1) * (k + 1) + (hidden + 1) * 4 * k)
    assert params["total"] == sum(p.numel() for p in model.parameters())
    assert params["backbone"] + params["rpn"] + params["roi_head"] + params["other"] == (
        params["total"])


CPUINFO = """processor\t: 0
physical id\t: 0
core id\t\t: 0
cpu MHz\t\t: 2500.000
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw
processor\t: 1
physical id\t: 0
core id\t\t: 1
cpu MHz\t\t: 2500.000
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw
"""


def test_cpu_peak_is_cores_times_clock_times_flop_per_cycle():
    peak = cpu_peak_gflops(8, CPUINFO)  # 8 threads on 2 physical cores: 2 cores count
    assert peak.gflops == pytest.approx(2 * 2.5 * 64)
    assert "2 cores x 2.50 GHz" in peak.assumption and "2 FMA units" in peak.assumption
    assert cpu_peak_gflops(1, CPUINFO).gflops == pytest.approx(2.5 * 64)
    avx2 = CPUINFO.replace(" avx512f avx512bw", "")
    assert cpu_peak_gflops(2, avx2).gflops == pytest.approx(2 * 2.5 * 32)


@pytest.mark.parametrize("cpuinfo", [CPUINFO.replace(" fma", ""), CPUINFO.replace("cpu MHz", "x"),
                                     "", CPUINFO.replace(" avx2 fma avx512f avx512bw", "")])
def test_cpu_peak_is_unknown_without_fma_clock_or_vector_isa(cpuinfo):
    peak = cpu_peak_gflops(2, cpuinfo)
    assert peak.gflops is None and peak.assumption.startswith("unknown")
