"""Inference with each batch norm folded into the convolution before it.

In eval mode a BN layer is a fixed per-channel affine map ``y = s (x - mean) + beta`` with
``s = gamma / sqrt(var + eps)``, so a convolution followed by it is one convolution with weight
``w s`` and bias ``(b - mean) s + beta``. Skipping the 13 BN passes of VGG16-BN over full-size
activations saved ~10% of CPU inference at 600x1000 (profiled). The folded weights are cached and
recomputed whenever a parameter or statistic changes (optimiser step, ``load_state_dict``,
``.to()``); they are never part of the state dict.

Shorthand: O output channels, I input channels, k x k kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["FoldedConvBN", "fold_conv_bn"]

_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor]:
    """The weight (Tensor[O, I, k, k]) and bias (Tensor[O]) of ``conv`` followed by ``norm`` in
    eval mode (``BatchNorm2d`` with running statistics, or ``FrozenBatchNorm2d``)."""
    scale = norm.running_var.add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    shift = (bias - norm.running_mean) * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return conv.weight * scale.view(-1, 1, 1, 1), shift


def _tensors(conv: nn.Conv2d, norm: nn.Module) -> list[Tensor]:
    found = [conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.weight, norm.bias]
    return [t for t in found if t is not None]


class FoldedConvBN:
    """Runs an ``nn.Sequential`` with every (Conv2d, BN) pair as one convolution.

    Only for inference: the BN layers must normalise with their running statistics (eval mode,
    or frozen) and nothing may need gradients; the caller decides when (see `applies`).

    Args:
        layers (nn.Sequential): convolutions, BN layers and anything else, in order.
    """

    def __init__(self, layers: nn.Sequential) -> None:
        self.layers = layers
        self._key: tuple | None = None
        self._folded: dict[int, tuple[Tensor, Tensor]] = {}

    @property
    def pairs(self) -> dict[int, int]:
        """Index of each foldable convolution -> index of its BN (read from the layers each time:
        layers replaced later, e.g. BN frozen, are seen)."""
        modules = list(self.layers)
        return {
            index: index + 1
            for index, (conv, norm) in enumerate(zip(modules[:-1], modules[1:], strict=True))
            if isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros"
            and isinstance(norm, _NORMS)
            and (not isinstance(norm, nn.BatchNorm2d) or norm.track_running_stats)
        }

    def applies(self) -> bool:
        """Whether folding gives the same function as the layers: every paired BN uses its running
        statistics, and no gradient is being recorded (folded weights carry none)."""
        if torch.is_grad_enabled():
            return False
        modules = list(self.layers)
        return all(not modules[norm].training for norm in self.pairs.values())

    def _current(self) -> dict[int, tuple[Tensor, Tensor]]:
        modules, pairs = list(self.layers), self.pairs
        tensors = [t for conv, norm in pairs.items()
                   for t in _tensors(modules[conv], modules[norm])]
        if any(t.is_inference() for t in tensors):  # no version counter: never trust a cache
            key = None
        else:
            key = tuple((t.data_ptr(), t.dtype, t._version) for t in tensors)
        if key is None or key != self._key:
            with torch.inference_mode(False):  # ordinary tensors, usable outside inference mode
                self._folded = {conv: fold_conv_bn(modules[conv], modules[norm])
                                for conv, norm in pairs.items()}
            self._key = key
        return self._folded

    def clear(self) -> None:
        """Drop the cached weights (memory); they are rebuilt on the next call."""
        self._key, self._folded = None, {}

    def __call__(self, x: Tensor) -> Tensor:
        folded = self._current()
        skip = {index + 1 for index in folded}
        for index, layer in enumerate(self.layers):
            if index in folded:
                weight, bias = folded[index]
                x = F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation,
                             layer.groups)
            elif index not in skip:
                x = layer(x)
        return x
