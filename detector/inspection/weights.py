"""Weight statistics of a state dict, layer by layer: count, mean |w|, std, near-zero fractions;
BN gammas and the channels they nearly switch off (prunable).

A layer is a module prefix of the state dict: a BN layer has ``weight`` (gamma, 1-D) and
``running_mean`` (``BatchNorm2d`` and ``FrozenBatchNorm2d`` alike); a conv layer a 4-D ``weight``;
a linear layer a 2-D one. Statistics are over the ``weight`` tensor (biases are left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detector.modeling.blocks import block_name, layer_label

__all__ = ["LayerStats", "bn_gammas", "layer_weights", "prunable_channels", "weight_stats"]


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one layer's weight tensor.

    Attributes:
        name (str): module name in the state dict (``backbone.features.17``).
        label (str): readable name (``conv3_2``).
        block (str): ``backbone.conv3``, ``rpn_head``, ...
        kind (str): "conv", "bn" (its gamma) or "linear".
        count (int): number of weights.
        mean_abs (float): mean |w|.
        std (float): standard deviation of w.
        max_abs (float): max |w|.
        near_zero_abs (float): fraction with |w| < the absolute threshold.
        near_zero_rel (float): fraction with |w| < the relative threshold x max |w| of the layer.
    """

    name: str
    label: str
    block: str
    kind: str
    count: int
    mean_abs: float
    std: float
    max_abs: float
    near_zero_abs: float
    near_zero_rel: float


def _kind(state: dict[str, Tensor], prefix: str) -> str | None:
    weight = state[f"{prefix}.weight"]
    if weight.ndim == 1 and f"{prefix}.running_mean" in state:
        return "bn"
    return {4: "conv", 2: "linear"}.get(weight.ndim)


def layer_weights(state: dict[str, Tensor]) -> dict[str, tuple[str, Tensor]]:
    """``{module name: (kind, weight as float32 on the CPU)}`` of the conv, BN and linear layers
    of ``state``, in state-dict order (empty and complex weights left out)."""
    layers = {}
    for key, value in state.items():
        if not (isinstance(key, str) and key.endswith(".weight") and torch.is_tensor(value)
                and value.numel() and not value.is_complex()):
            continue
        prefix = key.removesuffix(".weight")
        kind = _kind(state, prefix)
        if kind is not None:
            layers[prefix] = (kind, value.detach().float().cpu())
    return layers


def weight_stats(state: dict[str, Tensor], *, abs_threshold: float = 1e-3,
                 rel_threshold: float = 1e-2) -> list[LayerStats]:
    """Per-layer statistics of the conv, BN (gamma) and linear weights of ``state``.

    Args:
        state (dict[str, Tensor]): a model's state dict.
        abs_threshold (float): |w| below this counts as near zero (``near_zero_abs``).
        rel_threshold (float): |w| below this fraction of the layer's max |w| counts as near zero
            (``near_zero_rel``).
    """
    stats = []
    for name, (kind, weight) in layer_weights(state).items():
        magnitude = weight.abs().flatten()
        top = magnitude.max()
        values = torch.stack((
            magnitude.mean(), weight.flatten().std(correction=0), top,
            (magnitude < abs_threshold).float().mean(),
            (magnitude < rel_threshold * top).float().mean(),
        )).tolist()
        stats.append(LayerStats(name, layer_label(name), block_name(name), kind, weight.numel(),
                                *values))
    return stats


def bn_gammas(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``{BN module name: gamma (Tensor[C], float32)}`` of every batch-norm layer of ``state``."""
    return {name: w for name, (kind, w) in layer_weights(state).items() if kind == "bn"}


def prunable_channels(state: dict[str, Tensor], *, threshold: float = 1e-2) -> dict[str, list[int]]:
    """Channels whose BN gamma has |gamma| < ``threshold``, per BN layer (layers with none are
    left out): the BN output there is nearly the constant beta, so the channel (and the conv
    filter feeding it) can be pruned with its beta folded into the next layer's bias."""
    out = {}
    for name, gamma in bn_gammas(state).items():
        small = (gamma.abs() < threshold).nonzero().flatten().tolist()
        if small:
            out[name] = small
    return out
