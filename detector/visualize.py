"""Pictures of detections: boxes, captions and ground truth drawn on images (OpenCV).

Images are ``np.ndarray[H, W, 3]`` uint8 RGB; boxes are ``(N, 4)`` xyxy pixels of that image
(numpy arrays or tensors, any device). Labels are contiguous ``1..K`` and ``class_names[label - 1]``
names label ``label``.
"""
from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

GT_COLOR: tuple[int, int, int] = (0, 255, 0)
HALO_COLOR: tuple[int, int, int] = (24, 24, 24)  # edges drawn around boxes and caption tags
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN = 0.618033988749895
CAPTION_AREA = 0.2  # captions (tags) cover at most this fraction of the image; best scores first



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
    min_score: float = 0.0,
    gt_boxes: Any = None,
    thickness: int | None = None,
    captions: bool = True,
    colors: Sequence[tuple[int, int, int]] | None = None,
    gt_color: tuple[int, int, int] = GT_COLOR,
) -> np.ndarray:
    """Draw detections (solid, class-coloured with a dark halo, captioned ``"name 0.93"`` on an
    opaque tag whose ink is black or white by the tag's luminance) and GT (dashed, green).

    Captions never bury the image: their font shrinks on small images, and they are placed from
    the highest score down, each only if it overlaps no caption placed before and all of them
    stay within ``CAPTION_AREA`` of the image's pixels; the other boxes go uncaptioned.

    Args:
        image_rgb (ndarray[H, W, 3] uint8): the image; it is not modified.
        boxes (Tensor|ndarray[D, 4]): xyxy pixels. The outline covers the boundary pixels:
            columns ``round(x1)`` and ``round(x2) - 1``, rows likewise.
        labels (Tensor|ndarray[D]): 1..K.
        scores (Tensor|ndarray[D] | None): shown in captions; boxes below ``min_score``
            are skipped. Higher scores are drawn last (on top).
        class_names: K names, ``class_names[label - 1]``; unknown labels print as numbers.
        gt_boxes (Tensor|ndarray[G, 4] | None): xyxy pixels, drawn dashed under the detections.
        thickness: line width in pixels; default grows with the image (1 px up to 600 px).
        captions: False draws the boxes only.
        colors: an RGB colour per detection instead of its class colour (e.g. by error type).
        gt_color: the RGB colour of the dashed ground truth boxes.

    Returns:
        ndarray[H, W, 3] uint8: a drawn copy.
    """
    _check_image(image_rgb)
    canvas = image_rgb.copy()
    t = thickness or max(1, round(min(canvas.shape[:2]) / 600))
    if gt_boxes is not None:
        for corners in _pixel_corners(_as_array(gt_boxes)):
            _dashed_rectangle(canvas, corners, gt_color, t)
    boxes_np = _as_array(boxes).reshape(-1, 4)
    labels_np = _as_array(labels).reshape(-1).astype(np.int64)
    scores_np = None if scores is None else _as_array(scores).reshape(-1).astype(np.float64)
    order = np.arange(len(boxes_np)) if scores_np is None else np.argsort(scores_np, kind="stable")
    if scores_np is not None:
        order = order[scores_np[order] >= min_score]
    box_colors = [class_color(labels_np[i]) if colors is None else tuple(colors[i]) for i in order]
    corners = _pixel_corners(boxes_np[order])
    for (top_left, bottom_right), color in zip(corners, box_colors, strict=True):
        # a dark 1 px halo on both sides keeps bright outlines visible on light backgrounds
        cv2.rectangle(canvas, top_left, bottom_right, HALO_COLOR, t + 2)
        cv2.rectangle(canvas, top_left, bottom_right, color, t)
    if captions:
        texts = [_caption(labels_np[i], None if scores_np is None else scores_np[i], class_names)
                 for i in order]
        tags = _caption_tags(canvas.shape, texts, [c[0] for c in corners], t)
        for k, tag in enumerate(tags):  # lowest score first: the best caption ends on top
            if tag is not None:
                _paint_caption(canvas, texts[k], tag, box_colors[k], t)
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


def _font_scale(shape: tuple[int, ...], t: int) -> float:
    """0.4 per line width from 300 px up; down to 0.3 on smaller images (about 7 px capitals)."""
    return t * min(0.4, max(0.3, 0.4 * min(shape[:2]) / 300))


def _caption_tags(shape: tuple[int, ...], texts: list[str], top_lefts: list[tuple[int, int]],
                  t: int) -> list[tuple[int, int, int, int, int] | None]:
    """Where each caption's tag goes: ``(x, top, bottom, text width, baseline)``, sitting on the
    box's top edge (inside it at the image top), or None for a caption left out. Captions are
    given in increasing score order and placed from the last one down (see ``draw_detections``)."""
    height, width = shape[:2]
    scale, budget = _font_scale(shape, t), CAPTION_AREA * height * width
    placed: list[tuple[int, int, int, int]] = []  # x1, y1, x2, y2 of the tags with their halo
    tags: list[tuple[int, int, int, int, int] | None] = [None] * len(texts)
    for k in reversed(range(len(texts))):
        (tw, th), base = cv2.getTextSize(texts[k], _FONT, scale, t)
        x, y = top_lefts[k]
        x = max(0, min(x, width - tw - 2))
        bottom = y if y - th - base - 2 >= 0 else y + th + base + 2
        top = bottom - th - base - 2
        rect = (x - 1, top - 1, x + tw + 4, bottom + 2)
        area = (rect[2] - rect[0]) * (rect[3] - rect[1])
        if budget < area or any(rect[0] < o[2] and o[0] < rect[2] and rect[1] < o[3]
                                and o[1] < rect[3] for o in placed):
            continue
        budget -= area
        placed.append(rect)
        tags[k] = (x, top, bottom, tw, base)
    return tags


def _paint_caption(canvas: np.ndarray, text: str, tag: tuple[int, int, int, int, int],
                   color: tuple[int, int, int], t: int) -> None:
    """Text on a filled ``color`` tag with a dark edge, where ``_caption_tags`` put it."""
    x, top, bottom, tw, base = tag
    cv2.rectangle(canvas, (x - 1, top - 1), (x + tw + 3, bottom + 1), HALO_COLOR, 1)
    cv2.rectangle(canvas, (x, top), (x + tw + 2, bottom), color, cv2.FILLED)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 128 else (255, 255, 255)
    cv2.putText(canvas, text, (x + 1, bottom - base - 1), _FONT, _font_scale(canvas.shape, t), ink,
                t, cv2.LINE_AA)


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
