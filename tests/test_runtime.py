"""detector.runtime: the training run's memory layout (resolve_layout, apply_layout)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detector.modeling.backbone import VGG16BNBackbone
from detector.runtime import apply_layout, resolve_layout

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("setting", "device", "precision", "layout"), [
    (True, CPU, "fp32", "channels_last"), (False, CPU, "fp32", "contiguous"),
    (True, CUDA, "bf16", "channels_last"), (False, CUDA, "fp16", "contiguous"),
    ("auto", CPU, "fp32", "mixed"), ("auto", CPU, "bf16", "channels_last"),
    ("auto", CUDA, "fp32", "channels_last"), ("auto", CUDA, "bf16", "channels_last")])
def test_resolve_layout(setting, device, precision, layout):
    assert resolve_layout(setting, device, precision) == layout


@pytest.mark.parametrize("setting", ["yes", 1, None, "channels_last"])
def test_resolve_layout_refuses_other_settings(setting):
    with pytest.raises(ValueError, match="true, false or auto"):
        resolve_layout(setting, CPU, "fp32")


def _conv_layouts(model: nn.Module) -> list[tuple[int, str]]:
    """(input channels, "nhwc" | "nchw") of every 2-d convolution's weight, in module order."""
    return [(m.in_channels, "nhwc" if (m.weight.is_contiguous(memory_format=torch.channels_last)
                                       and not m.weight.is_contiguous()) else "nchw")
            for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_mixed_keeps_vgg_up_to_conv3_1_in_nchw_and_the_rest_channels_last():
    backbone = VGG16BNBackbone(weights=None, frozen_blocks=0, norm="train")
    assert apply_layout(backbone, "mixed") == torch.contiguous_format
    layouts = _conv_layouts(backbone)
    # conv1_1 (3), conv1_2 (64), conv2_1 (64), conv2_2 (128), conv3_1 (128) by hand; then 256+
    assert layouts[:5] == [(3, "nchw"), (64, "nchw"), (64, "nchw"), (128, "nchw"), (128, "nchw")]
    assert layouts[5:] == [(256, "nhwc"), (256, "nhwc"), (256, "nhwc"), (512, "nhwc"),
                           (512, "nhwc"), (512, "nhwc"), (512, "nhwc"), (512, "nhwc")]


def test_mixed_is_a_prefix_rule():
    """A narrow convolution after a wide one stays channels-last (one switch of layout)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 256, 3), nn.Conv2d(256, 8, 3),
                          nn.Conv2d(8, 8, 3))
    apply_layout(model, "mixed")
    assert _conv_layouts(model) == [(3, "nchw"), (8, "nchw"), (256, "nhwc"), (8, "nhwc")]


@pytest.mark.parametrize(("layout", "images", "weights"), [
    ("channels_last", torch.channels_last, "nhwc"), ("contiguous", torch.contiguous_format, "nchw")])
def test_uniform_layouts(layout, images, weights):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 256, 3), nn.Conv2d(256, 8, 3))
    apply_layout(model, "channels_last")  # from any state
    assert apply_layout(model, layout) == images
    assert {kind for _, kind in _conv_layouts(model)} == {weights}
    with pytest.raises(ValueError, match="layout must be one of"):
        apply_layout(model, "nhwc")


def test_the_layout_does_not_change_the_math():
    """Features and weight gradients of VGG16-BN are the same in every layout. (BN in eval mode:
    in training mode with 2 images of 64 px, float32 itself is 1 % off float64 in conv1_1's
    gradient whatever the layout, which would hide a wrong one.)"""
    torch.manual_seed(0)
    reference = VGG16BNBackbone(weights=None, frozen_blocks=0, norm="train")
    images = torch.randn(2, 3, 64, 64)
    results = {}
    for layout in ("contiguous", "channels_last", "mixed"):
        model = VGG16BNBackbone(weights=None, frozen_blocks=0, norm="train")
        model.load_state_dict(reference.state_dict())
        model.eval()
        fmt = apply_layout(model, layout)
        features = model(images.contiguous(memory_format=fmt))
        features.square().mean().backward()
        results[layout] = (features.detach(), [p.grad.clone() for p in model.parameters()])
    base_features, base_grads = results["contiguous"]
    for layout in ("channels_last", "mixed"):
        features, grads = results[layout]
        # float32 sums in another order: ~1e-6 of the largest value apart
        torch.testing.assert_close(features, base_features, rtol=1e-4,
                                   atol=1e-4 * base_features.abs().max().item())
        for grad, base in zip(grads, base_grads, strict=True):
            torch.testing.assert_close(grad, base, rtol=1e-4, atol=1e-4 * base.abs().max().item())
