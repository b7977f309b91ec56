"""Activation statistics from forward hooks on every ``nn.ReLU`` of a module: mean, std, the
fraction of exact zeros and the dead channels (never positive over all inputs seen).

Shorthand: N images, C channels, H/W feature-map height/width.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from detector.modeling.blocks import block_name, layer_label

__all__ = ["ActivationStats", "activation_stats", "merge_by_block"]


@dataclass(frozen=True)
class ActivationStats:
    """What one ReLU (or a whole block of them) output over the inputs.

    Attributes:
        name (str): module name (``backbone.features.19``) or block name for merged stats.
        label (str): readable name (``relu3_2``, or the block name).
        block (str): ``backbone.conv3``, ...
        channels (int): C (summed over the layers of a merged block).
        mean (float): mean activation.
        std (float): standard deviation of the activations.
        zero_fraction (float): fraction of activations that are exactly 0.
        dead_channels (list[int]): channels that are never positive over all inputs (for a merged
            block: their count is ``len``; the indices are per layer and not meaningful).
        elements (int): activations seen.
    """

    name: str
    label: str
    block: str
    channels: int
    mean: float
    std: float
    zero_fraction: float
    dead_channels: list[int]
    elements: int


class _Accumulator:
    """Running sums of one layer's outputs (float64), and each channel's max."""

    def __init__(self) -> None:
        self.sums: Tensor | None = None  # [count, sum, sum of squares, zeros]
        self.channel_max: Tensor | None = None

    def __call__(self, module: nn.Module, inputs, output: Tensor) -> None:
        x = output.detach().double()
        sums = torch.stack((torch.tensor(x.numel(), dtype=x.dtype, device=x.device), x.sum(),
                            (x * x).sum(), (x == 0).sum().to(x.dtype)))
        reduce_dims = [d for d in range(x.ndim) if d != 1] if x.ndim > 1 else [0]
        top = x.amax(dim=reduce_dims) if x.ndim > 1 else x.amax().reshape(1)
        self.sums = sums if self.sums is None else self.sums + sums
        self.channel_max = top if self.channel_max is None else torch.maximum(self.channel_max, top)

    def result(self, name: str) -> ActivationStats:
        count, total, squares, zeros = self.sums.tolist()
        mean = total / count
        var = max(squares / count - mean * mean, 0.0)
        dead = (self.channel_max <= 0).nonzero().flatten().tolist()
        return ActivationStats(name, layer_label(name), block_name(name), self.channel_max.numel(),
                               mean, var ** 0.5, zeros / count, dead, int(count))


@torch.no_grad()
def activation_stats(module: nn.Module, inputs: Iterable[Tensor], *,
                     prefix: str = "") -> list[ActivationStats]:
    """Run ``module`` (in eval mode) on each input and collect the statistics of every ReLU output.

    Args:
        module (nn.Module): e.g. a detector's ``backbone``; its ReLU modules are hooked (functional
            ReLUs are not seen). Its train/eval mode is restored afterwards.
        inputs (Iterable[Tensor[N, 3, H, W]]): batches, on the module's device. Padding inside a
            batch is counted like image content: pass one image per batch for exact figures.
        prefix (str): put before the module names, e.g. "backbone." for a detector's backbone
            (so that VGG layers get their conv/relu names and blocks).

    Returns:
        list[ActivationStats]: one per ReLU that ran, in module order.
    """
    accumulators = {name: _Accumulator() for name, m in module.named_modules()
                    if isinstance(m, nn.ReLU)}
    modules = dict(module.named_modules())
    handles = [modules[name].register_forward_hook(acc) for name, acc in accumulators.items()]
    was_training = module.training
    module.eval()
    try:
        for batch in inputs:
            module(batch)
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return [acc.result(prefix + name) for name, acc in accumulators.items() if acc.sums is not None]


def merge_by_block(layers: list[ActivationStats]) -> list[ActivationStats]:
    """One ``ActivationStats`` per block: pooled mean/std/zero fraction over all of the block's
    activations, channels and dead channels summed over its layers."""
    blocks: dict[str, list[ActivationStats]] = {}
    for s in layers:
        blocks.setdefault(s.block, []).append(s)
    merged = []
    for block, group in blocks.items():
        count = sum(s.elements for s in group)
        mean = sum(s.mean * s.elements for s in group) / count
        second = sum((s.std ** 2 + s.mean ** 2) * s.elements for s in group) / count
        zeros = sum(s.zero_fraction * s.elements for s in group) / count
        dead = [i for s in group for i in s.dead_channels]
        merged.append(ActivationStats(block, block, block, sum(s.channels for s in group), mean,
                                      max(second - mean * mean, 0.0) ** 0.5, zeros, dead, count))
    return merged
