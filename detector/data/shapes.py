"""The embedded default dataset: procedurally generated coloured shapes, in COCO JSON layout.

Four classes (rectangle, ellipse, triangle, star) of varied size (1/4 to 5/8 of the image across:
32-80 px at 128 px), aspect, rotation and colour on textured, noisy backgrounds; 1-4 objects per
image with bounded overlap, some images empty.
Two optional parameters make other sets without changing this one (left at None, the set is
byte-identical to what it was before they existed): ``long_side_range`` draws each image's longer
side (non-square images, the shorter side ``image_size``) and ``class_sizes`` fixes a class's size
in pixels (e.g. a small star, ``experiment=ce_small_rare``).
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
from detector.data.shapes_render import CLASS_NAMES, class_probabilities, render_shapes_image
from detector.data.transforms import DetectionTransforms

GENERATOR_VERSION = 2  # 2: shapes at least a quarter of the image across (was an eighth)
# Ranges of the generator's parameters (inclusive), so that no description can fill a disk.
# For the list-valued long_side_range and class_sizes, the range of each element (pixels).
LIMITS: dict[str, tuple[int, int]] = {"num_train": (1, MAX_IMAGES), "num_val": (1, MAX_IMAGES),
                                      "image_size": (32, 2048), "seed": (0, 2**32 - 1),
                                      "long_side_range": (32, 2048), "class_sizes": (4, 2048)}
MAX_PIXELS = 2**31  # (num_train + num_val) * image_size * longest side: ~4 GB of PNG at ~2 B/px

log = logging.getLogger(__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _split_dict(images: list[dict], annotations: list[dict]) -> dict:
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"}
                  for i, n in enumerate(CLASS_NAMES)]
    return {"info": {"description": "detector synthetic shapes", "version": GENERATOR_VERSION},
            "images": images, "annotations": annotations, "categories": categories}


def _write_split(root: Path, split: str, count: int, *, seed: int,
                 class_probs: np.ndarray | None = None, **render: Any) -> None:
    """Render (`render_shapes_image` with `render`: image_size, long_side_range, class_sizes)
    and write `count` images of `split` with their COCO JSON."""
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        pixels, boxes, labels = render_shapes_image(rng, class_probs=class_probs, **render)
        name = f"{index:06d}.png"
        cv2.imwrite(str(root / split / name), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        height, width = pixels.shape[:2]
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        for box, label in zip(np.round(boxes, 2).tolist(), labels.tolist(), strict=True):
            w, h = round(box[2] - box[0], 2), round(box[3] - box[1], 2)
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": label, "bbox": [box[0], box[1], w, h],
                                "area": round(w * h, 2), "iscrowd": 0})
    with open(root / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(_split_dict(images, annotations), f)


def _pair(value: Any, low: int, high: int) -> list[int] | None:
    """`value` as ``[a, b]``, integers with low <= a <= b <= high; None if it is not one."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        return None
    a, b = value
    return [a, b] if _is_int(a) and _is_int(b) and low <= a <= b <= high else None


def _checked_sizes(image_size: int, long_side_range: Any,
                   class_sizes: Any) -> tuple[list[int] | None, list | None]:
    """`long_side_range` and `class_sizes` as plain lists (class_sizes of all None: None), or
    `DatasetError`: a longer side is at least `image_size`, a shape fits the shorter side."""
    longest = LIMITS["long_side_range"][1]
    lengths = None if long_side_range is None else _pair(long_side_range, image_size, longest)
    if long_side_range is not None and lengths is None:
        raise DatasetError(f"shapes dataset long_side_range must be null or [low, high], "
                           f"integers with image_size {image_size} <= low <= high <= {longest}, "
                           f"got {shown(long_side_range)}")
    if class_sizes is None:
        return lengths, None
    smallest = LIMITS["class_sizes"][0]
    entries = None
    if (not isinstance(class_sizes, str | bytes) and isinstance(class_sizes, Sequence)
            and len(class_sizes) == len(CLASS_NAMES)):
        entries = [None if given is None else _pair(given, smallest, image_size)
                   for given in class_sizes]
    if entries is None or any(e is None and given is not None
                              for e, given in zip(entries, class_sizes, strict=True)):
        raise DatasetError(f"shapes dataset class_sizes must be null or {len(CLASS_NAMES)} "
                           f"entries ({', '.join(CLASS_NAMES)}), each null or [low, high], "
                           f"integers with {smallest} <= low <= high <= image_size "
                           f"{image_size}, got {shown(class_sizes)}")
    return lengths, None if all(e is None for e in entries) else entries


def check_parameters(*, num_train: Any, num_val: Any, image_size: Any, seed: Any,
                     long_side_range: Any = None,
                     class_sizes: Any = None) -> tuple[list[int] | None, list | None]:
    """Raise `DatasetError` (one line, naming the parameter) unless each is an integer in its
    `LIMITS` range, `long_side_range` and `class_sizes` are None or as `render_shapes_image`
    takes them (elements in their `LIMITS` range) and the set holds at most `MAX_PIXELS` pixels.

    Returns:
        (long_side_range, class_sizes) as plain lists, None where they leave the set as it is.
    """
    values = {"num_train": num_train, "num_val": num_val, "image_size": image_size, "seed": seed}
    for name, value in values.items():
        low, high = LIMITS[name]
        if not (_is_int(value) and low <= value <= high):
            raise DatasetError(f"shapes dataset {name} must be an integer in [{low}, {high}], "
                               f"got {shown(value)}")
    lengths, sizes = _checked_sizes(image_size, long_side_range, class_sizes)
    if (num_train + num_val) * image_size * (lengths or [image_size])[-1] > MAX_PIXELS:
        raise DatasetError(f"shapes dataset of {_described(num_train, num_val, image_size, lengths)}"
                           f" is too large (at most {MAX_PIXELS} pixels in all)")
    return lengths, sizes


def _described(num_train: int, num_val: int, image_size: int, lengths: list[int] | None) -> str:
    """"600 + 150 images of 128 px" (or "of 128 x 128-320 px")."""
    sides = f"{image_size}" if lengths is None else f"{image_size} x {lengths[0]}-{lengths[1]}"
    return f"{num_train} + {num_val} images of {sides} px"


_OPTIONAL = ("class_ratios", "long_side_range", "class_sizes")  # in a manifest only when set


def _manifest(*, num_train: Any, num_val: Any, image_size: Any, seed: Any,
              class_ratios: Sequence[float] | None, long_side_range: Any = None,
              class_sizes: Any = None) -> tuple[dict, np.ndarray | None, dict]:
    """(the manifest of the set these parameters make, the train class probabilities, the
    rendering parameters of `_write_split`), checked."""
    lengths, sizes = check_parameters(num_train=num_train, num_val=num_val, image_size=image_size,
                                      seed=seed, long_side_range=long_side_range,
                                      class_sizes=class_sizes)
    params = {"generator": "shapes", "version": GENERATOR_VERSION, "num_train": num_train,
              "num_val": num_val, "image_size": image_size, "seed": seed}
    probs = class_probabilities(class_ratios)
    # sets made without a parameter keep the manifest (and files) they always had
    if probs is not None:
        params["class_ratios"] = [float(r) for r in class_ratios]
    if lengths is not None:
        params["long_side_range"] = lengths
    if sizes is not None:
        params["class_sizes"] = sizes
    return params, probs, {"image_size": image_size, "long_side_range": lengths,
                           "class_sizes": sizes}


def generate_shapes_dataset(
    *,
    root: str | Path = "datasets/shapes",
    num_train: int = 600,
    num_val: int = 150,
    image_size: int = 128,
    seed: int = 0,
    class_ratios: Sequence[float] | None = None,
    long_side_range: Sequence[int] | None = None,
    class_sizes: Sequence[Sequence[int] | None] | None = None,
) -> Path:
    """Write the shapes dataset under `root` unless it is already there with these parameters.

    ``class_ratios``: relative frequency of each shape in the train split (None: balanced; see
    `class_probabilities`); the val split is always balanced. ``long_side_range`` ([low, high]
    px, low >= image_size): each image's longer side, drawn per image, its shorter side
    `image_size` (None: square). ``class_sizes`` (one [low, high] or None per shape): the range
    of a shape's box's longer side in pixels, in both splits (None: 1/4-5/8 of `image_size`
    across). See `render_shapes_image`; a parameter left at None leaves the set as it was.

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
    params, probs, render = _manifest(
        num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
        class_ratios=class_ratios, long_side_range=long_side_range, class_sizes=class_sizes)
    found = read_manifest(root)
    if found == params:
        return root
    if root.exists() or root.is_symlink():
        replaceable(root)  # refused before any time is spent generating
    lengths = render["long_side_range"]
    check_free_space(root, num_train + num_val, image_size, lengths and lengths[-1])
    # a first run's generation is information; replacing a set made otherwise deserves a warning
    log.log(logging.INFO if found is None else logging.WARNING,
            "generating the shapes dataset in %s (%s): %s; if you meant an existing set, check "
            "the dataset root", root.resolve(), _described(num_train, num_val, image_size, lengths),
            "there is none there yet" if found is None else
            "the set there was made with other parameters, it is replaced")
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}{TMP_MARK}{os.getpid()}-", dir=root.parent))
    try:  # the manifest first: it tells a later run what this folder may hold
        (tmp / "manifest.json").write_text(json.dumps(params, indent=1))
        (tmp / "annotations").mkdir()
        for split, count in zip(SPLITS, (num_train, num_val), strict=True):
            _write_split(tmp, split, count, seed=seed,
                         class_probs=probs if split == "train" else None, **render)
        move_into_place(tmp, root, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own fresh folder (gone once moved)
    return root


def _differences(found: dict, params: dict) -> str:
    keys = dict.fromkeys([*params, *_OPTIONAL])
    return ", ".join(key for key in keys if found.get(key) != params.get(key))


def require_shapes_dataset(
    *,
    root: str | Path = "datasets/shapes",
    num_train: int = 600,
    num_val: int = 150,
    image_size: int = 128,
    seed: int = 0,
    class_ratios: Sequence[float] | None = None,
    long_side_range: Sequence[int] | None = None,
    class_sizes: Sequence[Sequence[int] | None] | None = None,
) -> Path:
    """`root`, if the set these parameters describe is there (its manifest says so); nothing
    is written, generated or removed.

    Raises:
        DatasetError: a parameter out of range, or no such set at `root` (one line that says
            how to make it).
    """
    root = Path(root)
    params, _, render = _manifest(
        num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
        class_ratios=class_ratios, long_side_range=long_side_range, class_sizes=class_sizes)
    found = read_manifest(root)
    if found == params:
        return root
    what = ("there is none there" if found is None else
            f"the set there differs in {_differences(found, params)}")
    extra = "".join(f" 'dataset.{key}={json.dumps(params[key], separators=(',', ':'))}'"
                    for key in _OPTIONAL if key in params)
    raise DatasetError(f"the shapes dataset described ("
                       f"{_described(num_train, num_val, image_size, render['long_side_range'])}"
                       f") is not at {root} ({what}); a description never "
                       f"generates data: make it with dataset=shapes dataset.root={root} "
                       f"dataset.num_train={num_train} dataset.num_val={num_val} "
                       f"dataset.image_size={image_size}{extra} (generated there if absent), "
                       f"or train once with that root")


class ShapesDetection(CocoDetection):
    """The shapes dataset, generated on first use, read through the ordinary COCO code path.

    Args:
        root: where the set lives (generated there if absent or made with other parameters).
        split: ``"train"`` or ``"val"``.
        num_train, num_val, image_size, seed, class_ratios, long_side_range, class_sizes:
            generator parameters (see `generate_shapes_dataset`; ranges in `LIMITS`).
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
        long_side_range: Sequence[int] | None = None,
        class_sizes: Sequence[Sequence[int] | None] | None = None,
        generate: bool = True,
        transforms: DetectionTransforms | None = None,
        keep_empty: bool = True,
        on_bad: OnBad = "error",
    ) -> None:
        if not isinstance(split, str) or split not in SPLITS:
            raise DatasetError(f"split must be one of {SPLITS}, got {shown(split)}")
        make = generate_shapes_dataset if generate is True else require_shapes_dataset
        make(root=root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
             class_ratios=class_ratios, long_side_range=long_side_range, class_sizes=class_sizes)
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
