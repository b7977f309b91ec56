"""Anchor generation for a single stride-``s`` feature map (Faster R-CNN's 9 anchors per cell).

Shorthand: Hf, Wf feature-map height/width, A anchors per cell (len(sizes) * len(ratios)).
Anchors are laid out location-major, ``index = (y * Wf + x) * A + a``, which is the order an RPN head's
``(B, A, Hf, Wf)`` output has after ``permute(0, 2, 3, 1).flatten(1)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator"]


class AnchorGenerator:
    """Grid anchors for one feature map.

    Args:
        sizes (Sequence[float]): anchor side lengths in pixels for ratio 1 (sqrt of the area).
        ratios (Sequence[float]): height / width aspect ratios.
        stride (int): feature-map stride in pixels.
        offset (float): where in each stride cell the anchor centre sits, 0.0 = top-left corner
            (torchvision's and detectron2's default), 0.5 = cell centre.
        cache_size (int): how many (feature size, device, dtype) grids to keep; oldest dropped first.
    """

    def __init__(
        self,
        *,
        sizes: Sequence[float] = (128, 256, 512),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        stride: int = 16,
        offset: float = 0.0,
        cache_size: int = 16,
    ) -> None:
        if not sizes or not ratios or min(sizes) <= 0 or min(ratios) <= 0:
            raise ValueError(f"anchor sizes and ratios must be positive, got {sizes} and {ratios}")
        self.sizes = tuple(float(s) for s in sizes)
        self.ratios = tuple(float(r) for r in ratios)
        self.stride = int(stride)
        self.offset = float(offset)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes) * len(self.ratios)

    def cell_anchors(self, *, device=None, dtype=torch.float32) -> Tensor:
        """(Tensor[A, 4]): xyxy anchors centred at (0, 0), ordered ratio-major then size."""
        ratios = torch.tensor(self.ratios, dtype=torch.float64)
        sizes = torch.tensor(self.sizes, dtype=torch.float64)
        h_ratio = ratios.sqrt()
        ws = (sizes[None, :] / h_ratio[:, None]).flatten()
        hs = (sizes[None, :] * h_ratio[:, None]).flatten()
        cell = torch.stack((-ws, -hs, ws, hs), dim=1) / 2
        return cell.to(device=device, dtype=dtype)

    def grid_anchors(self, feature_size: tuple[int, int], *, device=None, dtype=torch.float32) -> Tensor:
        """Anchors for every cell of a feature map.

        Args:
            feature_size (tuple[int, int]): (Hf, Wf).

        Returns:
            Tensor[Hf * Wf * A, 4]: xyxy anchors in input-image pixels, location-major.
        """
        hf, wf = int(feature_size[0]), int(feature_size[1])
        key = (hf, wf, str(torch.device(device) if device is not None else "cpu"), dtype)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        shift_x = (torch.arange(wf, device=device, dtype=torch.float32) + self.offset) * self.stride
        shift_y = (torch.arange(hf, device=device, dtype=torch.float32) + self.offset) * self.stride
        sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
        anchors = (shifts + self.cell_anchors(device=device)[None]).reshape(-1, 4).to(dtype)
        self._cache[key] = anchors
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return anchors

    def __call__(self, feature: Tensor) -> Tensor:
        """feature (Tensor[B, C, Hf, Wf]) -> (Tensor[Hf * Wf * A, 4]): anchors shared by the batch."""
        return self.grid_anchors(tuple(feature.shape[-2:]), device=feature.device)

    def __repr__(self) -> str:
        return (
            f"AnchorGenerator(sizes={self.sizes}, ratios={self.ratios}, stride={self.stride}, "
            f"offset={self.offset})"
        )

