"""Tests for detector/modeling/backbone.py: shapes, freezing, BN modes, weight loading, offline errors."""

from __future__ import annotations

import http.client
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models

from detector.modeling.backbone import ResNet50C4Backbone, VGG16BNBackbone, freeze_batch_norm
from detector.modeling.weights import WeightsUnavailableError, vgg16_classifier_state

VGG_IMAGENET = models.VGG16_BN_Weights.IMAGENET1K_V1
VGG_FILE = Path(VGG_IMAGENET.url).name  # vgg16_bn-6c64b313.pth


def _randomise_batch_norm(model: nn.Module) -> None:
    """Give every BN non-trivial statistics and affine terms (so BN handling is really tested)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def torchvision_vgg(tmp_path_factory) -> tuple[nn.Module, Path]:
    """A torchvision vgg16_bn (random init, randomised BN) and the path of its saved state dict.

    The 400 MB ``classifier.0`` entries are left out to keep the file quick to write and read
    (the classifier is tested in test_box_head.py); the other classifier entries stay, as extra
    keys a backbone must ignore.
    """
    model = models.vgg16_bn(weights=None).eval()
    _randomise_batch_norm(model)
    path = tmp_path_factory.mktemp("weights") / "vgg16_bn_local.pth"
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.0.")}
    torch.save(state, path)
    return model, path


def _conv_blocks(backbone: VGG16BNBackbone) -> list[list[nn.Conv2d]]:
    """The 13 convs of the backbone grouped into VGG's 5 blocks."""
    convs = [m for m in backbone.features if isinstance(m, nn.Conv2d)]
    sizes = [2, 2, 3, 3, 3]
    starts = [sum(sizes[:i]) for i in range(5)]
    return [convs[s : s + n] for s, n in zip(starts, sizes, strict=True)]


def _assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding accumulated through a deep network (frozen BN folds its
    statistics in a different order than BatchNorm2d)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4 * scale)


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


# ---------------------------------------------------------------- VGG16-BN: structure and shapes


@pytest.mark.parametrize(("height", "width"), [(32, 32), (32, 64), (47, 50)])
def test_vgg_output_shape_is_floor_of_stride_16(height, width):
    backbone = VGG16BNBackbone().eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, height, width))
    assert out.shape == (2, 512, height // 16, width // 16)
    assert backbone.out_channels == 512 and backbone.stride == 16


def test_vgg_layout_matches_torchvision_features_without_pool5():
    with torch.device("meta"):
        reference = models.vgg16_bn(weights=None).features[:43]
    backbone = VGG16BNBackbone(norm="train", frozen_blocks=0)
    assert [type(m) for m in backbone.features] == [type(m) for m in reference]
    ours = {k: v.shape for k, v in backbone.state_dict().items()}
    assert ours == {f"features.{k}": v.shape for k, v in reference.state_dict().items()}
    assert not isinstance(backbone.features[-1], nn.MaxPool2d)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (32, 64), (47, 50)])
def test_vgg_output_stride_8_doubles_the_map(height, width):
    backbone = VGG16BNBackbone(output_stride=8).eval()
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, height, width))
    assert out.shape == (2, 512, height // 8, width // 8)
    assert backbone.stride == 8


def test_vgg_output_stride_8_keeps_the_layers_and_dilates_conv5_only():
    plain, dilated = VGG16BNBackbone(frozen_blocks=0), VGG16BNBackbone(frozen_blocks=0,
                                                                       output_stride=8)
    # same parameters under the same names: weights move freely between the two
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in dilated.state_dict().items()}
    blocks = _conv_blocks(dilated)
    assert all(conv.dilation == (1, 1) and conv.padding == (1, 1)
               for block in blocks[:4] for conv in block)
    assert all(conv.dilation == (2, 2) and conv.padding == (2, 2) for conv in blocks[4])
    pools = [m for m in dilated.features if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3  # pool1-3; pool4 is an identity at its index


def _reach(backbone: VGG16BNBackbone) -> int:
    """How far (input pixels) a change in the first input column moves the output."""
    torch.manual_seed(0)
    image = torch.randn(1, 3, 32, 256)
    changed = image.clone()
    changed[..., 0] += 5.0
    with torch.no_grad():
        diff = (backbone.eval()(changed) - backbone(image)).abs().amax(dim=(0, 1, 2))
    return int(diff.nonzero().max().item() + 1) * backbone.stride


def test_vgg_output_stride_8_sees_as_far_as_stride_16():
    """Dilating conv5 keeps its reach in input pixels (receptive field 188 vs 196 px); without
    the dilation the stride-8 map would see only 140 px."""
    plain, dilated = _reach(VGG16BNBackbone()), _reach(VGG16BNBackbone(output_stride=8))
    undilated = VGG16BNBackbone(output_stride=8)
    for conv in _conv_blocks(undilated)[4]:
        conv.dilation, conv.padding = (1, 1), (1, 1)
    assert abs(dilated - plain) <= 16, (dilated, plain)
    assert _reach(undilated) <= dilated - 16


def test_vgg_invalid_output_stride_is_rejected():
    with pytest.raises(ValueError, match="output_stride"):
        VGG16BNBackbone(output_stride=32)


@pytest.mark.parametrize("frozen_blocks", [0, 2, 4])
def test_frozen_blocks_get_no_gradient_and_later_blocks_do(frozen_blocks):
    backbone = VGG16BNBackbone(frozen_blocks=frozen_blocks, norm="train").train()
    backbone(torch.randn(2, 3, 16, 16)).square().mean().backward()
    for index, block in enumerate(_conv_blocks(backbone)):
        for conv in block:
            if index < frozen_blocks:
                assert not conv.weight.requires_grad and conv.weight.grad is None
            else:
                assert conv.weight.requires_grad and conv.weight.grad.abs().sum() > 0


def test_all_blocks_frozen_means_no_trainable_parameters():
    backbone = VGG16BNBackbone(frozen_blocks=5, norm="train")
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_norm_frozen_keeps_running_stats_in_train_mode():
    backbone = VGG16BNBackbone(frozen_blocks=0, norm="frozen").train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    # Only conv weights and biases are trainable: 13 convs.
    assert len([p for p in backbone.parameters() if p.requires_grad]) == 2 * 13
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone(torch.randn(2, 3, 16, 16) * 3 + 1)
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_norm_train_updates_stats_only_in_trainable_blocks():
    backbone = VGG16BNBackbone(frozen_blocks=2, norm="train").train()
    frozen_bn, trainable_bn = backbone.features[8], backbone.features[15]  # conv2_1's, conv3_1's
    assert not isinstance(frozen_bn, nn.BatchNorm2d) and isinstance(trainable_bn, nn.BatchNorm2d)
    frozen_mean = frozen_bn.running_mean.clone()
    trainable_mean = trainable_bn.running_mean.clone()
    backbone(torch.randn(2, 3, 16, 16) * 3 + 1)
    assert torch.equal(frozen_bn.running_mean, frozen_mean)
    assert not torch.equal(trainable_bn.running_mean, trainable_mean)


def test_freeze_batch_norm_equals_eval_mode_batch_norm():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.BatchNorm2d(4)))
    _randomise_batch_norm(model)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        expected = model.eval()(x)
        frozen = freeze_batch_norm(model).train()
        got = frozen(x)
    assert type(frozen[1][0]).__name__ == "FrozenBatchNorm2d"
    torch.testing.assert_close(got, expected)
    # A bare BatchNorm2d is returned replaced (the caller assigns it).
    assert not isinstance(freeze_batch_norm(nn.BatchNorm2d(3)), nn.BatchNorm2d)
    # The replacement lives on the original's device (meta stands in for CUDA here).
    assert freeze_batch_norm(nn.BatchNorm2d(3, device="meta")).running_var.is_meta


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="frozen_blocks"):
        VGG16BNBackbone(frozen_blocks=6)
    with pytest.raises(ValueError, match="norm"):
        VGG16BNBackbone(norm="group")
    with pytest.raises(ValueError, match="frozen_blocks"):
        ResNet50C4Backbone(frozen_blocks=5)


# ---------------------------------------------------------------- VGG16-BN: weights


def test_vgg_loads_local_torchvision_state_dict(torchvision_vgg):
    reference, path = torchvision_vgg
    backbone = VGG16BNBackbone(weights=str(path), frozen_blocks=2, norm="frozen").train()
    expected = reference.state_dict()
    loaded = backbone.state_dict()  # frozen BN keeps weight/bias/running_* (no batch counter)
    assert len(loaded) == 13 * 2 + 13 * 4
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key
    # Frozen BN built from loaded weights computes what torchvision's features do in eval mode.
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _assert_close_to_scale(backbone(x), reference.features[:43](x))


def test_vgg_norm_train_loads_batch_norm_state(torchvision_vgg):
    reference, path = torchvision_vgg
    backbone = VGG16BNBackbone(weights=str(path), frozen_blocks=0, norm="train")
    expected = reference.state_dict()
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_vgg_weights_name_uses_the_torch_hub_cache(torchvision_vgg, tmp_path, monkeypatch):
    reference, path = torchvision_vgg
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / VGG_FILE).symlink_to(path)
    backbone = VGG16BNBackbone(weights="IMAGENET1K_V1", frozen_blocks=0, norm="train")
    conv5_3 = backbone.features[40].weight
    assert torch.equal(conv5_3, reference.features[40].weight)


def _assert_offline_message(error: BaseException) -> None:
    message = str(error)
    assert "\n" not in message
    assert "weights=" in message
    assert VGG_FILE in message and VGG_IMAGENET.url in message
    assert error.__cause__ is None and error.__suppress_context__


def test_vgg_weights_name_offline_fails_with_one_clear_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        VGG16BNBackbone(weights="IMAGENET1K_V1")
    _assert_offline_message(info.value)


def test_vgg_cache_miss_offline_goes_through_real_hub_code(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        vgg16_classifier_state("DEFAULT")
    _assert_offline_message(info.value)
    assert str(tmp_path) in str(info.value)  # says where the cache is


def test_unknown_weights_name_fails_with_one_clear_sentence():
    with pytest.raises(ValueError) as info:
        VGG16BNBackbone(weights="IMAGENET_V9")
    message = str(info.value)
    assert "\n" not in message and "IMAGENET1K_V1" in message and "IMAGENET_V9" in message


def test_missing_local_file_fails_with_one_clear_sentence(tmp_path):
    missing = tmp_path / "nowhere" / "vgg16_bn.pth"
    with pytest.raises(FileNotFoundError) as info:
        VGG16BNBackbone(weights=str(missing))
    assert "\n" not in str(info.value) and str(missing) in str(info.value)


def test_corrupt_local_file_fails_with_one_clear_sentence(tmp_path):
    path = tmp_path / "vgg16_bn.pth"
    path.write_bytes(b"<html>not a checkpoint</html>\n" * 10)
    with pytest.raises(ValueError, match="could not read") as info:
        VGG16BNBackbone(weights=str(path))
    assert "\n" not in str(info.value) and info.value.__suppress_context__


def test_wrong_state_dict_fails_with_one_clear_sentence(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="missing") as info:
        VGG16BNBackbone(weights=str(path))
    assert "\n" not in str(info.value)
    state = VGG16BNBackbone(norm="train", frozen_blocks=0).state_dict()
    state["features.0.weight"] = torch.zeros(1)  # right keys, one wrong shape
    torch.save(state, path)
    with pytest.raises(ValueError, match="layout") as info:
        VGG16BNBackbone(weights=str(path))
    assert "\n" not in str(info.value)


def test_classifier_state_without_classifier_fails_with_one_clear_sentence(torchvision_vgg):
    _, path = torchvision_vgg
    with pytest.raises(ValueError, match=r"classifier\.0\.weight") as info:
        vgg16_classifier_state(str(path))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- ResNet-50 C4


def test_resnet_c4_shape_is_ceil_of_stride_16():
    backbone = ResNet50C4Backbone().eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 65, 80))
    assert out.shape == (1, 1024, 5, 5)
    assert backbone.out_channels == 1024 and backbone.stride == 16
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_resnet_c4_output_stride_8_dilates_layer3_with_the_same_weights():
    plain, dilated = ResNet50C4Backbone(), ResNet50C4Backbone(output_stride=8)
    with torch.no_grad():
        out = dilated.eval()(torch.randn(1, 3, 64, 80))
    assert out.shape == (1, 1024, 8, 10) and dilated.stride == 8
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in dilated.state_dict().items()}
    assert dilated.layer3[1].conv2.dilation == (2, 2) and plain.layer3[1].conv2.dilation == (1, 1)
    with pytest.raises(ValueError, match="output_stride"):
        ResNet50C4Backbone(output_stride=4)


def test_resnet_c4_frozen_stages_and_local_weights(tmp_path):
    reference = models.resnet50(weights=None).eval()
    _randomise_batch_norm(reference)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    backbone = ResNet50C4Backbone(weights=str(path), frozen_blocks=2, norm="train").train()
    assert not backbone.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in backbone.layer1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    assert isinstance(backbone.layer2[0].bn1, nn.BatchNorm2d)
    assert torch.equal(backbone.layer3[5].conv3.weight, reference.layer3[5].conv3.weight)
    backbone.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = reference.layer3(reference.layer2(reference.layer1(stem)))
        _assert_close_to_scale(backbone(x), expected)


@pytest.mark.gpu
def test_backbones_on_cuda_under_autocast(cuda_device):
    for backbone in (VGG16BNBackbone(), ResNet50C4Backbone()):
        backbone = backbone.to(cuda_device).train()
        with torch.autocast("cuda", dtype=torch.float16):
            out = backbone(torch.randn(2, 3, 64, 96, device=cuda_device))
        assert out.shape == (2, backbone.out_channels, 4, 6)
        assert torch.isfinite(out).all()
        out.float().square().mean().backward()


@pytest.mark.parametrize("failure", [
    urllib.error.URLError("[Errno -2] Name or service not known"),
    TimeoutError("timed out"),
    http.client.RemoteDisconnected("Remote end closed connection without response"),
    http.client.IncompleteRead(b"partial"),  # no OSError: a cut download
    RuntimeError('invalid hash value (expected "6c64b313", got "0badf00d")'),  # a proxy's page
])
def test_any_download_failure_is_one_user_error_line(failure, tmp_path, monkeypatch):
    """Whatever way the download fails, one line: what failed, that it needs the network or a
    local file (the config key to pass it), and where torch caches it."""
    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    with pytest.raises(WeightsUnavailableError) as info:
        VGG16BNBackbone(weights="IMAGENET1K_V1")
    _assert_offline_message(info.value)
    message = str(info.value)
    assert message.startswith(f"could not download VGG16-BN weights IMAGENET1K_V1 from "
                              f"{VGG_IMAGENET.url} ({type(failure).__name__}")
    assert "needs the network or a local file" in message
    assert f"model.backbone.weights=/path/to/{VGG_FILE}" in message
    assert str(Path(torch.hub.get_dir()) / "checkpoints") in message
    assert torch.hub.get_dir().startswith(str(tmp_path))


def test_a_corrupt_cached_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / VGG_FILE).write_bytes(b"<html>proxy says no</html>")
    with pytest.raises(WeightsUnavailableError) as info:
        VGG16BNBackbone(weights="IMAGENET1K_V1")
    assert str(info.value).startswith(f"could not read the cached VGG16-BN weights "
                                      f"{cache / VGG_FILE} (")
    _assert_offline_message(info.value)
