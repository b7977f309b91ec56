"""The data inspection's pictures (``tools/inspect_data.py``): a contact sheet of training samples
as the model sees them (after the training transforms, ground truth drawn with class names) and
the box shapes per class against the anchors (matplotlib, Agg; class names drawn as written, no
mathtext).

Shorthand: N boxes (model-input pixels, xyxy), K classes, labels 1..K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detector.data import IMAGENET_MEAN, IMAGENET_STD
from detector.inspection.data_report import TINY_SIDE, AnchorSet
from detector.ops import anchor_fit
from detector.untrusted import plain_text, shown
from detector.visualize import draw_detections, save_image

__all__ = ["anchor_shapes", "contact_sheet", "denormalize", "plot_boxes", "sample_indices",
           "write_contact_sheet"]

BACKGROUND = 40  # grey between and around the tiles
MAX_CLASSES_SHOWN = 9  # the most frequent classes get their own colour; the rest are "other"


def denormalize(image: Tensor) -> np.ndarray:
    """image (FloatTensor[3, h, w]): normalised as by the transforms -> ndarray[h, w, 3] uint8
    RGB."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (image.detach().float().cpu() * std + mean).clamp(0.0, 1.0).mul(255.0).round()
    return rgb.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def sample_indices(num_images: int, count: int, *, seed: int) -> list[int]:
    """``min(count, num_images)`` distinct indices, drawn with ``seed`` (the same every run)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(num_images, generator=generator)[:count].tolist()


def contact_sheet(images: Sequence[np.ndarray], *, gap: int = 4) -> np.ndarray:
    """Tiles in a grid of ``ceil(sqrt(n))`` columns, each in a cell as large as the largest tile
    (top-left aligned, ``gap`` px of grey around every cell). images: ndarray[h, w, 3] uint8.

    Returns:
        ndarray[H, W, 3] uint8: ``H = rows * (max h + gap) + gap``, ``W`` likewise.
    """
    if not images:
        raise ValueError("a contact sheet needs at least one image")
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_h = max(image.shape[0] for image in images)
    cell_w = max(image.shape[1] for image in images)
    sheet = np.full((rows * (cell_h + gap) + gap, columns * (cell_w + gap) + gap, 3), BACKGROUND,
                    dtype=np.uint8)
    for k, image in enumerate(images):
        top = gap + (k // columns) * (cell_h + gap)
        left = gap + (k % columns) * (cell_w + gap)
        sheet[top:top + image.shape[0], left:left + image.shape[1]] = image
    return sheet


def write_contact_sheet(dataset, path: str | Path, *, count: int, seed: int) -> Path:
    """``count`` samples of ``dataset`` (its own ``__getitem__``: the transforms it was built
    with, seeded with ``seed``), de-normalised, boxes and class names drawn, as one PNG."""
    if hasattr(getattr(dataset, "transforms", None), "set_seed"):
        dataset.transforms.set_seed(seed)  # the same flips every run
    names = [shown(name, limit=40) for name in dataset.class_names]
    tiles = []
    for index in sample_indices(len(dataset), count, seed=seed):
        sample = dataset[index]
        tiles.append(draw_detections(denormalize(sample["image"]), sample["boxes"],
                                     sample["labels"], class_names=names))
    return save_image(path, contact_sheet(tiles))


def anchor_shapes(anchors: AnchorSet) -> Tensor:
    """Tensor[A, 2]: (width, height) of each anchor shape (``AnchorGenerator``'s cell anchors)."""
    return anchor_fit.anchor_shapes(anchors.sizes, anchors.ratios)


def _groups(labels: Tensor, class_names: Sequence[str]) -> list[tuple[str, Tensor]]:
    """(legend name, BoolTensor[N]) for the most frequent classes, then the rest together."""
    counts = torch.bincount(labels.long() - 1, minlength=len(class_names))[:len(class_names)]
    order = [k for k in torch.argsort(counts, descending=True, stable=True).tolist()
             if counts[k] > 0]
    groups = [(shown(class_names[k], limit=30), labels == k + 1)
              for k in order[:MAX_CLASSES_SHOWN]]
    rest = order[MAX_CLASSES_SHOWN:]
    if rest:
        groups.append((f"other {len(rest)} classes", torch.isin(labels, torch.tensor(rest) + 1)))
    return groups


def _anchor_sets(anchors: AnchorSet, fitted: AnchorSet | None):
    """(anchor set, legend label, colour, marker, line style) of the anchors drawn."""
    out = [(anchors, f"anchors ({anchors.source})", "black", "X", "--")]
    if fitted is not None:
        out.append((fitted, f"anchors ({fitted.source})", "red", "P", ":"))
    return out


def _plain_log_ticks(axis) -> None:
    """Ticks of a log axis at 1, 2, 5 x 10^k labelled as plain numbers (with mathtext off, the
    default labels would show their TeX source)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


@plain_text
def plot_boxes(path: str | Path, *, boxes: Tensor, labels: Tensor, class_names: Sequence[str],
               anchors: AnchorSet, fitted: AnchorSet | None = None, title: str = "") -> Path:
    """boxes.png: box width vs height per class (log axes, model-input px) with the anchor shapes
    as markers, and the aspect-ratio (h/w) histogram per class with the anchor ratios as
    vertical lines; ``fitted``: a second anchor set drawn beside the first.

    Args:
        boxes (Tensor[N, 4]): xyxy, model-input pixels.
        labels (LongTensor[N]): 1..K.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    wh = (boxes[:, 2:] - boxes[:, :2]).double().clamp(min=1e-3)
    aspect = wh[:, 1] / wh[:, 0]
    fig = Figure(figsize=(13, 5.5))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.88, wspace=0.22)
    fig.suptitle(title)
    scatter, hist = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    groups = _groups(labels, class_names)
    small = len(boxes) > 2000
    low = max(1e-2, min(aspect.min().item() if len(boxes) else 1.0, 0.25) / 1.5)
    high = max(aspect.max().item() if len(boxes) else 1.0, 4.0) * 1.5
    bins = np.geomspace(low, high, 41)
    for c, (name, members) in enumerate(groups):
        scatter.scatter(wh[members, 0].numpy(), wh[members, 1].numpy(), s=4 if small else 10,
                        alpha=0.4 if small else 0.7, color=f"C{c}", label=name, linewidths=0)
        hist.hist(aspect[members].numpy(), bins=bins, histtype="step", color=f"C{c}",
                  label=name, linewidth=1.4)
    for anchor_set, label, color, marker, style in _anchor_sets(anchors, fitted):
        shapes = anchor_shapes(anchor_set)
        scatter.scatter(shapes[:, 0].numpy(), shapes[:, 1].numpy(), s=90, marker=marker,
                        color=color, edgecolors="white", linewidths=0.8, label=label, zorder=5)
        for k, ratio in enumerate(anchor_set.ratios):
            hist.axvline(ratio, color=color, linestyle=style, linewidth=1.2,
                         label=f"{label}: ratios" if k == 0 else None)
    for axis_line in (scatter.axvline, scatter.axhline):
        axis_line(TINY_SIDE, color="grey", linestyle=":", linewidth=1)
    scatter.set(xscale="log", yscale="log", xlabel="box width (model-input px)",
                ylabel="box height (model-input px)",
                title=f"box sizes per class ({len(boxes)} boxes; dotted: {TINY_SIDE:g} px)")
    hist.set(xscale="log", xlabel="aspect ratio h / w", ylabel="boxes",
             title="aspect ratio per class")
    for axis in (scatter.xaxis, scatter.yaxis, hist.xaxis):
        _plain_log_ticks(axis)
    scatter.legend(fontsize=7, loc="upper left", markerscale=1.0)
    hist.legend(fontsize=7, loc="upper right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=90)
    return path
