"""ROI box heads: pooled region features -> one feature vector per region.

Shorthand: R regions (all images together), C feature channels, S pooled resolution (S x S), F the
head's output width (``out_features``).

A box head only turns ``Tensor[R, C, S, S]`` into ``Tensor[R, F]``; the class/box predictors sit on
top of it (``roi_head.py``). Every box head exposes ``out_features: int``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import skip_init

from detector.modeling.weights import vgg16_classifier_state

__all__ = ["MLPBoxHead", "VGGBoxHead"]


class MLPBoxHead(nn.Module):
    """Two fully connected layers with ReLU: flatten -> fc6 -> ReLU -> fc7 -> ReLU.

    The light head (1024 units by default); small widths such as 128 suit CPU training.

    Args:
        in_channels (int): C, channels of the pooled features (the backbone's ``out_channels``).
        resolution (int): S, side of the pooled features.
        hidden_dim (int): width of both layers; also ``out_features``.
    """

    def __init__(self, *, in_channels: int, resolution: int = 7, hidden_dim: int = 1024) -> None:
        super().__init__()
        self.out_features = hidden_dim
        self.fc6 = nn.Linear(in_channels * resolution * resolution, hidden_dim)
        self.fc7 = nn.Linear(hidden_dim, hidden_dim)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, features: Tensor) -> Tensor:
        """Compute one feature vector per region.

        Args:
            features (Tensor[R, C, S, S]): pooled ROI features.

        Returns:
            Tensor[R, hidden_dim]: region features (R may be 0).
        """
        x = self.relu(self.fc6(features.flatten(1)))
        return self.relu(self.fc7(x))


class VGGBoxHead(nn.Module):
    """VGG16's fc6/fc7 (4096 units each) on 512 x 7 x 7 pooled features, as in the paper.

    Shaped like torchvision's VGG classifier minus its last layer, so ImageNet weights can
    initialise it: flatten -> fc6 -> ReLU -> Dropout -> fc7 -> ReLU -> Dropout.

    Args:
        weights (str | None): None (random init: normal(0, 0.01) weights, zero biases, as
            torchvision initialises VGG), a ``VGG16_BN_Weights`` name such as ``"IMAGENET1K_V1"``,
            or a path to a local torchvision-format vgg16_bn state dict -- resolved exactly like
            :class:`~detector.modeling.backbone.VGG16BNBackbone`'s ``weights``.
        dropout (float): dropout probability after each layer (VGG used 0.5; 0 disables it).
    """

    in_channels = 512
    resolution = 7

    def __init__(self, *, weights: str | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        # Resolve the weights first: a missing file or no network fails before any allocation.
        state = None if weights is None else vgg16_classifier_state(weights)
        self.out_features = 4096
        # skip_init: no default init of the 100M fc6 weights that are overwritten right below.
        self.fc6 = skip_init(nn.Linear, self.in_channels * self.resolution**2, self.out_features)
        self.fc7 = skip_init(nn.Linear, self.out_features, self.out_features)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        if state is None:
            for fc in (self.fc6, self.fc7):
                nn.init.normal_(fc.weight, mean=0.0, std=0.01)
                nn.init.zeros_(fc.bias)
        else:
            self.load_state_dict(state)

    def forward(self, features: Tensor) -> Tensor:
        """Compute one feature vector per region.

        Args:
            features (Tensor[R, 512, 7, 7]): pooled ROI features.

        Returns:
            Tensor[R, 4096]: region features (R may be 0).
        """
        x = self.dropout(self.relu(self.fc6(features.flatten(1))))
        return self.dropout(self.relu(self.fc7(x)))
