"""Drawing one image of the generated shapes set: shapes, sizes, placement, colours.

Pure functions of a seeded ``numpy`` generator (the same generator state gives the same pixels
and boxes); ``detector.data.shapes`` writes their output to disk. Boxes are xyxy pixels of the
rendered image, labels 1..4 in ``CLASS_NAMES`` order (rectangle, ellipse, triangle, star).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from detector.data.report import DatasetError, shown

__all__ = ["CLASS_NAMES", "class_probabilities", "render_shapes_image"]

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "star")


def _shape_polygon(kind: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (ndarray[P, 2], x/y, centred at 0) of a shape about `size` pixels across."""
    aspect = rng.uniform(0.55, 1.0)
    if kind == 0:  # rectangle, axis-aligned
        w, h = (size, size * aspect) if rng.random() < 0.5 else (size * aspect, size)
        return np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    angle = rng.uniform(0, 2 * np.pi)
    if kind == 1:  # ellipse
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), aspect * np.sin(t)], axis=1) * size / 2
    elif kind == 2:  # triangle
        t = np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * size / 2
        pts[:, 1] *= rng.uniform(0.75, 1.0)
    else:  # five-pointed star
        t = np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
        pts = np.stack([np.cos(t), np.sin(t)], axis=1) * (radius[:, None] * size / 2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return pts @ rotation.T


def _background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """float32[H, W, 3]: a tinted background with a smooth random texture."""
    base = rng.uniform(60, 190, size=3) + rng.uniform(-15, 15)
    coarse = rng.normal(0.0, 18.0, size=(6, 6, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return base.astype(np.float32) + texture


def _contrasting_colour(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour far (L1 >= 200, some channel >= 90 apart) from `base`, the colour under it."""
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        diff = np.abs(colour - base)
        if diff.sum() >= 200 and diff.max() >= 90:
            return colour
    return np.where(base > 127, 0.0, 255.0)


def _overlap_ok(box: np.ndarray, boxes: list[np.ndarray], max_overlap: float) -> bool:
    """Intersection over the smaller box area stays at most `max_overlap` for every pair."""
    if not boxes:
        return True
    others = np.stack(boxes)
    lt = np.maximum(others[:, :2], box[:2])
    rb = np.minimum(others[:, 2:], box[2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    areas = np.prod(others[:, 2:] - others[:, :2], axis=1)
    smaller = np.minimum(areas, np.prod(box[2:] - box[:2]))
    return bool(np.all(inter <= max_overlap * smaller))


def _place(polygon: np.ndarray, size: np.ndarray, boxes: list, rng: np.random.Generator,
           max_overlap: float) -> np.ndarray | None:
    """The polygon moved to a random spot inside the image (`size`: ndarray[2], width and
    height) with bounded overlap, or None."""
    low, high = polygon.min(axis=0), polygon.max(axis=0)
    for _ in range(30):
        offset = rng.uniform(-low, size - high)
        box = np.concatenate([low + offset, high + offset])
        if _overlap_ok(box, boxes, max_overlap):
            boxes.append(box)
            return polygon + offset
    return None


def class_probabilities(class_ratios: Sequence[float] | None) -> np.ndarray | None:
    """``class_ratios`` (one non-negative weight per shape, not all 0) as probabilities, or None
    for balanced classes (None, or all ratios equal). Raises DatasetError (one line) otherwise."""
    if class_ratios is None:
        return None
    try:
        ratios = np.asarray(list(class_ratios), dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # not a list of numbers
        ratios = np.zeros(0)
    if ratios.shape != (len(CLASS_NAMES),) or not np.isfinite(ratios).all() or (
            ratios < 0).any() or ratios.sum() <= 0:
        raise DatasetError(f"class_ratios must be {len(CLASS_NAMES)} non-negative numbers (one per "
                           f"shape: {', '.join(CLASS_NAMES)}), not all 0; got {shown(class_ratios)}")
    if (ratios == ratios[0]).all():
        return None
    return ratios / ratios.sum()


def _image_shape(rng: np.random.Generator, image_size: int,
                 long_side_range: Sequence[int] | None) -> np.ndarray:
    """ndarray[2] (width, height): square `image_size`, or that shorter side and a longer side
    drawn uniformly from the integers in `long_side_range`, landscape or portrait at even odds
    (nothing is drawn for a square image)."""
    if long_side_range is None:
        return np.array([image_size, image_size])
    long = int(rng.integers(long_side_range[0], long_side_range[1] + 1))
    return np.array([long, image_size] if rng.random() < 0.5 else [image_size, long])


def _sized_polygon(kind: int, image_size: int, rng: np.random.Generator,
                   object_size: tuple[float, float],
                   pixels: Sequence[int] | None) -> np.ndarray:
    """A shape's vertices (see `_shape_polygon`): about ``object_size`` times `image_size`
    across, or (`pixels` = [low, high]) its box's longer side drawn uniformly from that range."""
    if pixels is None:
        return _shape_polygon(kind, rng.uniform(*object_size) * image_size, rng)
    longer = rng.uniform(pixels[0], pixels[1])
    polygon = _shape_polygon(kind, 1.0, rng)
    return polygon * (longer / np.ptp(polygon, axis=0).max())


def render_shapes_image(
    rng: np.random.Generator, *, image_size: int = 128, max_objects: int = 4,
    empty_fraction: float = 0.1, object_size: tuple[float, float] = (0.25, 0.625),
    max_overlap: float = 0.25, class_probs: np.ndarray | None = None,
    long_side_range: Sequence[int] | None = None,
    class_sizes: Sequence[Sequence[int] | None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image and its annotations.

    Args:
        image_size: the image's side (its shorter side with `long_side_range`).
        class_probs (ndarray[4] | None): probability of each shape (see `class_probabilities`);
            None: uniform (the same random stream as before this knob existed).
        object_size: shape diameter range as fractions of `image_size`. The default (32-80 px
            in a 128 px image) keeps every shape at least two cells of a stride-16 feature map
            across; with an eighth (16 px, one cell) as the lower end, version 1 of this set made
            the smallest shapes a large share of the misses of a detector trained from scratch.
        long_side_range ([low, high] | None): the longer side of each image, drawn per image
            (see `_image_shape`); None: square images (the same random stream as before).
        class_sizes (4 x ([low, high] | None) | None): per shape, the range of its box's longer
            side in pixels (a shape is never clipped: its box is the polygon's); None (all, or
            one shape's entry): `object_size`.

    Returns:
        (image uint8[H, W, 3] RGB, boxes float64[N, 4] xyxy pixels, labels int64[N] 1..4).
    """
    size = _image_shape(rng, image_size, long_side_range)
    image = _background(int(size[0]), int(size[1]), rng)
    count = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    boxes: list[np.ndarray] = []
    labels = []
    for _ in range(count):
        kind = (int(rng.integers(len(CLASS_NAMES))) if class_probs is None
                else int(rng.choice(len(CLASS_NAMES), p=class_probs)))
        pixels = None if class_sizes is None else class_sizes[kind]
        shape = _sized_polygon(kind, image_size, rng, object_size, pixels)
        polygon = _place(shape, size, boxes, rng, max_overlap)
        if polygon is not None:
            x1, y1, x2, y2 = boxes[-1].astype(int)
            under = image[y1 : y2 + 1, x1 : x2 + 1].reshape(-1, 3).mean(axis=0)
            points = np.round(polygon * 16).astype(np.int32)[None]
            cv2.fillPoly(image, points, _contrasting_colour(under, rng).tolist(),
                         lineType=cv2.LINE_AA, shift=4)
            labels.append(kind + 1)
    image += rng.normal(0.0, 6.0, size=image.shape).astype(np.float32)
    out = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return out, np.array(boxes).reshape(-1, 4), np.array(labels, dtype=np.int64)
