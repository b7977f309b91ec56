"""Tests for detector/modeling/box_head.py: shapes, VGG classifier initialisation, offline errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detector.modeling.box_head import MLPBoxHead, VGGBoxHead
from detector.modeling.weights import WeightsUnavailableError


@pytest.fixture(scope="module")
def vgg_classifier_file(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    """A state dict with torchvision vgg16_bn's classifier entries (random values) and its path.

    Only the ``classifier.{0,3,6}`` entries: a box head needs nothing else, and the 500 MB of a
    full state dict would only slow the test down. Names and shapes are torchvision's (checked in
    ``test_classifier_file_matches_torchvision_layout``).
    """
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "classifier.0.weight": (4096, 512 * 7 * 7),
        "classifier.0.bias": (4096,),
        "classifier.3.weight": (4096, 4096),
        "classifier.3.bias": (4096,),
        "classifier.6.weight": (1000, 4096),
        "classifier.6.bias": (1000,),
    }
    state = {k: torch.randn(shape, generator=generator) * 0.01 for k, shape in shapes.items()}
    path = tmp_path_factory.mktemp("weights") / "vgg16_bn_classifier.pth"
    torch.save(state, path)
    return state, path


def test_classifier_file_matches_torchvision_layout(vgg_classifier_file):
    from torchvision import models

    with torch.device("meta"):
        reference = models.vgg16_bn(weights=None).state_dict()
    state, _ = vgg_classifier_file
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in reference.items() if k.startswith("classifier.")
    }


# ---------------------------------------------------------------- MLP head


@pytest.mark.parametrize(("channels", "resolution", "hidden"), [(8, 7, 128), (16, 5, 32)])
def test_mlp_head_shapes(channels, resolution, hidden):
    head = MLPBoxHead(in_channels=channels, resolution=resolution, hidden_dim=hidden)
    assert head.out_features == hidden
    out = head(torch.randn(5, channels, resolution, resolution))
    assert out.shape == (5, hidden)
    assert (out >= 0).all()  # ends with a ReLU
    assert head(torch.randn(0, channels, resolution, resolution)).shape == (0, hidden)


def test_mlp_head_computes_two_relu_layers_on_flattened_features():
    head = MLPBoxHead(in_channels=3, resolution=2, hidden_dim=4)
    x = torch.randn(6, 3, 2, 2)
    hidden = F.relu(x.reshape(6, 12) @ head.fc6.weight.T + head.fc6.bias)
    expected = F.relu(hidden @ head.fc7.weight.T + head.fc7.bias)
    torch.testing.assert_close(head(x), expected)


def test_mlp_head_default_width_and_gradients():
    head = MLPBoxHead(in_channels=4)
    assert head.out_features == 1024
    x = torch.randn(3, 4, 7, 7, requires_grad=True)
    head(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert head.fc6.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- VGG head


def test_vgg_head_random_init_shapes_and_dropout():
    head = VGGBoxHead(dropout=0.5)
    assert head.out_features == 4096
    assert head.fc6.weight.shape == (4096, 512 * 7 * 7)
    # normal(0, 0.01) weights, zero biases (also proves no uninitialised memory is left).
    for fc in (head.fc6, head.fc7):
        assert abs(fc.weight.std().item() - 0.01) < 1e-4 and abs(fc.weight.mean().item()) < 1e-4
        assert torch.equal(fc.bias, torch.zeros(4096))
    x = torch.randn(2, 512, 7, 7)
    with torch.no_grad():
        head.eval()
        deterministic = head(x)
        head.train()
        dropped = head(x)
    assert deterministic.shape == dropped.shape == (2, 4096)
    assert not torch.equal(deterministic, dropped)
    with torch.no_grad():
        assert torch.equal(head.eval()(x), deterministic)  # eval mode is deterministic
        assert head(torch.zeros(0, 512, 7, 7)).shape == (0, 4096)


def test_vgg_head_loads_classifier_from_local_state_dict(vgg_classifier_file):
    state, path = vgg_classifier_file
    head = VGGBoxHead(weights=str(path)).eval()
    assert torch.equal(head.fc6.weight, state["classifier.0.weight"])
    assert torch.equal(head.fc6.bias, state["classifier.0.bias"])
    assert torch.equal(head.fc7.weight, state["classifier.3.weight"])
    assert torch.equal(head.fc7.bias, state["classifier.3.bias"])
    # Same computation as VGG's classifier up to fc7's ReLU (dropout off in eval mode).
    x = torch.randn(2, 512, 7, 7)
    fc6 = F.relu(F.linear(x.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"]))
    expected = F.relu(F.linear(fc6, state["classifier.3.weight"], state["classifier.3.bias"]))
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected)


def test_vgg_head_weights_name_offline_fails_with_one_clear_sentence(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno 101] Network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        VGGBoxHead(weights="IMAGENET1K_V1")
    message = str(info.value)
    assert "\n" not in message and "weights=" in message and "vgg16_bn-" in message


@pytest.mark.gpu
def test_box_heads_on_cuda_under_autocast(cuda_device):
    head = MLPBoxHead(in_channels=512, hidden_dim=128).to(cuda_device)
    with torch.autocast("cuda", dtype=torch.float16):
        out = head(torch.randn(4, 512, 7, 7, device=cuda_device))
    assert out.shape == (4, 128) and torch.isfinite(out).all()
