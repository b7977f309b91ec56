"""The COCO-format annotation dict: load, validate, clean, index, and map categories.

Every dataset format (COCO JSON, Pascal VOC XML, the generated shapes set) becomes one of these
dicts, is cleaned by `clean_coco_dict` (the one place where bad boxes and missing images are
handled) and indexed as a pycocotools `COCO` object that serves as the evaluation ground truth.
Boxes here are COCO ``[x, y, w, h]`` in original-image pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from detector.data.image_io import read_image_rgb
from detector.data.report import DataReport, DatasetError, shown
from detector.ops.boxes import xywh_to_xyxy

MAX_ANNOTATION_BYTES = 4 * 2**30  # an instances file (COCO train2017's is 448 MB)
MAX_ID = 2**53  # image and annotation ids (JSON's exact integers)
MAX_CATEGORY_ID = 10**9 - 1  # category ids: what a checkpoint's label_to_cat_id may hold
MAX_IMAGE_SIDE = 10**6  # px of an image's width or height in an annotation
_MAX_TEXT = 4096  # characters of a file name or a class name


def load_coco_json(path: str | Path) -> dict:
    """Read and validate a COCO instances file.

    Raises:
        DatasetError: missing, empty, too large, not UTF-8, malformed or too deeply nested
            JSON, or one that fails `validate_coco_dict`; one line naming the file (and key).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist" if not path.exists() else
                           f"annotation file {path} is not a regular file")
    if path.stat().st_size > MAX_ANNOTATION_BYTES:
        raise DatasetError(f"annotation file {path} is larger than {MAX_ANNOTATION_BYTES} bytes")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"annotation file {path} is not UTF-8 text (byte {err.start})"
                           ) from None
    if not text.strip():
        raise DatasetError(f"annotation file {path} is empty")
    try:
        data = json.loads(text)
    except RecursionError:
        raise DatasetError(f"annotation file {path} is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, or an integer past 4,300 digits
        raise DatasetError(f"annotation file {path} is not valid JSON: "
                           f"{str(err).splitlines()[0][:200]}") from None
    validate_coco_dict(data, source=str(path))
    return data


def _duplicates(values: list) -> list:
    return sorted(v for v, n in Counter(values).items() if n > 1)


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _positive_int(value: object) -> bool:
    return _int_in(value, 1, MAX_IMAGE_SIDE)


def _is_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_TEXT and "\x00" not in value


def _records(data: dict, key: str, source: str, *, required: bool) -> list:
    """``data[key]``: a list of dicts (non-empty when ``required``)."""
    items = data.get(key, [] if not required else None)
    if not isinstance(items, list):
        raise DatasetError(f"{source}: '{key}' must be a list, got {shown(items)}")
    if required and not items:
        raise DatasetError(f"{source}: contains no {key}")
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise DatasetError(f"{source}: {key}[{index}] must be an object, got {shown(item)}")
        if "id" not in item:
            raise DatasetError(f"{source}: {key} without an 'id' at positions "
                               f"{[i for i, it in enumerate(items) if 'id' not in it][:5]}")
    return items


def _check_field(ok: bool, source: str, where: str, what: str, value: object) -> None:
    if not ok:
        raise DatasetError(f"{source}: {where} must be {what}, got {shown(value)}")


def validate_coco_dict(data: object, *, source: str) -> None:
    """Check the structure: required keys, types and ranges of the fields read, unique ids.

    ``images``, ``categories`` (non-empty) and ``annotations`` are lists of objects; image and
    annotation ids integers in [0, 2**53], category ids in [0, 10**9); an image has a
    ``file_name`` (a non-empty string, no NUL) and a ``width``/``height`` in [1, 10**6]; a
    category's ``name`` is a string or number. An annotation's other fields are checked, and a
    bad one dropped through the report, by `clean_coco_dict`.

    Raises:
        DatasetError: naming `source`, the key (e.g. ``images[3].file_name``) and its value.
    """
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise DatasetError(f"{source}: not a COCO instances file (needs 'images' and 'categories')")
    images = _records(data, "images", source, required=True)
    categories = _records(data, "categories", source, required=True)
    annotations = _records(data, "annotations", source, required=False)
    for key, items, high in (("images", images, MAX_ID), ("annotations", annotations, MAX_ID),
                             ("categories", categories, MAX_CATEGORY_ID)):
        for index, item in enumerate(items):
            _check_field(_int_in(item["id"], 0, high), source, f"{key}[{index}].id",
                         f"an integer in [0, {high}]", item["id"])
        dups = _duplicates([item["id"] for item in items])
        if dups:
            raise DatasetError(f"{source}: duplicate {key[:-1]} ids {dups[:10]}")
    for index, category in enumerate(categories):
        name = category.get("name")
        _check_field(_is_text(name) or (isinstance(name, int | float) and not isinstance(
            name, bool)), source, f"categories[{index}].name", "a string", name)
    for image in images:
        if "file_name" not in image or "width" not in image or "height" not in image:
            raise DatasetError(f"{source}: image id {image['id']} lacks file_name/width/height")
        _check_field(_is_text(image["file_name"]), source, f"image id {image['id']} file_name",
                     f"a non-empty string of at most {_MAX_TEXT} characters", image["file_name"])
        if not (_positive_int(image["width"]) and _positive_int(image["height"])):
            raise DatasetError(f"{source}: image id {image['id']} has an invalid size "
                               f"{shown(image['width'])} x {shown(image['height'])}")


def index_coco(data: dict) -> COCO:
    """A pycocotools `COCO` object over an in-memory dict (without its console chatter)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def category_maps(categories: list[dict]) -> tuple[list[str], dict[int, int], dict[int, int]]:
    """Contiguous labels 1..K for COCO category ids, in increasing id order.

    Returns:
        (class_names, cat_id_to_label, label_to_cat_id); label l names class_names[l - 1].
    """
    ordered = sorted(categories, key=lambda c: c["id"])
    cat_id_to_label = {int(c["id"]): i + 1 for i, c in enumerate(ordered)}
    label_to_cat_id = {label: cat_id for cat_id, label in cat_id_to_label.items()}
    return [str(c["name"]) for c in ordered], cat_id_to_label, label_to_cat_id


def _check_image(image: dict, path: Path, report: DataReport, verify: bool, source: str) -> bool:
    """Whether the image may be used; problems go to the report."""
    where = f"{source}: image file {path} (image id {image['id']})"
    if not path.is_file():
        report.bad("missing_image", f"{where} does not exist")
        return False
    if not verify:
        return True
    try:
        pixels = read_image_rgb(path)
    except DatasetError as err:
        report.bad(err.kind, f"{source}: image id {image['id']}: {err}")
        return False
    if pixels.shape[:2] != (image["height"], image["width"]):
        report.bad("size_mismatch", f"{where} is {pixels.shape[1]}x{pixels.shape[0]} (w x h) "
                   f"but the annotation says {image['width']}x{image['height']}")
        return False
    return True


_MAX_COORDINATE = 1e9  # px: a bbox value past this is no box


def _finite(value: object) -> bool:
    """A real number (not a bool) of at most 1e9 in size: compared before any float() that
    an integer past 1e308 would overflow."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and -_MAX_COORDINATE <= value <= _MAX_COORDINATE)


def _annotation_problem(ann: dict, image_ids: set, cat_ids: set) -> tuple[str, str] | None:
    """(kind, reason) if the annotation cannot be used at all, else None."""
    image_id, category_id = ann.get("image_id"), ann.get("category_id")
    if not _int_in(image_id, 0, MAX_ID) or image_id not in image_ids:
        return "bad_annotation", f"refers to unknown image id {shown(image_id)}"
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "bad_annotation", f"has no valid 'bbox' (got {shown(bbox)})"
    if not all(_finite(v) for v in bbox):
        return "bad_annotation", f"has a non-finite bbox {shown(bbox)}"
    if not _int_in(category_id, 0, MAX_CATEGORY_ID) or category_id not in cat_ids:
        return ("unknown_category",
                f"has category id {shown(category_id)} not in the class list")
    if ann.get("iscrowd", 0) not in (0, 1):
        return "bad_annotation", f"has an invalid iscrowd {shown(ann.get('iscrowd'))} (0 or 1)"
    if "area" in ann and not _finite(ann["area"]):
        return "bad_annotation", f"has an invalid area {shown(ann['area'])}"
    return None


def clip_and_filter_boxes(
    boxes: np.ndarray, sizes: np.ndarray, *, min_size: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xyxy boxes to their images and flag the degenerate ones.

    Args:
        boxes (ndarray[N, 4]): xyxy pixels.
        sizes (ndarray[N, 2]): (h, w) of each box's image.
        min_size: boxes narrower or shorter than this (after clipping) are degenerate.

    Returns:
        (clipped ndarray[N, 4], was_clipped bool[N], keep bool[N]).
    """
    upper = np.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], axis=1)
    clipped = np.clip(boxes, 0.0, upper)
    was_clipped = np.any(clipped != boxes, axis=1)
    wh = clipped[:, 2:] - clipped[:, :2]
    keep = np.all(wh >= min_size, axis=1)
    return clipped, was_clipped, keep


def _clean_annotations(
    data: dict, kept_images: list[dict], report: DataReport, min_box_size: float, source: str
) -> list:
    """Annotations of the kept images, clipped, without unusable or degenerate ones."""
    all_ids = {image["id"] for image in data["images"]}
    images = {image["id"]: image for image in kept_images}
    cat_ids = {c["id"] for c in data["categories"]}
    usable = []
    for ann in data.get("annotations", []):
        problem = _annotation_problem(ann, all_ids, cat_ids)
        if problem is None:
            if ann["image_id"] in images:  # else its image was skipped (and counted) already
                usable.append(ann)
        else:
            report.bad(problem[0], f"{source}: annotation id {shown(ann.get('id'))} {problem[1]}")
    xywh = np.array([a["bbox"] for a in usable], dtype=np.float64).reshape(-1, 4)
    xyxy = xywh_to_xyxy(torch.from_numpy(xywh)).numpy()
    sizes = np.array([[images[a["image_id"]][k] for k in ("height", "width")] for a in usable],
                     dtype=np.float64).reshape(-1, 2)
    clipped, was_clipped, keep = clip_and_filter_boxes(xyxy, sizes, min_size=min_box_size)
    report.count("clipped_box", int(np.sum(was_clipped & keep)))
    report.count("degenerate_box", int(np.sum(~keep)))
    cleaned = []
    for ann, box, ok in zip(usable, clipped.tolist(), keep.tolist(), strict=True):
        if ok:
            w, h = box[2] - box[0], box[3] - box[1]
            cleaned.append({**ann, "bbox": [box[0], box[1], w, h], "area": ann.get("area", w * h),
                            "iscrowd": int(ann.get("iscrowd", 0))})
    return cleaned


def clean_coco_dict(
    data: dict,
    *,
    image_dir: str | Path,
    report: DataReport,
    min_box_size: float = 1.0,
    verify_images: bool = False,
    source: str = "annotations",
) -> dict:
    """A copy of a validated COCO dict with unusable images and annotations removed.

    Images: missing files (and, with `verify_images`, undecodable files or a pixel size that
    disagrees with the annotation) go through ``report.bad``. Annotations: unknown image or
    category, malformed bbox -> ``report.bad``; boxes partly outside the image are clipped and
    counted; boxes under `min_box_size` pixels wide or high after clipping are dropped and counted.
    Annotations get an ``iscrowd`` field (0 when absent) and keep ``area`` (``w * h`` when absent).
    """
    image_dir = Path(image_dir)
    images = [image for image in data["images"]
              if _check_image(image, image_dir / image["file_name"], report, verify_images, source)]
    annotations = _clean_annotations(data, images, report, min_box_size, source)
    return {**data, "images": images, "annotations": annotations}
