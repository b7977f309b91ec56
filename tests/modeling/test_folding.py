"""Batch norm folded into the convolution before it: a hand-computed fold, equality with the
unfolded layers, the cache following every change of weights, and when the backbone folds."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detector.modeling.backbone import VGG16BNBackbone
from detector.modeling.folding import FoldedConvBN, fold_conv_bn


def test_hand_computed_fold():
    # conv: y = 2x + 1; BN: mean 3, var 3, eps 1 -> s = 4 / sqrt(4) = 2; y = 2 (y - 3) + 5
    conv = nn.Conv2d(1, 1, kernel_size=1)
    norm = nn.BatchNorm2d(1, eps=1.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0), conv.bias.fill_(1.0)
        norm.running_mean.fill_(3.0), norm.running_var.fill_(3.0)
        norm.weight.fill_(4.0), norm.bias.fill_(5.0)
    weight, bias = fold_conv_bn(conv, norm)
    assert weight.item() == 4.0 and bias.item() == 1.0  # 2 (2x + 1 - 3) + 5 = 4x + 1
    x = torch.tensor([[[[0.0, 1.0, -2.5]]]])
    assert torch.allclose(norm(conv(x)), 4 * x + 1)


def _layers(seed: int = 0) -> nn.Sequential:
    """conv+BN+ReLU, pool, bias-free conv + BN without affine terms, conv + frozen BN, a lone
    conv: every pairing case, with non-trivial statistics."""
    torch.manual_seed(seed)
    layers = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(8, affine=False),
        nn.Conv2d(8, 4, 3, padding=1), FrozenBatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 1),
    )
    with torch.no_grad():
        for module in layers:
            if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                if module.weight is not None:
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-1, 1)
    return layers.eval()


def test_folded_layers_equal_the_layers():
    layers = _layers()
    folded = FoldedConvBN(layers)
    assert folded.pairs == {0: 1, 4: 5, 6: 7}  # the lone 1x1 conv has no BN after it
    x = torch.randn(2, 3, 12, 10)
    with torch.no_grad():
        assert folded.applies()
        torch.testing.assert_close(folded(x), layers(x), rtol=1e-5, atol=1e-5)


def test_the_cache_follows_statistics_parameters_state_dicts_and_dtype():
    layers = _layers()
    folded = FoldedConvBN(layers)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        folded(x)
        layers[1].running_mean.add_(0.5)  # a statistic changes in place
        torch.testing.assert_close(folded(x), layers(x), rtol=1e-5, atol=1e-5)
        layers[6].weight.mul_(-1)  # a convolution weight (an optimiser step)
        torch.testing.assert_close(folded(x), layers(x), rtol=1e-5, atol=1e-5)
        layers.load_state_dict(_layers(seed=1).state_dict())
        torch.testing.assert_close(folded(x), layers(x), rtol=1e-5, atol=1e-5)
        layers.double()
        out = folded(x.double())
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, layers(x.double()))


@pytest.mark.parametrize("name", ["running_mean", "running_var", "weight", "bias"])
@pytest.mark.parametrize("index", [1, 7])  # BatchNorm2d, FrozenBatchNorm2d
def test_the_cache_follows_each_batch_norm_tensor(name, index):
    layers = _layers()
    folded = FoldedConvBN(layers)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        before = folded(x)
        getattr(layers[index], name).mul_(1.5).add_(0.25)  # in place, as an update or a load does
        expected = layers(x)
        assert not torch.allclose(expected, before, rtol=1e-4, atol=1e-4)  # the change shows
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_folding_only_applies_without_gradients_and_with_running_statistics():
    layers = _layers()
    folded = FoldedConvBN(layers)
    assert not folded.applies()  # gradients are being recorded
    with torch.no_grad():
        assert folded.applies()
        layers.train()
        assert not folded.applies()  # batch statistics: not a fixed affine map
    with torch.inference_mode():
        layers.eval()
        assert folded.applies()
        out = folded(torch.randn(1, 3, 8, 8))
    assert not out.requires_grad


def _bn_calls(backbone: VGG16BNBackbone) -> list:
    calls = []
    for module in backbone.modules():
        if isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_backbone_folds_at_inference_only(monkeypatch):
    torch.manual_seed(0)
    backbone = VGG16BNBackbone(weights=None, frozen_blocks=2, norm="train")
    backbone.train()
    images = torch.randn(2, 3, 64, 96)
    backbone(images).sum().backward()  # real running statistics and trained-like BN state
    backbone.eval()
    calls = _bn_calls(backbone)
    with torch.inference_mode():
        folded = backbone(images)
    assert calls == []  # no BN layer ran
    backbone.fold_bn = False
    with torch.inference_mode():
        plain = backbone(images)
    assert len(calls) == 13
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-4)

    backbone.fold_bn, calls[:] = True, []
    out = backbone(images)  # eval mode but gradients recorded: the layers as they are
    out.sum().backward()
    assert len(calls) == 13 and backbone.features[40].weight.grad is not None
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    calls[:] = []
    with torch.no_grad():
        backbone(images)
    assert len(calls) == 13  # exporters see the plain layers


@pytest.mark.parametrize("norm", ["frozen", "train"])
def test_train_mode_never_folds_and_drops_the_cache(norm):
    backbone = VGG16BNBackbone(weights=None, frozen_blocks=0, norm=norm).eval()
    with torch.no_grad():
        backbone(torch.randn(1, 3, 32, 32))
    cached = backbone.folded._folded
    assert cached
    backbone.eval()  # evaluation loops call eval() every time: the cache stays
    with torch.no_grad():
        backbone(torch.randn(1, 3, 32, 32))
    assert backbone.folded._folded is cached
    backbone.train()
    assert not backbone.folded._folded
    calls = _bn_calls(backbone)
    with torch.no_grad():
        backbone(torch.randn(1, 3, 32, 32))
    assert len(calls) == 13  # even frozen BN: a module in train mode is left as it is
