"""The worst images of a run: those with the most errors at the operating point (false
positives of every type plus missed boxes), drawn with ``detector.visualize`` - each detection
coloured by its verdict, missed boxes dashed - beside a legend of the colours."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from detector.data.image_io import read_image_rgb
from detector.study.analysis import RunAnalysis
from detector.study.errors import FP_TYPES
from detector.visualize import draw_detections

__all__ = ["VERDICT_COLORS", "worst_images", "write_gallery"]

#: RGB per verdict: true positives, each false-positive type, misses (dashed boxes)
VERDICT_COLORS: dict[str, tuple[int, int, int]] = {
    "true positive": (40, 200, 40), "cls": (255, 140, 0), "loc": (255, 230, 0),
    "both": (170, 90, 255), "dupe": (0, 200, 255), "bkg": (255, 40, 40),
    "miss": (255, 0, 200),
}
_NAMES = ("true positive", *FP_TYPES)  # by verdict code 0..5
_MIN_SIDE = 384  # small images are enlarged (nearest) so captions stay readable


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
    scale = max(1, int(np.ceil(_MIN_SIDE / min(image.shape[:2]))))
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    rows = np.flatnonzero((det.image_ids == image_id) & (kinds.kind >= 0)
                          & (kinds.kind <= len(FP_TYPES)))
    labels = np.searchsorted(analysis.category_ids, det.labels[rows]) + 1  # 1..K
    missed = gt.boxes[(gt.image_ids == image_id) & kinds.missed]
    return draw_detections(big, det.boxes[rows] * scale, labels, det.scores[rows],
                           class_names=analysis.class_names, gt_boxes=missed * scale,
                           colors=[VERDICT_COLORS[_NAMES[k]] for k in kinds.kind[rows]],
                           gt_color=VERDICT_COLORS["miss"], thickness=2)


def _save_panel(drawn: np.ndarray, title: str, path: Path) -> Path:
    height, width = drawn.shape[:2]
    fig = Figure(figsize=(width / 90 + 2.2, height / 90 + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(drawn)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    handles = [Patch(facecolor=np.asarray(c) / 255, edgecolor="0.2",
                     linestyle="--" if name == "miss" else "-",
                     label="miss (dashed)" if name == "miss" else name)
               for name, c in VERDICT_COLORS.items()]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, title="verdict",
               title_fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def write_gallery(analyses: Mapping[str, RunAnalysis], out: Path, *, count: int = 6) -> Path:
    """``out/<run>/<rank>_image<id>.png`` for each analysed run's worst images (those whose
    file is found); returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, analysis in analyses.items():
        if not analysis.analysed:
            continue
        files = {img["id"]: img["file_name"] for img in analysis.coco["images"]}
        folder = out / (re.sub(r"[^A-Za-z0-9._=,-]+", "_", name).strip("_") or "run")
        for rank, (image_id, errors) in enumerate(worst_images(analysis, count), 1):
            path = analysis.image_dir / files.get(image_id, "")
            if not path.is_file():
                continue
            drawn = _draw(analysis, image_id, read_image_rgb(path))
            title = f"{name}: image {image_id} ({files[image_id]}), {errors} errors"
            _save_panel(drawn, title, folder / f"{rank:02d}_image{image_id}.png")
    return out
