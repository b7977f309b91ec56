"""Pictures of a run: detections drawn on images (OpenCV) and training curves (matplotlib).

Images are ``np.ndarray[H, W, 3]`` uint8 RGB; boxes are ``(N, 4)`` xyxy pixels of that image
(numpy arrays or tensors, any device). Labels are contiguous ``1..K`` and ``class_names[label - 1]``
names label ``label``.

Curves come from a ``metrics.jsonl`` file: one JSON object per line, each with ``"iter"`` and any
of the loss keys, ``"lr"`` and evaluation keys (``"AP"``, ``"AP50"``, ...). Lines that carry
``"step"`` and/or ``"phase"`` values (multi-step schedules) are drawn as separate, labelled
series. Figures are drawn on their own Agg canvas: pyplot and its global state are never used.
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LOSS_KEYS: tuple[str, ...] = ("loss", "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box")
EVAL_KEYS: tuple[str, ...] = ("AP", "AP50")
DEFAULT_KEYS: tuple[str, ...] = (*LOSS_KEYS, "lr", "grad_norm", *EVAL_KEYS)
GROUP_KEYS: tuple[str, ...] = ("step", "phase")

GT_COLOR: tuple[int, int, int] = (0, 255, 0)
HALO_COLOR: tuple[int, int, int] = (24, 24, 24)  # edges drawn around boxes and caption tags
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN = 0.618033988749895
_EVAL_TITLE = "COCO eval"

Series = dict[str, tuple[list[float], list[float]]]  # group label -> (iters, values)


# --- drawing ---------------------------------------------------------------------------------


def class_color(label: int) -> tuple[int, int, int]:
    """A bright RGB colour per label; neighbouring labels get far-apart hues."""
    r, g, b = colorsys.hsv_to_rgb((int(label) * _GOLDEN) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image_rgb: np.ndarray,
    boxes: Any,
    labels: Any,
    scores: Any = None,
    *,
    class_names: Sequence[str],
    score_threshold: float = 0.0,
    gt_boxes: Any = None,
    thickness: int | None = None,
) -> np.ndarray:
    """Draw detections (solid, class-coloured with a dark halo, captioned ``"name 0.93"`` on an
    opaque tag whose ink is black or white by the tag's luminance) and GT (dashed, green).

    Args:
        image_rgb (ndarray[H, W, 3] uint8): the image; it is not modified.
        boxes (Tensor|ndarray[D, 4]): xyxy pixels. The outline covers the boundary pixels:
            columns ``round(x1)`` and ``round(x2) - 1``, rows likewise.
        labels (Tensor|ndarray[D]): 1..K.
        scores (Tensor|ndarray[D] | None): shown in captions; boxes below ``score_threshold``
            are skipped. Higher scores are drawn last (on top).
        class_names: K names, ``class_names[label - 1]``; unknown labels print as numbers.
        gt_boxes (Tensor|ndarray[G, 4] | None): xyxy pixels, drawn dashed under the detections.
        thickness: line width in pixels; default grows with the image (1 px up to 600 px).

    Returns:
        ndarray[H, W, 3] uint8: a drawn copy.
    """
    _check_image(image_rgb)
    canvas = image_rgb.copy()
    t = thickness or max(1, round(min(canvas.shape[:2]) / 600))
    if gt_boxes is not None:
        for corners in _pixel_corners(_as_array(gt_boxes)):
            _dashed_rectangle(canvas, corners, GT_COLOR, t)
    boxes_np = _as_array(boxes).reshape(-1, 4)
    labels_np = _as_array(labels).reshape(-1).astype(np.int64)
    scores_np = None if scores is None else _as_array(scores).reshape(-1).astype(np.float64)
    order = np.arange(len(boxes_np)) if scores_np is None else np.argsort(scores_np, kind="stable")
    if scores_np is not None:
        order = order[scores_np[order] >= score_threshold]
    for i, corners in zip(order, _pixel_corners(boxes_np[order]), strict=True):
        color = class_color(labels_np[i])
        # a dark 1 px halo on both sides keeps bright outlines visible on light backgrounds
        cv2.rectangle(canvas, corners[0], corners[1], HALO_COLOR, t + 2)
        cv2.rectangle(canvas, corners[0], corners[1], color, t)
        text = _caption(labels_np[i], None if scores_np is None else scores_np[i], class_names)
        _draw_caption(canvas, text, corners[0], color, t)
    return canvas


def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        raise ValueError("image_rgb must be a uint8 ndarray of shape (H, W, 3)")


def _as_array(values: Any) -> np.ndarray:
    """Tensor (any device) or array-like -> ndarray."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _pixel_corners(boxes: np.ndarray) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(N, 4) continuous xyxy -> inclusive pixel corners ``((x1, y1), (x2 - 1, y2 - 1))``."""
    px = np.rint(boxes.reshape(-1, 4).astype(np.float64)).astype(np.int64)
    px[:, 2:] = np.maximum(px[:, 2:] - 1, px[:, :2])
    return [((x1, y1), (x2, y2)) for x1, y1, x2, y2 in px.tolist()]


def _caption(label: int, score: float | None, class_names: Sequence[str]) -> str:
    name = class_names[label - 1] if 1 <= label <= len(class_names) else str(int(label))
    return name if score is None else f"{name} {score:.2f}"


def _draw_caption(
    canvas: np.ndarray, text: str, top_left: tuple[int, int], color: tuple[int, int, int], t: int
) -> None:
    """Text on a filled ``color`` tag sitting on the box's top edge (inside it at the image top)."""
    scale = 0.4 * t
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, t)
    x, y = top_left
    x = max(0, min(x, canvas.shape[1] - tw - 2))
    bottom = y if y - th - base - 2 >= 0 else y + th + base + 2
    top = bottom - th - base - 2
    cv2.rectangle(canvas, (x - 1, top - 1), (x + tw + 3, bottom + 1), HALO_COLOR, 1)
    cv2.rectangle(canvas, (x, top), (x + tw + 2, bottom), color, cv2.FILLED)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 128 else (255, 255, 255)
    cv2.putText(canvas, text, (x + 1, bottom - base - 1), _FONT, scale, ink, t, cv2.LINE_AA)


def _dashed_rectangle(
    canvas: np.ndarray,
    corners: tuple[tuple[int, int], tuple[int, int]],
    color: tuple[int, int, int],
    t: int,
    dash: int = 6,
) -> None:
    """Rectangle outline as ``dash``-pixel strokes separated by ``dash``-pixel gaps."""
    (x1, y1), (x2, y2) = corners
    edges = (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1)))
    for (ax, ay), (bx, by) in edges:  # axis-aligned: one of dx, dy is 0
        dx, dy = int(np.sign(bx - ax)), int(np.sign(by - ay))
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, length + 1, 2 * dash):
            end = min(start + dash - 1, length)
            cv2.line(canvas, (ax + dx * start, ay + dy * start), (ax + dx * end, ay + dy * end),
                     color, t)


def save_image(path: str | os.PathLike, image_rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image (format from the suffix, e.g. .png/.jpg); creates parent dirs."""
    _check_image(image_rgb)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"OpenCV could not write {path}")
    return path


# --- curves ----------------------------------------------------------------------------------


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a ``metrics.jsonl``; unparsable lines (a half-written tail) are
    skipped with a warning."""
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}:{n}: not JSON, skipped", stacklevel=2)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def metric_series(records: Iterable[Mapping[str, Any]], key: str, *, positive: bool = False) -> Series:
    """``key`` against ``iter``, one series per group such as ``"step 2, phase val"`` (``""`` if
    the lines carry no ``step``/``phase``).

    Lines without ``iter`` or with a missing, non-numeric or non-finite value are left out;
    ``positive=True`` also drops values <= 0 (for log axes).
    """
    series: Series = {}
    for r in records:
        value, it = r.get(key), r.get("iter")
        if not (_is_number(value) and _is_number(it)) or (positive and value <= 0):
            continue
        group = ", ".join(f"{g} {r[g]}" for g in GROUP_KEYS if g in r)
        xs, ys = series.setdefault(group, ([], []))
        xs.append(float(it))
        ys.append(float(value))
    return series


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _smoothed(xs: list[float], ys: list[float], window: int) -> tuple[list[float], list[float]]:
    """Trailing moving average over ``window`` points (unchanged if the series is shorter)."""
    if window <= 1 or len(ys) < window:
        return xs, ys
    kernel = np.full(window, 1.0 / window)
    return xs[window - 1:], np.convolve(ys, kernel, mode="valid").tolist()


def _panels(records: list[dict], keys: Sequence[str]) -> list[tuple[str, dict[str, Series], bool]]:
    """(title, {key: series}, log_y) per subplot: a panel per loss or other key, one shared
    panel for AP/AR keys; keys without data get no panel."""
    panels: list[tuple[str, dict[str, Series], bool]] = []
    eval_panel: dict[str, Series] = {}
    for key in keys:
        is_loss = key.startswith("loss")
        series = metric_series(records, key, positive=is_loss)
        if not series:
            continue
        if key.startswith(("AP", "AR")):
            eval_panel[key] = series
        else:
            panels.append((key, {key: series}, is_loss))
    if eval_panel:
        panels.append((_EVAL_TITLE, eval_panel, False))
    return panels


def plot_metrics(
    metrics_jsonl_path: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    keys: Sequence[str] | None = None,
    smooth: int = 1,
) -> Path:
    """A PNG grid of training curves: losses (log y), lr, and AP/AR keys vs iteration.

    Args:
        metrics_jsonl_path: the run's ``metrics.jsonl``.
        out_png: where to write the figure (parent dirs are created).
        keys: keys to plot, in panel order; default :data:`DEFAULT_KEYS`. Keys absent from the
            file are skipped; with nothing at all to plot a placeholder figure is written and a
            warning raised.
        smooth: moving-average window applied to loss curves (1 = raw).
    """
    records = read_metrics_jsonl(metrics_jsonl_path)
    panels = _panels(records, DEFAULT_KEYS if keys is None else keys)
    ncols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    if not panels:
        warnings.warn(f"nothing to plot in {metrics_jsonl_path}", stacklevel=2)
        fig.text(0.5, 0.5, "no metrics to plot", ha="center", va="center")
    for i, (title, by_key, log_y) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for key, series in by_key.items():
            for group, (xs, ys) in series.items():
                label = " ".join(s for s in (key if len(by_key) > 1 else "", group) if s)
                if log_y:
                    xs, ys = _smoothed(xs, ys, smooth)
                ax.plot(xs, ys, label=label or None, marker="o" if title == _EVAL_TITLE else None)
        _style_axes(ax, title, log_y)
    return _save_figure(fig, out_png)


def plot_loss_comparison(
    runs: Mapping[str, str | os.PathLike],
    out_png: str | os.PathLike,
    key: str = "loss",
    *,
    smooth: int = 1,
) -> Path:
    """Overlay one metric (default the total loss, log y) from several runs, e.g. CE vs focal.

    Args:
        runs: run name -> its ``metrics.jsonl``.
        out_png: where to write the figure.
        key: the metric to compare.
        smooth: moving-average window (1 = raw).
    """
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    log_y = key.startswith("loss")
    drawn = 0
    for name, path in runs.items():
        for group, (xs, ys) in metric_series(read_metrics_jsonl(path), key, positive=log_y).items():
            ax.plot(*_smoothed(xs, ys, smooth), label=f"{name} [{group}]" if group else name)
            drawn += 1
    if not drawn:
        warnings.warn(f"no run has values for {key!r}", stacklevel=2)
    _style_axes(ax, key, log_y)
    return _save_figure(fig, out_png)


def _style_axes(ax: Any, title: str, log_y: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel("iteration")
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if any(not line.get_label().startswith("_") for line in ax.get_lines()):
        ax.legend(fontsize="small")


def _save_figure(fig: Figure, out_png: str | os.PathLike) -> Path:
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
