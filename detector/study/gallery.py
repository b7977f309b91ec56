"""The worst images of a run: those with the most errors at the operating point (false
positives of every type plus missed boxes), drawn with ``detector.visualize`` - each detection
coloured by its verdict, missed boxes dashed - beside a legend of the colours. Only image files
under the run's dataset root (links resolved) are read; others are left out and counted."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from detector.data.image_io import read_image_rgb
from detector.errors import UserError
from detector.study.analysis import RunAnalysis
from detector.study.coco_checks import inside
from detector.study.errors import FP_TYPES
from detector.study.figure_style import fit_title
from detector.untrusted import plain_text, shown, writable_dir, writable_file
from detector.visualize import draw_detections

__all__ = ["VERDICT_COLORS", "panel_figure", "worst_images", "write_gallery"]

#: RGB per verdict: true positives, each false-positive type, misses (dashed boxes)
VERDICT_COLORS: dict[str, tuple[int, int, int]] = {
    "true positive": (40, 200, 40), "cls": (255, 140, 0), "loc": (255, 230, 0),
    "both": (170, 90, 255), "dupe": (0, 200, 255), "bkg": (255, 40, 40),
    "miss": (255, 0, 200),
}
_NAMES = ("true positive", *FP_TYPES)  # by verdict code 0..5
_MIN_SIDE = 384  # small images are enlarged (nearest) so captions stay readable
_MAX_SIDE = 4096  # ... but never beyond this


def worst_images(analysis: RunAnalysis, count: int) -> list[tuple[int, int]]:
    """(image id, errors) of the ``count`` images with the most errors (ties: lower id), only
    images with at least one."""
    kinds, det, gt = analysis.kinds, analysis.operating, analysis.gt
    wrong = det.image_ids[(kinds.kind >= 1) & (kinds.kind <= len(FP_TYPES))]
    ids, errors = np.unique(np.concatenate([wrong, gt.image_ids[kinds.missed]]),
                            return_counts=True)
    order = np.lexsort((ids, -errors))[:count]
    return [(int(ids[i]), int(errors[i])) for i in order]


def _draw(analysis: RunAnalysis, image_id: int, image: np.ndarray) -> np.ndarray:
    det, gt, kinds = analysis.operating, analysis.gt, analysis.kinds
    scale = max(1, min(int(np.ceil(_MIN_SIDE / min(image.shape[:2]))),
                       _MAX_SIDE // max(image.shape[:2])))
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    rows = np.flatnonzero((det.image_ids == image_id) & (kinds.kind >= 0)
                          & (kinds.kind <= len(FP_TYPES)))
    labels = np.searchsorted(analysis.category_ids, det.labels[rows]) + 1  # 1..K
    missed = gt.boxes[(gt.image_ids == image_id) & kinds.missed]
    height, width = big.shape[:2]
    limits = np.asarray([width, height, width, height], dtype=np.float64)

    def on_image(boxes: np.ndarray) -> np.ndarray:  # a box of 1e308 px stops cv2's drawing
        return np.clip(boxes, 0, limits / scale) * scale

    return draw_detections(big, on_image(det.boxes[rows]), labels, det.scores[rows],
                           class_names=analysis.class_names, gt_boxes=on_image(missed),
                           colors=[VERDICT_COLORS[_NAMES[k]] for k in kinds.kind[rows]],
                           gt_color=VERDICT_COLORS["miss"], thickness=2)


@plain_text
def panel_figure(drawn: np.ndarray, title: str) -> Figure:
    """One drawn image (``drawn`` ndarray[H, W, 3] uint8) beside a legend of the verdict
    colours, under ``title`` wrapped to the image's width (measured, so none of it is cut)."""
    height, width = drawn.shape[:2]
    fig = Figure(figsize=(width / 90 + 2.2, height / 90 + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(drawn)
    ax.set_axis_off()
    handles = [Patch(facecolor=np.asarray(c) / 255, edgecolor="0.2",
                     linestyle="--" if name == "miss" else "-",
                     label="miss (dashed)" if name == "miss" else name)
               for name, c in VERDICT_COLORS.items()]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="verdict",
               title_fontsize=8)
    fit_title(fig, ax, title, fontsize=9)
    return fig


@plain_text
def _save_panel(drawn: np.ndarray, title: str, path: Path) -> Path:
    fig = panel_figure(drawn, title)
    writable_dir(path.parent)
    fig.savefig(writable_file(path), dpi=90)
    return path


def _image(analysis: RunAnalysis, file_name: str | None, left_out: Counter) -> np.ndarray | None:
    """The image's pixels, or None with the reason counted in ``left_out``."""
    if file_name is None:
        left_out["not in the annotation file"] += 1
        return None
    path = analysis.image_dir / file_name
    if not inside(path, analysis.dataset_root):
        left_out["outside the dataset root"] += 1
        return None
    if not path.is_file():
        left_out["not found"] += 1
        return None
    try:
        return read_image_rgb(path)
    except (UserError, OSError, ValueError):
        left_out["unreadable"] += 1
        return None


def write_gallery(analyses: Mapping[str, RunAnalysis], out: Path, *, count: int = 6,
                  left_out: Counter | None = None) -> Path:
    """``out/<run>/<rank>_image<id>.png`` for each analysed run's worst images (those whose
    file is found under the dataset root); returns ``out``. ``left_out`` counts the images not
    drawn, by reason."""
    left_out = Counter() if left_out is None else left_out
    writable_dir(out)
    for name, analysis in analyses.items():
        if not analysis.analysed:
            continue
        files = {img["id"]: img["file_name"] for img in analysis.coco["images"]}
        folder = out / (re.sub(r"[^A-Za-z0-9._=,-]+", "_", name).strip("._") or "run")
        for rank, (image_id, errors) in enumerate(worst_images(analysis, count), 1):
            image = _image(analysis, files.get(image_id), left_out)
            if image is None:
                continue
            drawn = _draw(analysis, image_id, image)
            title = f"{name}: image {image_id} ({shown(files[image_id], limit=80)}), {errors} errors"
            _save_panel(drawn, shown(title, limit=200), folder / f"{rank:02d}_image{image_id}.png")
    return out
