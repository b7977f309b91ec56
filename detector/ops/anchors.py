"""Anchor generation for a single stride-``s`` feature map (Faster R-CNN's 9 anchors per cell).

Shorthand: Hf, Wf feature-map height/width, A anchors per cell (len(sizes) * len(ratios)).
Anchors are laid out location-major, ``index = (y * Wf + x) * A + a``, which is the order an RPN
head's ``(B, A, Hf, Wf)`` output has after ``permute(0, 2, 3, 1).flatten(1)``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from detector.ops.boxes import grid_box_iou

__all__ = ["AnchorGenerator"]


class AnchorGenerator:
    """Grid anchors for one feature map.

    Args:
        sizes (Sequence[float]): anchor side lengths in pixels for ratio 1 (sqrt of the area).
        ratios (Sequence[float]): height / width aspect ratios.
        stride (int): feature-map stride in pixels.
        offset (float): where in each stride cell the anchor centre sits, 0.0 = top-left corner
            (torchvision's and detectron2's default), 0.5 = cell centre.
        cache_size (int): how many grids (per feature size, device and dtype) to keep; the least
            recently used is dropped first.
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
        self._cache: OrderedDict[tuple, object] = OrderedDict()

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

    def _cached(self, key: tuple, build: Callable[[], object]):
        """A least-recently-used cache of at most ``cache_size`` grids.

        Grids are pure functions of the key. Building one on CUDA copies the cell anchors from the
        host (a synchronisation), so only the first call per feature size and device syncs.
        """
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = build()
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return value

    def grid_intervals(
        self, feature_size: tuple[int, int], *, device=None
    ) -> tuple[Tensor, Tensor]:
        """The anchor grid as per-column x intervals and per-row y intervals.

        Anchor ``(y, x, a)`` spans ``x_intervals[x, a]`` horizontally and ``y_intervals[y, a]``
        vertically; ``grid_anchors`` lays these out as boxes and ``boxes.grid_box_iou`` matches
        against them without expanding the grid.

        Args:
            feature_size (tuple[int, int]): (Hf, Wf).

        Returns:
            x_intervals (Tensor[Wf, A, 2]) and y_intervals (Tensor[Hf, A, 2]): float32 pixels.
        """
        hf, wf = int(feature_size[0]), int(feature_size[1])
        dev = _resolve(device)
        return self._cached(("intervals", hf, wf, dev), lambda: self._intervals(hf, wf, dev))

    def _intervals(self, hf: int, wf: int, device: torch.device) -> tuple[Tensor, Tensor]:
        cell = self.cell_anchors(device=device)  # (A, 4), float32
        shift_x = (torch.arange(wf, device=device, dtype=torch.float32) + self.offset) * self.stride
        shift_y = (torch.arange(hf, device=device, dtype=torch.float32) + self.offset) * self.stride
        x_intervals = shift_x[:, None, None] + cell[None, :, 0::2]  # (Wf, A, 2)
        y_intervals = shift_y[:, None, None] + cell[None, :, 1::2]  # (Hf, A, 2)
        return x_intervals, y_intervals

    def grid_anchors(
        self, feature_size: tuple[int, int], *, device=None, dtype=torch.float32
    ) -> Tensor:
        """Anchors for every cell of a feature map.

        The returned tensor is cached and shared between calls: do not modify it in place.

        Args:
            feature_size (tuple[int, int]): (Hf, Wf).

        Returns:
            Tensor[Hf * Wf * A, 4]: xyxy anchors in input-image pixels, location-major.
        """
        hf, wf = int(feature_size[0]), int(feature_size[1])
        dev = _resolve(device)

        def build() -> Tensor:
            xs, ys = self.grid_intervals((hf, wf), device=dev)
            xs = xs.unsqueeze(0).expand(hf, -1, -1, -1)  # (Hf, Wf, A, 2)
            ys = ys.unsqueeze(1).expand(-1, wf, -1, -1)
            boxes = torch.stack((xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]), dim=-1)
            return boxes.reshape(-1, 4).to(dtype)

        return self._cached(("anchors", hf, wf, dev, dtype), build)

    def iou(
        self, feature_size: tuple[int, int], gt_boxes: Tensor, gt_valid: Tensor | None = None
    ) -> Tensor:
        """IoU of this feature map's anchors with a batch of ground truth (the RPN's fast path).

        Bit-identical to ``batched_box_iou(self.grid_anchors(feature_size), gt_boxes, gt_valid)``,
        several times faster because the grid is never expanded into pairwise coordinates.

        Args:
            feature_size (tuple[int, int]): (Hf, Wf).
            gt_boxes (Tensor[B, G, 4]): xyxy ground truth, padded.
            gt_valid (BoolTensor[B, G], optional): False for padding rows.

        Returns:
            Tensor[B, Hf * Wf * A, G] float32: IoU, -1 in padded columns.
        """
        xs, ys = self.grid_intervals(feature_size, device=gt_boxes.device)
        return grid_box_iou(xs, ys, gt_boxes, gt_valid)

    def __call__(self, feature: Tensor) -> Tensor:
        """feature (Tensor[B, C, Hf, Wf]) -> (Tensor[Hf * Wf * A, 4]): anchors for every image."""
        return self.grid_anchors(tuple(feature.shape[-2:]), device=feature.device)

    def __repr__(self) -> str:
        return (
            f"AnchorGenerator(sizes={self.sizes}, ratios={self.ratios}, stride={self.stride}, "
            f"offset={self.offset})"
        )


def _resolve(device) -> torch.device:
    """A cache key for ``device``: "cuda" and "cuda:0" (the current device) are the same grid."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev
