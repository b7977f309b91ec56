"""What an error analysis reads besides the run's own files, checked before use: the COCO
results a run's evaluation wrote and the annotation file its config names (both may come from
someone else), and where the files it opens may lie (under the dataset root only).

Each check returns the value or raises :class:`~detector.untrusted.RunFileError` naming
the file and the entry; the run is then listed as not analysed, with that reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from detector.study.run_checks import check_name
from detector.untrusted import RunFileError, finite_number, shown

__all__ = ["MAX_CATEGORIES", "MAX_ID", "check_coco", "check_results", "inside"]

MAX_ID = 2 ** 53  # image and category ids (int64, exact as floats)
MAX_CATEGORIES = 2000  # a confusion matrix of K + 1 squared cells


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < MAX_ID


def _box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(
        finite_number(v) is not None for v in value)


def _objects(value: Any, key: str, source: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise RunFileError(f"{source}: {key} is not a list of objects")
    return value


def check_results(value: Any, source: str) -> list[dict]:
    """COCO results: objects with integer ``image_id`` and ``category_id``, ``bbox`` (4 finite
    numbers, xywh) and a finite ``score``."""
    for n, det in enumerate(_objects(value, "the file", source)):
        if not (_integer(det.get("image_id")) and _integer(det.get("category_id"))
                and _box(det.get("bbox")) and finite_number(det.get("score")) is not None):
            raise RunFileError(f"{source}: detection {n} lacks an integer image_id/category_id, "
                               f"a bbox of 4 finite numbers or a finite score")
    return value


def check_coco(value: Any, source: str) -> dict:
    """A COCO instances dict as the analysis uses it: ``images`` (integer ``id``, string
    ``file_name``), ``annotations`` (integer ``id``, ``image_id``, ``category_id``, ``bbox`` and
    ``area`` finite) and ``categories`` (integer ``id``, a printable ``name``)."""
    if not isinstance(value, dict):
        raise RunFileError(f"{source}: not a COCO instances object")
    for image in _objects(value.get("images"), "'images'", source):
        if not (_integer(image.get("id")) and isinstance(image.get("file_name"), str)):
            raise RunFileError(f"{source}: an image lacks an integer id or a file_name")
    for ann in _objects(value.get("annotations"), "'annotations'", source):
        if not (all(_integer(ann.get(k)) for k in ("id", "image_id", "category_id"))
                and _box(ann.get("bbox")) and finite_number(ann.get("area")) is not None):
            raise RunFileError(f"{source}: annotation {shown(ann.get('id'), limit=20)} lacks "
                               f"integer ids, a bbox of 4 finite numbers or a finite area")
    categories = _objects(value.get("categories"), "'categories'", source)
    if len(categories) > MAX_CATEGORIES:
        raise RunFileError(f"{source}: more than {MAX_CATEGORIES} categories")
    for category in categories:
        if not _integer(category.get("id")):
            raise RunFileError(f"{source}: a category lacks an integer id")
        check_name(category.get("name"), "category name", source)
    return value


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links resolved, lies in the folder ``root`` (links resolved too); never
    for a path the OS cannot name (a NUL byte)."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError):
        return False
