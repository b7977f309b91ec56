"""The embedded default dataset: procedurally generated coloured shapes, in COCO JSON layout.

Four classes (rectangle, ellipse, triangle, star) of varied size (1/4 to 5/8 of the image across:
32-80 px at 128 px), aspect, rotation and colour on textured, noisy backgrounds; 1-4 objects per
image with bounded overlap, some images empty.
Generation is deterministic: image i of a split depends only on (seed, split, i). It writes
``root/annotations/instances_{train,val}.json``, ``root/{train,val}/*.png`` and a
``manifest.json`` recording the parameters, so a second call with the same parameters is free.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from detector.data.coco import CocoDetection
from detector.data.report import DatasetError, OnBad
from detector.data.transforms import DetectionTransforms

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "star")
GENERATOR_VERSION = 2  # 2: shapes at least a quarter of the image across (was an eighth)
SPLITS = ("train", "val")

log = logging.getLogger(__name__)


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


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """float32[S, S, 3]: a tinted background with a smooth random texture."""
    base = rng.uniform(60, 190, size=3) + rng.uniform(-15, 15)
    coarse = rng.normal(0.0, 18.0, size=(6, 6, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
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


def _place(polygon: np.ndarray, size: int, boxes: list, rng: np.random.Generator,
           max_overlap: float) -> np.ndarray | None:
    """The polygon moved to a random spot inside the image with bounded overlap, or None."""
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
    ratios = np.asarray(list(class_ratios), dtype=np.float64)
    if ratios.shape != (len(CLASS_NAMES),) or not np.isfinite(ratios).all() or (
            ratios < 0).any() or ratios.sum() <= 0:
        raise DatasetError(f"class_ratios must be {len(CLASS_NAMES)} non-negative numbers (one per "
                         f"shape: {', '.join(CLASS_NAMES)}), not all 0; got {list(class_ratios)}")
    if (ratios == ratios[0]).all():
        return None
    return ratios / ratios.sum()


def render_shapes_image(
    rng: np.random.Generator, *, image_size: int = 128, max_objects: int = 4,
    empty_fraction: float = 0.1, object_size: tuple[float, float] = (0.25, 0.625),
    max_overlap: float = 0.25, class_probs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image and its annotations.

    Args:
        class_probs (ndarray[4] | None): probability of each shape (see `class_probabilities`);
            None: uniform (the same random stream as before this knob existed).
        object_size: shape diameter range as fractions of `image_size`. The default (32-80 px
            in a 128 px image) keeps every shape at least two cells of a stride-16 feature map
            across; with an eighth (16 px, one cell) as the lower end, version 1 of this set made
            the smallest shapes a large share of the misses of a detector trained from scratch.

    Returns:
        (image uint8[S, S, 3] RGB, boxes float64[N, 4] xyxy pixels, labels int64[N] 1..4).
    """
    image = _background(image_size, rng)
    count = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    boxes: list[np.ndarray] = []
    labels = []
    for _ in range(count):
        kind = (int(rng.integers(len(CLASS_NAMES))) if class_probs is None
                else int(rng.choice(len(CLASS_NAMES), p=class_probs)))
        diameter = rng.uniform(*object_size) * image_size
        polygon = _place(_shape_polygon(kind, diameter, rng), image_size, boxes, rng, max_overlap)
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


def _split_dict(images: list[dict], annotations: list[dict]) -> dict:
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CLASS_NAMES)]
    return {"info": {"description": "detector synthetic shapes", "version": GENERATOR_VERSION},
            "images": images, "annotations": annotations, "categories": categories}


def _write_split(root: Path, split: str, count: int, *, seed: int, image_size: int,
                 class_probs: np.ndarray | None = None) -> None:
    """Render and write `count` images of `split` with their COCO JSON."""
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        pixels, boxes, labels = render_shapes_image(rng, image_size=image_size,
                                                    class_probs=class_probs)
        name = f"{index:06d}.png"
        cv2.imwrite(str(root / split / name), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        images.append({"id": index + 1, "file_name": name, "width": image_size,
                       "height": image_size})
        for box, label in zip(np.round(boxes, 2).tolist(), labels.tolist(), strict=True):
            w, h = round(box[2] - box[0], 2), round(box[3] - box[1], 2)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": label, "bbox": [box[0], box[1], w, h],
                                "area": round(w * h, 2), "iscrowd": 0})
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(_split_dict(images, annotations), f)


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _move_into_place(tmp: Path, root: Path, params: dict) -> None:
    """Replace `root` by the finished `tmp`; fine if a concurrent process got there first."""
    if _read_manifest(root) == params:
        return
    if root.exists():
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:
        if _read_manifest(root) != params:
            raise


def generate_shapes_dataset(
    *,
    root: str | Path = "datasets/shapes",
    num_train: int = 600,
    num_val: int = 150,
    image_size: int = 128,
    seed: int = 0,
    class_ratios: Sequence[float] | None = None,
) -> Path:
    """Write the shapes dataset under `root` unless it is already there with these parameters.

    ``class_ratios``: relative frequency of each shape in the train split (None: balanced; see
    `class_probabilities`); the val split is always balanced.

    The set is built in a temporary sibling folder and moved into place, so an interrupted run
    leaves no half-written dataset. An existing `root` is replaced only if it holds a manifest
    from this generator (never a folder of someone else's files). Generating logs a WARNING with
    the absolute path: a mistyped root makes a new set, where the user meant an existing one.

    Returns:
        `root` as a Path.
    """
    root = Path(root)
    params = {"generator": "shapes", "version": GENERATOR_VERSION, "num_train": num_train,
              "num_val": num_val, "image_size": image_size, "seed": seed}
    probs = class_probabilities(class_ratios)
    if probs is not None:  # balanced sets keep the manifest (and files) they always had
        params["class_ratios"] = [float(r) for r in class_ratios]
    if _read_manifest(root) == params:
        return root
    if root.exists() and any(root.iterdir()) and _read_manifest(root) is None:
        raise DatasetError(f"{root} exists and was not written by the shapes generator; "
                           "refusing to overwrite it (choose another root)")
    found = _read_manifest(root)
    log.warning("generating the shapes dataset in %s (%d train + %d val images, %d px): %s; if "
                "you meant an existing set, check the dataset root", root.resolve(), num_train,
                num_val, image_size, "there is none there yet" if found is None else
                "the set there was made with other parameters, it is replaced")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        (tmp / "annotations").mkdir()
        for split, count in zip(SPLITS, (num_train, num_val), strict=True):
            _write_split(tmp, split, count, seed=seed, image_size=image_size,
                         class_probs=probs if split == "train" else None)
        (tmp / "manifest.json").write_text(json.dumps(params, indent=1))
        _move_into_place(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class ShapesDetection(CocoDetection):
    """The shapes dataset, generated on first use, read through the ordinary COCO code path.

    Args:
        root: where the set lives (generated there if absent or made with other parameters).
        split: ``"train"`` or ``"val"``.
        num_train, num_val, image_size, seed, class_ratios: generator parameters (see
            `generate_shapes_dataset`).
        transforms, keep_empty, on_bad: as in `CocoDetection`.
    """

    def __init__(
        self,
        *,
        root: str | Path = "datasets/shapes",
        split: str = "train",
        num_train: int = 600,
        num_val: int = 150,
        image_size: int = 128,
        seed: int = 0,
        class_ratios: Sequence[float] | None = None,
        transforms: DetectionTransforms | None = None,
        keep_empty: bool = True,
        on_bad: OnBad = "error",
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        generate_shapes_dataset(root=root, num_train=num_train, num_val=num_val,
                                image_size=image_size, seed=seed, class_ratios=class_ratios)
        super().__init__(root=root, split=split, transforms=transforms, keep_empty=keep_empty,
                         on_bad=on_bad)
