"""Backbones: image batch -> one stride-16 feature map.

Shorthand: B images, H/W padded image height/width, C backbone output channels.

Every backbone exposes ``out_channels: int`` and ``stride: int``; the detector relies on nothing else.
Pretrained weights are named as :mod:`detector.modeling.weights` describes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.ops import FrozenBatchNorm2d

from detector.modeling.folding import FoldedConvBN
from detector.modeling.weights import load_matching, load_torchvision_state
from detector.ops.packing import is_exporting

__all__ = ["VGG16_BLOCK_ENDS", "ResNet50C4Backbone", "VGG16BNBackbone", "freeze_batch_norm"]

_NORM_MODES = ("frozen", "train")
# torchvision vgg16_bn ``features`` layout: conv(3x3)+BN+ReLU units, a max-pool closing blocks 1-4.
# (end index, exclusive) of each of the 5 conv blocks; index 43 (pool5) is dropped: stride 16.
VGG16_BLOCK_ENDS = (7, 14, 24, 34, 43)
_VGG16_CHANNELS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` by a ``FrozenBatchNorm2d`` with its statistics.

    Frozen BN normalises with the stored running mean/var and affine terms, in train and eval mode
    alike, and has no trainable parameters. Children are replaced in place; the return value is
    ``module`` itself, or its replacement when ``module`` is a ``BatchNorm2d`` (assign it back).
    """
    if isinstance(module, nn.BatchNorm2d):
        tensors = [*module.parameters(), *module.buffers()]
        device = tensors[0].device if tensors else None
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps).to(device)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replaced = freeze_batch_norm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def _freeze_children(parent: nn.Module, names: list[str]) -> None:
    """Stop training the named children of ``parent``: no gradients, BN statistics frozen."""
    for name in names:
        child = freeze_batch_norm(getattr(parent, name))
        setattr(parent, name, child)
        for param in child.parameters():
            param.requires_grad_(False)


def _check_options(frozen_blocks: int, num_blocks: int, norm: str) -> None:
    if not 0 <= frozen_blocks <= num_blocks:
        raise ValueError(f"frozen_blocks must be in [0, {num_blocks}], got {frozen_blocks}")
    if norm not in _NORM_MODES:
        raise ValueError(f"norm must be one of {_NORM_MODES}, got {norm!r}")


def _vgg16_bn_features() -> nn.Sequential:
    """torchvision's vgg16_bn ``features`` up to conv5_3 + BN + ReLU (no pool5), same indices."""
    layers: list[nn.Module] = []
    in_channels = 3
    for block, widths in enumerate(_VGG16_CHANNELS):
        for width in widths:
            conv = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            in_channels = width
        if block < len(_VGG16_CHANNELS) - 1:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def _dilate_conv5(features: nn.Sequential) -> None:
    """Stride 16 -> 8 in place: pool4 becomes an identity (indices kept), conv5_x dilate by 2."""
    pool4 = VGG16_BLOCK_ENDS[3] - 1
    features[pool4] = nn.Identity()
    for layer in features[VGG16_BLOCK_ENDS[3] : VGG16_BLOCK_ENDS[4]]:
        if isinstance(layer, nn.Conv2d):
            layer.dilation, layer.padding = (2, 2), (2, 2)


class VGG16BNBackbone(nn.Module):
    """VGG16 with batch norm, truncated after conv5_3 + BN + ReLU (no last max-pool): stride 16.

    Blocks (each ends with a 2x2 max-pool except the last): conv1_1-1_2, conv2_1-2_2,
    conv3_1-3_3, conv4_1-4_3, conv5_1-5_3. The module holds ``features``, indexed exactly like
    torchvision's ``vgg16_bn().features`` (minus pool5), so its state dict is a subset of
    torchvision's.

    Args:
        weights (str | None): None (random init), a ``VGG16_BN_Weights`` name such as
            ``"IMAGENET1K_V1"``, or a path to a local torchvision-format vgg16_bn state dict.
        frozen_blocks (int): how many leading conv blocks (0-5) are frozen: no gradients and
            frozen BN statistics whatever ``norm`` says. The paper freezes conv1-conv2 (2).
        norm (str): BN in the trainable blocks. ``"frozen"``: running statistics and affine
            parameters fixed (``FrozenBatchNorm2d``; suits pretrained weights and small batches).
            ``"train"``: ordinary ``BatchNorm2d`` (suits training from random init).
        output_stride (int): 16 (the paper's) or 8. Stride 8 drops pool4 and dilates conv5_1-5_3
            by 2 (the DeepLab recipe: same layers and weights, a receptive field of 188 instead of
            196 px, a 4x larger map) for ~20% more compute at 128 px.
        fold_bn (bool): at inference (eval mode, no gradients recorded, not exporting), run each
            conv + BN as one convolution with folded, cached weights (see
            ``detector.modeling.folding``); the same features to float rounding.
    """

    def __init__(
        self,
        *,
        weights: str | None = None,
        frozen_blocks: int = 2,
        norm: str = "frozen",
        output_stride: int = 16,
        fold_bn: bool = True,
    ) -> None:
        super().__init__()
        _check_options(frozen_blocks, len(VGG16_BLOCK_ENDS), norm)
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.out_channels = 512
        self.stride = output_stride
        self.frozen_blocks = frozen_blocks
        self.features = _vgg16_bn_features()
        if output_stride == 8:
            _dilate_conv5(self.features)
        if weights is not None:
            state = load_torchvision_state(weights, enum=models.VGG16_BN_Weights, arch="VGG16-BN")
            load_matching(self, state, "VGG16-BN")
        if frozen_blocks:
            frozen_layers = range(VGG16_BLOCK_ENDS[frozen_blocks - 1])
            _freeze_children(self.features, [str(index) for index in frozen_layers])
        if norm == "frozen":
            freeze_batch_norm(self.features)
        self.fold_bn = fold_bn
        self.folded = FoldedConvBN(self.features)

    def train(self, mode: bool = True) -> VGG16BNBackbone:
        if mode:  # training changes the weights: free the folded copy (eval() keeps it)
            self.folded.clear()
        return super().train(mode)

    def forward(self, images: Tensor) -> Tensor:
        """Compute the feature map (stride s = ``self.stride``).

        Args:
            images (Tensor[B, 3, H, W]): normalised images.

        Returns:
            Tensor[B, 512, H // s, W // s]: conv5_3 features after BN + ReLU. Each max-pool
            floors, so odd sizes lose their last row/column; with H, W multiples of 32 (the data
            pipeline pads to that) the division is exact.
        """
        if self.fold_bn and not is_exporting() and self.folded.applies():
            return self.folded(images)
        return self.features(images)


class ResNet50C4Backbone(nn.Module):
    """ResNet-50 up to ``layer3`` (conv4_x, "C4"): stride 16, 1024 channels.

    Stages, in order: stem (conv1 + bn1 + max-pool), layer1, layer2, layer3; attributes are named
    like torchvision's ``resnet50()`` so its state dict is a subset of torchvision's.

    Args:
        weights (str | None): None, a ``ResNet50_Weights`` name (``"IMAGENET1K_V1"``,
            ``"IMAGENET1K_V2"``, ``"DEFAULT"``) or a path to a local torchvision resnet50 state dict.
        frozen_blocks (int): how many leading stages (0-4) are frozen, BN included; 2 = stem and
            layer1 (detectron2's default).
        norm (str): ``"frozen"`` or ``"train"``, as for :class:`VGG16BNBackbone`.
        output_stride (int): 16, or 8 with layer3's stride replaced by dilation 2 (torchvision's
            ``replace_stride_with_dilation``; same weights).
    """

    def __init__(
        self,
        *,
        weights: str | None = None,
        frozen_blocks: int = 2,
        norm: str = "frozen",
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        _check_options(frozen_blocks, 4, norm)
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.out_channels = 1024
        self.stride = output_stride
        self.frozen_blocks = frozen_blocks
        resnet = models.resnet50(
            weights=None, replace_stride_with_dilation=[False, output_stride == 8, False])
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        if weights is not None:
            state = load_torchvision_state(weights, enum=models.ResNet50_Weights, arch="ResNet-50")
            load_matching(self, state, "ResNet-50")
        stages = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"]]
        for names in stages[:frozen_blocks]:
            _freeze_children(self, names)
        if norm == "frozen":
            freeze_batch_norm(self)

    def forward(self, images: Tensor) -> Tensor:
        """Compute the feature map (stride s = ``self.stride``).

        Args:
            images (Tensor[B, 3, H, W]): normalised images.

        Returns:
            Tensor[B, 1024, ceil(H / s), ceil(W / s)]: layer3 output (the padded stride-2 convs
            round up; equal to H / s for H, W multiples of s).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer3(self.layer2(self.layer1(x)))
