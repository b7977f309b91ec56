"""RoI poolers: RoIAlign as one sparse-times-dense matrix product for the CPU, and RoIPool.

Both take ``spatial_scale=None`` by default: ``build_model`` then sets it to 1 / the backbone's
stride, so that configs never spell it out.


torchvision's ``roi_align`` computes exactly what Mask R-CNN defines, but its CPU backward walks
every sample point and channel one at a time: on a 2-core CPU it was a fifth of a whole training
step (512 RoIs, 320x480). RoIAlign is linear in the features, so the whole operation is a fixed
matrix ``A`` applied to them: each output cell is the mean of ``s x s`` bilinear samples, each
sample a weighted sum of 4 feature-map cells. Building ``A`` (``M`` rows of ``4 s^2`` entries) is
cheap and batched; ``A @ features`` and its backward ``A^T @ grad`` are multithreaded sparse
products that run on contiguous channel rows. Same numbers as torchvision (to float rounding,
tested), with no custom kernel.

Shorthand: B images, C channels, Hf x Wf feature map, M RoIs, P x Q output cells (7 x 7), s
sampling points per cell and axis.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool

from detector.ops.packing import is_exporting

__all__ = ["RoIAlign", "RoIPool", "roi_align_matrix", "sparse_roi_align"]

BACKENDS = ("auto", "sparse", "torchvision")


def _axis_taps(
    start: Tensor, length: Tensor, cells: int, sampling_ratio: int, size: int,
) -> tuple[Tensor, Tensor]:
    """The two feature cells each sample along one axis reads, and their bilinear weights.

    Args:
        start, length (Tensor[M]): RoI start and extent on this axis, feature-map units.
        cells (int): P, output cells on this axis; ``sampling_ratio`` s samples per cell.
        size (int): feature-map extent on this axis.

    Returns:
        index (LongTensor[M, P, s, 2]): low and high cell of each sample, always in [0, size).
        weight (Tensor[M, P, s, 2]): their weights; 0 for samples outside [-1, size]
            (torchvision's rule: such samples contribute nothing, others clamp to the border);
            NaN for a non-finite coordinate (a diverging model's RoI), so that the cell and the
            loss show it instead of reading memory at a garbage index.
    """
    steps = (torch.arange(cells * sampling_ratio, dtype=start.dtype, device=start.device)
             + 0.5) / sampling_ratio
    coord = start[:, None] + steps[None, :] * (length / cells)[:, None]
    finite = torch.isfinite(coord)
    coord = torch.where(finite, coord, torch.full_like(coord, -2.0))
    inside = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0.0, max=size - 1)  # clamped as floats: huge values convert safely
    low = coord.floor().long()
    high = (low + 1).clamp(max=size - 1)
    frac = coord - low
    weight = torch.stack((1.0 - frac, frac), dim=-1) * inside[..., None]
    weight = torch.where(finite[..., None], weight, torch.full_like(weight, float("nan")))
    shape = (start.shape[0], cells, sampling_ratio, 2)
    return torch.stack((low, high), dim=-1).view(shape), weight.view(shape)


def roi_align_matrix(
    rois: Tensor, *, feature_shape: tuple[int, int, int], output_size: tuple[int, int],
    spatial_scale: float, sampling_ratio: int, aligned: bool,
) -> Tensor:
    """The sparse matrix ``A`` with ``roi_align(features, rois) = A @ features`` (channels last).

    Args:
        rois (Tensor[M, 5]): rows ``(image index, x1, y1, x2, y2)`` in image pixels.
        feature_shape (tuple): (B, Hf, Wf).
        output_size (tuple): (P, Q).
        spatial_scale, sampling_ratio, aligned: as ``torchvision.ops.roi_align`` (ratio > 0).

    Returns:
        Tensor[M * P * Q, B * Hf * Wf]: sparse CSR, ``4 s^2`` entries per row (zeros included,
        repeated columns add up); row ``(m, p, q)``, column ``(b, y, x)``.
    """
    batch, height, width = feature_shape
    cells_y, cells_x = output_size
    rois = rois.float()
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(dim=1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # torchvision's legacy rule: RoIs at least one cell wide
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    iy, wy = _axis_taps(y1, roi_h, cells_y, sampling_ratio, height)  # [M, P, s, 2]
    ix, wx = _axis_taps(x1, roi_w, cells_x, sampling_ratio, width)  # [M, Q, s, 2]
    image = rois[:, 0].long()
    # entries of row (m, p, q): (sample y, tap y, sample x, tap x)
    rows_y = (image[:, None, None, None] * height + iy)[:, :, None, :, :, None, None]
    column = rows_y * width + ix[:, None, :, None, None, :, :]
    value = wy[:, :, None, :, :, None, None] * wx[:, None, :, None, None, :, :]
    num_rows = rois.shape[0] * cells_y * cells_x
    per_row = 4 * sampling_ratio**2
    crow = torch.arange(0, num_rows * per_row + 1, per_row, device=rois.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is all we use
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow, column.reshape(-1), (value / sampling_ratio**2).reshape(-1),
            size=(num_rows, batch * height * width), check_invariants=False,
        )


def sparse_roi_align(
    features: Tensor, rois: Tensor, *, output_size: tuple[int, int], spatial_scale: float,
    sampling_ratio: int, aligned: bool = False,
) -> Tensor:
    """``torchvision.ops.roi_align`` as ``A @ features`` (see the module docstring).

    Args:
        features (Tensor[B, C, Hf, Wf]): computed in float32 whatever autocast says.
        rois (Tensor[M, 5]): rows ``(image index, x1, y1, x2, y2)`` in image pixels.
        output_size, spatial_scale, sampling_ratio, aligned: as torchvision's (ratio > 0).

    Returns:
        Tensor[M, C, P, Q] (float32), differentiable in ``features``.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"sparse_roi_align needs a fixed sampling_ratio > 0, got {sampling_ratio}")
    batch, channels, height, width = features.shape
    matrix = roi_align_matrix(
        rois, feature_shape=(batch, height, width), output_size=output_size,
        spatial_scale=spatial_scale, sampling_ratio=sampling_ratio, aligned=aligned,
    )
    cells = features.float().permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    with torch.autocast(features.device.type, enabled=False):
        pooled = matrix @ cells  # [M * P * Q, C]
    return pooled.view(rois.shape[0], *output_size, channels).permute(0, 3, 1, 2).contiguous()


class RoIAlign(nn.Module):
    """RoIAlign (Mask R-CNN) with the same arguments and results as ``torchvision.ops.RoIAlign``,
    computed by `sparse_roi_align` where that is faster.

    Args:
        output_size (int | tuple): P or (P, Q).
        spatial_scale (float | None): 1 / backbone stride; None: set by ``build_model``.
        sampling_ratio (int): samples per cell and axis (2 in most implementations); <= 0
            (torchvision's adaptive count) always runs torchvision's kernel.
        aligned (bool): the half-pixel correction (Detectron2's ``ROIAlignV2``).
        backend (str): ``"auto"`` (default): the sparse product on the CPU, where it runs the
            backward ~4x faster, and torchvision's kernel on other devices (unmeasured there),
            while exporting, tracing or compiling (ONNX has a RoiAlign operator, not sparse
            products); ``"sparse"`` or ``"torchvision"`` force one.

    Shapes: ``forward(features[B, C, Hf, Wf], rois[M, 5]) -> [M, C, P, Q]``.
    """

    def __init__(
        self, *, output_size: int | tuple[int, int], spatial_scale: float | None = None,
        sampling_ratio: int = 2, aligned: bool = False, backend: str = "auto",
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"RoIAlign backend must be one of {BACKENDS}, got {backend!r}")
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(int(size) for size in output_size)
        self.spatial_scale = None if spatial_scale is None else float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.backend = backend

    def uses_sparse(self, device: torch.device) -> bool:
        """Whether ``forward`` on ``device`` takes the sparse product."""
        if self.backend == "torchvision" or self.sampling_ratio <= 0 or is_exporting():
            return False
        return self.backend == "sparse" or device.type == "cpu"

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        _check_scale(self)
        if self.uses_sparse(features.device):
            return sparse_roi_align(
                features, rois, output_size=self.output_size, spatial_scale=self.spatial_scale,
                sampling_ratio=self.sampling_ratio, aligned=self.aligned,
            )
        return roi_align(features, rois, self.output_size, self.spatial_scale,
                         self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, "
                f"backend={self.backend}")


class RoIPool(nn.Module):
    """RoI max pooling (Fast R-CNN, the paper's pooler): ``torchvision.ops.roi_pool`` with
    keyword arguments and a ``spatial_scale`` that ``build_model`` can fill in.

    Args:
        output_size (int | tuple): P or (P, Q).
        spatial_scale (float | None): 1 / backbone stride; None: set by ``build_model``.

    Shapes: ``forward(features[B, C, Hf, Wf], rois[M, 5]) -> [M, C, P, Q]``.
    """

    def __init__(self, *, output_size: int | tuple[int, int],
                 spatial_scale: float | None = None) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(int(size) for size in output_size)
        self.spatial_scale = None if spatial_scale is None else float(spatial_scale)

    def forward(self, features: Tensor, rois: Tensor) -> Tensor:
        _check_scale(self)
        return roi_pool(features, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


def _check_scale(pooler: nn.Module) -> None:
    if pooler.spatial_scale is None:
        raise RuntimeError(f"{type(pooler).__name__} has no spatial_scale: build the model with "
                           f"build_model (it sets 1 / the backbone's stride) or pass one")
