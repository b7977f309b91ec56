"""Names of the blocks and layers of a detector, from parameter / module names.

VGG16-BN's ``backbone.features.<i>`` (indexed like torchvision's ``vgg16_bn().features``) maps to
the paper's names: block ``backbone.conv1`` .. ``backbone.conv5`` and layers ``conv3_2`` (the
convolution), ``bn3_2`` (its batch norm), ``relu3_2``. Other backbones group by their top-level
child (``backbone.layer3``, ``backbone.body``); the heads are ``rpn_head`` and ``roi_head``.
"""

from __future__ import annotations

import re

from detector.modeling.backbone import VGG16_BLOCK_ENDS

__all__ = ["block_name", "layer_label"]

_VGG = re.compile(r"^backbone\.features\.(\d+)(?:\.|$)")
_UNIT_KINDS = ("conv", "bn", "relu")  # each VGG unit: conv 3x3, BN, ReLU (then a pool ends a block)


def _vgg_position(name: str) -> tuple[int, int, int] | None:
    """(block 1-5, unit within the block 1-3, slot 0 conv / 1 bn / 2 relu / 3 pool) of a VGG
    ``backbone.features.<i>`` name, or None for any other name."""
    match = _VGG.match(name)
    if match is None:
        return None
    index = int(match.group(1))
    start = 0
    for block, end in enumerate(VGG16_BLOCK_ENDS, start=1):
        if index < end:
            unit, slot = divmod(index - start, 3)
            if start + 3 * unit + 3 > end:  # the max-pool closing the block
                return block, unit, 3
            return block, unit + 1, slot
        start = end
    return None


def block_name(name: str) -> str:
    """The block a parameter or module belongs to.

    >>> block_name("backbone.features.24.weight"), block_name("rpn_head.conv.bias")
    ('backbone.conv4', 'rpn_head')
    """
    position = _vgg_position(name)
    if position is not None:
        return f"backbone.conv{position[0]}"
    parts = name.split(".")
    if parts[0] == "backbone" and len(parts) > 2:
        return ".".join(parts[:2])
    return parts[0]


def layer_label(module_name: str) -> str:
    """A readable layer name: ``conv3_2`` / ``bn3_2`` / ``relu3_2`` / ``pool3`` for VGG's
    ``backbone.features.<i>``, else the module name itself.

    >>> layer_label("backbone.features.17"), layer_label("roi_head.box_head.fc6")
    ('conv3_2', 'roi_head.box_head.fc6')
    """
    position = _vgg_position(module_name)
    if position is None:
        return module_name
    block, unit, slot = position
    return f"pool{block}" if slot == 3 else f"{_UNIT_KINDS[slot]}{block}_{unit}"
