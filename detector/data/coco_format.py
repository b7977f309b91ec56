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
from pycocotools.coco import COCO

from detector.data.image_io import read_image_rgb
from detector.data.report import DataReport, DatasetError


def load_coco_json(path: str | Path) -> dict:
    """Read and validate a COCO instances JSON file.

    Raises:
        DatasetError: missing, empty or malformed file, or one that fails `validate_coco_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DatasetError(f"annotation file {path} is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"annotation file {path} is not valid JSON: {err}") from err
    validate_coco_dict(data, source=str(path))
    return data


def _duplicates(values: list) -> list:
    return sorted(v for v, n in Counter(values).items() if n > 1)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_coco_dict(data: object, *, source: str) -> None:
    """Check the structure: required keys, non-empty image list, unique ids.

    Raises:
        DatasetError: naming `source` and the offending ids.
    """
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise DatasetError(f"{source}: not a COCO instances file (needs 'images' and 'categories')")
    if not data["images"]:
        raise DatasetError(f"{source}: contains no images")
    if not data["categories"]:
        raise DatasetError(f"{source}: contains no categories")
    for key, items in (("images", data["images"]), ("categories", data["categories"])):
        missing = [i for i, item in enumerate(items) if "id" not in item]
        if missing:
            raise DatasetError(f"{source}: {key} without an 'id' at positions {missing[:5]}")
    for key in ("images", "categories", "annotations"):
        dups = _duplicates([item.get("id") for item in data.get(key, [])])
        if dups:
            raise DatasetError(f"{source}: duplicate {key[:-1]} ids {dups[:10]}")
    for image in data["images"]:
        if "file_name" not in image or "width" not in image or "height" not in image:
            raise DatasetError(f"{source}: image id {image['id']} lacks file_name/width/height")
        if not (_positive_int(image["width"]) and _positive_int(image["height"])):
            raise DatasetError(f"{source}: image id {image['id']} has an invalid size "
                               f"{image['width']!r} x {image['height']!r}")


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


def _annotation_problem(ann: dict, image_ids: set, cat_ids: set) -> tuple[str, str] | None:
    """(kind, reason) if the annotation cannot be used at all, else None."""
    if ann.get("image_id") not in image_ids:
        return "bad_annotation", f"refers to unknown image id {ann.get('image_id')}"
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "bad_annotation", f"has no valid 'bbox' (got {bbox!r})"
    if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox):
        return "bad_annotation", f"has a non-finite bbox {bbox}"
    if ann.get("category_id") not in cat_ids:
        return "unknown_category", f"has category id {ann.get('category_id')} not in the class list"
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
            report.bad(problem[0], f"{source}: annotation id {ann.get('id')} {problem[1]}")
    xywh = np.array([a["bbox"] for a in usable], dtype=np.float64).reshape(-1, 4)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
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
