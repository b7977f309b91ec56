"""Activation statistics from forward hooks, on tiny models whose outputs are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detector.inspection.activations import activation_stats, merge_by_block


def _dead_channel_model() -> nn.Module:
    """conv(1 -> 3 channels, 1x1) + ReLU: channel 0 = x, channel 1 = -x (positive where x < 0),
    channel 2 = 0 * x - 1: never positive (dead)."""
    conv = nn.Conv2d(1, 3, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, 0.0]).reshape(3, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    return nn.Sequential(conv, nn.ReLU(inplace=True))


def test_dead_channel_zero_fraction_mean_and_std_by_hand():
    x = torch.tensor([1.0, -2.0, 3.0, -4.0]).reshape(1, 1, 2, 2)
    (relu,) = activation_stats(_dead_channel_model(), [x[:, :, :1], x[:, :, 1:]])  # two batches
    # outputs: channel 0 [1, 0, 3, 0], channel 1 [0, 2, 0, 4], channel 2 [0, 0, 0, 0]
    values = torch.tensor([1.0, 0, 3, 0, 0, 2, 0, 4, 0, 0, 0, 0])
    assert relu.name == "1" and relu.channels == 3 and relu.elements == 12
    assert relu.dead_channels == [2]
    assert relu.zero_fraction == pytest.approx(8 / 12)
    assert relu.mean == pytest.approx(values.mean().item())
    assert relu.std == pytest.approx(values.std(correction=0).item())


def test_a_channel_positive_once_is_not_dead():
    x = torch.tensor([-1.0, -1.0, 2.0]).reshape(1, 1, 1, 3)  # channel 0 positive at one pixel
    (relu,) = activation_stats(_dead_channel_model(), [x])
    assert relu.dead_channels == [2]
    (relu,) = activation_stats(_dead_channel_model(), [-x.abs()])  # x <= 0: channel 0 dead too
    assert relu.dead_channels == [0, 2]


def test_hooks_are_removed_and_the_mode_restored():
    model = _dead_channel_model().train()
    activation_stats(model, [torch.ones(1, 1, 2, 2)])
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_vgg_names_and_block_merge():
    conv, relu = _dead_channel_model()
    # laid out like VGG16BNBackbone.features (conv, BN, ReLU per unit); fresh BN in eval mode is
    # the identity, so channel 2 of the first unit stays dead
    features = nn.Sequential(conv, nn.BatchNorm2d(3), relu, nn.Conv2d(3, 3, 1),
                             nn.BatchNorm2d(3), nn.ReLU())
    layers = activation_stats(features, [torch.randn(2, 1, 4, 4)], prefix="backbone.features.")
    assert [s.label for s in layers] == ["relu1_1", "relu1_2"]
    (block,) = merge_by_block(layers)
    assert block.name == "backbone.conv1" and block.channels == 6
    assert block.elements == sum(s.elements for s in layers)
    expected_zero = sum(s.zero_fraction * s.elements for s in layers) / block.elements
    assert block.zero_fraction == pytest.approx(expected_zero)
    assert 2 in layers[0].dead_channels
    assert len(block.dead_channels) == len(layers[0].dead_channels) + len(layers[1].dead_channels)
