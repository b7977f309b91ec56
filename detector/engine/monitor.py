"""What moves inside the model during training, per block (``backbone.conv1`` .. ``backbone.conv5``
for VGG16-BN, ``rpn_head``, ``roi_head``; see ``detector.modeling.blocks``):

* ``grad_weight_ratios``: ||grad|| / ||w|| of each block's parameters, logged at every log point.
  From random initialisation VGG16-BN's conv1 moves ~50x faster than conv5 by this measure, the
  sign that one SGD learning rate cannot suit every layer. The gradients are those the optimiser
  used: after unscaling and after clipping (which scales every block alike, so the ratios between
  blocks are unaffected).
* ``write_histograms``: TensorBoard histograms of each block's weights and gradients.

Both read the gradients left by the last step, so the trainer calls them between steps, and only
at log points (where it synchronises with the device anyway) or every ``histogram_period``
iterations: nothing here runs on the per-step path.
"""

from __future__ import annotations

import torch
from torch import nn

from detector.modeling.blocks import block_name

__all__ = ["block_parameters", "grad_weight_ratios", "ratio_key", "write_histograms"]


def ratio_key(block: str) -> str:
    """The metrics.jsonl / TensorBoard key of a block's ratio (an identifier, like every key
    there): ``backbone.conv1`` -> ``grad_ratio_backbone_conv1``."""
    return "grad_ratio_" + block.replace(".", "_")


def block_parameters(model: nn.Module, *, with_grad: bool = True) -> dict[str, list[nn.Parameter]]:
    """``{block: parameters}`` in model order; with ``with_grad`` only the trainable ones holding a
    gradient (frozen parts and parts the current phase does not train are left out, also when
    they keep a stale gradient from an earlier phase)."""
    blocks: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if with_grad and not _has_grad(p):
            continue
        blocks.setdefault(block_name(name), []).append(p)
    return blocks


def _has_grad(p: nn.Parameter) -> bool:
    return p.requires_grad and p.grad is not None


@torch.no_grad()
def grad_weight_ratios(model: nn.Module) -> dict[str, float]:
    """||grad|| / ||w|| per block (L2 norms over all of the block's parameters that have a
    gradient); one host synchronisation. Empty when no parameter has a gradient."""
    blocks = block_parameters(model)
    if not blocks:
        return {}
    norms = []
    for params in blocks.values():
        grads = torch.stack(torch._foreach_norm([p.grad.float() for p in params]))
        weights = torch.stack(torch._foreach_norm([p.detach().float() for p in params]))
        norms.append(torch.stack((grads.norm(), weights.norm())))
    stacked = torch.stack(norms)
    ratios = stacked[:, 0] / stacked[:, 1].clamp_min(torch.finfo(torch.float32).tiny)
    return dict(zip(blocks, ratios.tolist(), strict=True))


@torch.no_grad()
def write_histograms(writer, model: nn.Module, iteration: int) -> None:
    """``weights/<block>`` and ``grads/<block>`` histograms (every parameter of the block,
    flattened) into a TensorBoard ``SummaryWriter``; gradients only for blocks that have them."""
    for block, params in block_parameters(model, with_grad=False).items():
        weights = torch.cat([p.detach().float().flatten() for p in params]).cpu()
        writer.add_histogram(f"weights/{block}", weights, iteration)
        grads = [p.grad.float().flatten() for p in params if _has_grad(p)]
        if grads:
            writer.add_histogram(f"grads/{block}", torch.cat(grads).cpu(), iteration)
