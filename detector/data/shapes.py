"""The embedded default dataset: procedurally generated coloured shapes, in COCO JSON layout.

Four classes (rectangle, ellipse, triangle, star) of varied size (1/4 to 5/8 of the image across:
32-80 px at 128 px), aspect, rotation and colour on textured, noisy backgrounds; 1-4 objects per
image with bounded overlap, some images empty.
Generation is deterministic: image i of a split depends only on (seed, split, i). It writes
``root/annotations/instances_{train,val}.json``, ``root/{train,val}/NNNNNN.png`` and a
``manifest.json`` recording the parameters, so a second call with the same parameters is free.

Writing is bounded and careful, whoever asks (a config, a crafted description):

- every parameter has a range (`LIMITS`; at most `MAX_PIXELS` pixels in all, and the set must fit
  the free disk space), checked before anything is written;
- a set made with other parameters is replaced by removing only the files its manifest says the
  generator wrote (``manifest.json``, the two annotation files, ``NNNNNN.png`` below each split's
  count); a folder holding anything else, a link or a file is refused (`DatasetError`), never
  emptied;
- the set is built in a temporary sibling ``.<root name>.generating-<pid>-XXXXXXXX`` and moved into
  place; such a folder left by a killed run is removed by the next run once its process is gone,
  again only if it holds nothing but the generator's files.

Describing the set is not making it: `existing_shapes_dataset` (``ShapesDetection(generate=False)``)
reads a set that is already there as described and writes nothing; it is the route every tool
that rebuilds a dataset from a checkpoint takes (``detector.modeling.spec.DATA_CONSTRUCTORS``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detector.data.coco import CocoDetection
from detector.data.report import DatasetError, OnBad, shown
from detector.data.shapes_folder import (
    MAX_IMAGES,
    SPLITS,
    TMP_MARK,
    check_free_space,
    move_into_place,
    read_manifest,
    remove_stale_temporaries,
    replaceable,
)
from detector.data.transforms import DetectionTransforms

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "star")
GENERATOR_VERSION = 2  # 2: shapes at least a quarter of the image across (was an eighth)
# Ranges of the generator's parameters (inclusive), so that no description can fill a disk.
LIMITS: dict[str, tuple[int, int]] = {"num_train": (1, MAX_IMAGES), "num_val": (1, MAX_IMAGES),
                                      "image_size": (32, 2048), "seed": (0, 2**32 - 1)}
MAX_PIXELS = 2**31  # (num_train + num_val) * image_size**2: some 4 GB of PNG at ~2 bytes a pixel

log = logging.getLogger(__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def check_parameters(*, num_train: Any, num_val: Any, image_size: Any, seed: Any) -> None:
    """Raise `DatasetError` (one line, naming the parameter) unless each is an integer in its
    `LIMITS` range and the set holds at most `MAX_PIXELS` pixels."""
    values = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
    for name, value in values.items():
        low, high = LIMITS[name]
        if not (_is_int(value) and low <= value <= high):
            raise DatasetError(f"shapes dataset {name} must be an integer in [{low}, {high}], "
                               f"got {shown(value)}")
    if (num_train + num_val) * image_size**2 > MAX_PIXELS:
        raise DatasetError(f"shapes dataset of {num_train} + {num_val} images of {image_size} px "
                           f"is too large (at most {MAX_PIXELS} pixels in all)")


def _manifest(*, num_train: Any, num_val: Any, image_size: Any, seed: Any,
              class_ratios: Sequence[float] | None) -> tuple[dict, np.ndarray | None]:
    """(the manifest of the set these parameters make, the train class probabilities), checked."""
    check_parameters(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed)
    params = {"generator": "shapes", "version": GENERATOR_VERSION, "num_train": num_train,
              "num_val": num_val, "image_size": image_size, "seed": seed}
    probs = class_probabilities(class_ratios)
    if probs is not None:  # balanced sets keep the manifest (and files) they always had
        params["class_ratios"] = [float(r) for r in class_ratios]
    return params, probs


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

    The parameters are checked first (`check_parameters`, the free disk space). The set is built
    in a temporary sibling folder and moved into place, so an interrupted run leaves no
    half-written dataset. An existing `root` is replaced only by removing the files of the
    generator's earlier set there (see the module docstring): a folder holding anything else is
    refused. Generating logs a WARNING with the absolute path: a mistyped root makes a new set,
    where the user meant an existing one.

    Returns:
        `root` as a Path.

    Raises:
        DatasetError: a parameter out of range, too little disk space, or a `root` it may not
            replace; one line each.
    """
    root = Path(root)
    params, probs = _manifest(num_train=num_train, num_val=num_val, image_size=image_size,
                              seed=seed, class_ratios=class_ratios)
    found = read_manifest(root)
    if found == params:
        return root
    if root.exists() or root.is_symlink():
        replaceable(root)  # refused before any time is spent generating
    check_free_space(root, num_train + num_val, image_size)
    # a first run's generation is information; replacing a set made otherwise deserves a warning
    log.log(logging.INFO if found is None else logging.WARNING,
            "generating the shapes dataset in %s (%d train + %d val images, %d px): %s; if you "
            "meant an existing set, check the dataset root", root.resolve(), num_train, num_val,
            image_size, "there is none there yet" if found is None else
            "the set there was made with other parameters, it is replaced")
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}{TMP_MARK}{os.getpid()}-", dir=root.parent))
    try:  # the manifest first: it tells a later run what this folder may hold
        (tmp / "manifest.json").write_text(json.dumps(params, indent=1))
        (tmp / "annotations").mkdir()
        for split, count in zip(SPLITS, (num_train, num_val), strict=True):
            _write_split(tmp, split, count, seed=seed, image_size=image_size,
                         class_probs=probs if split == "train" else None)
        move_into_place(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own fresh folder (gone once moved)
    return root


def _differences(found: dict, params: dict) -> str:
    keys = dict.fromkeys([*params, "class_ratios"])
    return ", ".join(key for key in keys if found.get(key) != params.get(key))


def require_shapes_dataset(
    *,
    root: str | Path = "datasets/shapes",
    num_train: int = 600,
    num_val: int = 150,
    image_size: int = 128,
    seed: int = 0,
    class_ratios: Sequence[float] | None = None,
) -> Path:
    """`root`, if the set these parameters describe is there (its manifest says so); nothing
    is written, generated or removed.

    Raises:
        DatasetError: a parameter out of range, or no such set at `root` (one line that says
            how to make it).
    """
    root = Path(root)
    params, _ = _manifest(num_train=num_train, num_val=num_val, image_size=image_size,
                          seed=seed, class_ratios=class_ratios)
    found = read_manifest(root)
    if found == params:
        return root
    what = ("there is none there" if found is None else
            f"the set there differs in {_differences(found, params)}")
    ratios = "" if "class_ratios" not in params else (
        f" 'dataset.class_ratios={params['class_ratios']}'")
    raise DatasetError(f"the shapes dataset described ({num_train} + {num_val} images of "
                       f"{image_size} px) is not at {root} ({what}); a description never "
                       f"generates data: make it with dataset=shapes dataset.root={root} "
                       f"dataset.num_train={num_train} dataset.num_val={num_val} "
                       f"dataset.image_size={image_size}{ratios} (generated there if absent), "
                       f"or train once with that root")


class ShapesDetection(CocoDetection):
    """The shapes dataset, generated on first use, read through the ordinary COCO code path.

    Args:
        root: where the set lives (generated there if absent or made with other parameters).
        split: ``"train"`` or ``"val"``.
        num_train, num_val, image_size, seed, class_ratios: generator parameters (see
            `generate_shapes_dataset`; ranges in `LIMITS`).
        generate: make the set when it is not there as described (False: it must be, see
            `require_shapes_dataset`; nothing is written). A checkpoint's description is always
            built with False (`existing_shapes_dataset`).
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
        generate: bool = True,
        transforms: DetectionTransforms | None = None,
        keep_empty: bool = True,
        on_bad: OnBad = "error",
    ) -> None:
        if not isinstance(split, str) or split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {shown(split)}")
        make = generate_shapes_dataset if generate is True else require_shapes_dataset
        make(root=root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
             class_ratios=class_ratios)
        super().__init__(root=root, split=split, transforms=transforms, keep_empty=keep_empty,
                         on_bad=on_bad)


def existing_shapes_dataset(**kwargs: Any) -> ShapesDetection:
    """``ShapesDetection(**kwargs, generate=False)``: the set must already be there as
    described; nothing is written. ``kwargs`` cannot switch generation on (a ``generate`` key is
    refused). The constructor a checkpoint's ``detector.data.ShapesDetection`` stands for."""
    if "generate" in kwargs:
        raise DatasetError("a shapes dataset description may not set generate: a description "
                           "never generates data")
    return ShapesDetection(**kwargs, generate=False)
