"""Weight statistics on hand-built state dicts: known zero fractions, known prunable channels."""

from __future__ import annotations

import pytest
import torch

from detector.inspection import bn_gammas, layer_label, prunable_channels, weight_stats
from detector.modeling.blocks import block_name


def _state() -> dict[str, torch.Tensor]:
    conv = torch.ones(4, 2, 3, 3)  # 72 weights
    conv[0] = 0.0  # 18 exact zeros
    conv[1, 0, 0, 0] = 5e-4  # below the absolute threshold 1e-3 only
    conv[2, 0, 0, 0] = 0.005  # below 1e-2 x max (max 1.0), above 1e-3
    gamma = torch.tensor([1.0, 0.0015, -0.002, 0.5, 0.0, 2.0])
    linear = torch.tensor([[2.0, -2.0], [0.0, 4.0]])
    return {
        "backbone.features.0.weight": conv, "backbone.features.0.bias": torch.zeros(4),
        "backbone.features.1.weight": gamma, "backbone.features.1.bias": torch.zeros(6),
        "backbone.features.1.running_mean": torch.zeros(6),
        "backbone.features.1.running_var": torch.ones(6),
        "backbone.features.1.num_batches_tracked": torch.tensor(3),
        "roi_head.box_head.fc6.weight": linear, "roi_head.box_head.fc6.bias": torch.ones(2),
        "rpn_head.norm_like.weight": torch.ones(3),  # 1-D weight without running stats: skipped
    }


def test_layers_kinds_blocks_and_counts():
    stats = weight_stats(_state())
    assert [(s.label, s.block, s.kind, s.count) for s in stats] == [
        ("conv1_1", "backbone.conv1", "conv", 72),
        ("bn1_1", "backbone.conv1", "bn", 6),
        ("roi_head.box_head.fc6", "roi_head", "linear", 4)]


def test_near_zero_fractions_by_hand():
    conv, bn, linear = weight_stats(_state(), abs_threshold=1e-3, rel_threshold=1e-2)
    assert conv.near_zero_abs == pytest.approx(19 / 72)  # 18 zeros + 5e-4
    assert conv.near_zero_rel == pytest.approx(20 / 72)  # ... + 0.005 < 0.01 x 1.0
    assert bn.near_zero_abs == pytest.approx(1 / 6)  # 0.0 only
    assert bn.near_zero_rel == pytest.approx(3 / 6)  # < 0.01 x 2.0: 0.0015, -0.002, 0.0
    assert linear.near_zero_abs == pytest.approx(1 / 4)
    assert linear.mean_abs == pytest.approx(2.0)
    assert linear.std == pytest.approx(torch.tensor([2.0, -2.0, 0.0, 4.0]).std(correction=0).item())
    assert linear.max_abs == 4.0


def test_relative_threshold_scales_with_the_layer_max():
    state = {"fc.weight": torch.tensor([[100.0, 0.5], [2.0, 1.5]])}
    (fc,) = weight_stats(state, abs_threshold=1e-3, rel_threshold=0.02)  # |w| < 2.0
    assert fc.near_zero_abs == 0.0 and fc.near_zero_rel == pytest.approx(2 / 4)


def test_prunable_bn_channels_are_the_small_gammas():
    assert prunable_channels(_state(), threshold=1e-2) == {"backbone.features.1": [1, 2, 4]}
    assert prunable_channels(_state(), threshold=1e-4) == {"backbone.features.1": [4]}
    assert prunable_channels(_state(), threshold=0.0) == {}
    assert list(bn_gammas(_state())) == ["backbone.features.1"]


def test_vgg_names_follow_the_paper():
    assert [layer_label(f"backbone.features.{i}") for i in (0, 1, 2, 3, 6, 7, 23, 24, 40, 42)] == [
        "conv1_1", "bn1_1", "relu1_1", "conv1_2", "pool1", "conv2_1", "pool3", "conv4_1",
        "conv5_3", "relu5_3"]
    assert block_name("backbone.features.33") == "backbone.conv4"
    assert block_name("backbone.features.34.weight") == "backbone.conv5"
    assert block_name("backbone.layer3.0.conv1.weight") == "backbone.layer3"
    assert block_name("rpn_head.conv.weight") == "rpn_head"
