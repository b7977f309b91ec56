"""Factories for tiny COCO / VOC datasets in tmp_path (including deliberately broken ones)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

import detector.data  # noqa: F401  (before any test imports albumentations: no update check)


def write_image(path: Path, height: int, width: int, color=(90, 120, 150), channels: int = 3):
    """Write a solid-colour image (RGB `color`; 1 or 4 channels also possible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[:] = color
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if channels == 1:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    elif channels == 4:
        bgr = np.concatenate([bgr, np.full((height, width, 1), 128, np.uint8)], axis=2)
    assert cv2.imwrite(str(path), bgr)
    return path


def coco_image(image_id: int, height: int = 30, width: int = 40, name: str | None = None) -> dict:
    return {"id": image_id, "file_name": name or f"{image_id:04d}.png", "height": height,
            "width": width}


def coco_ann(ann_id: int, image_id: int, bbox, category_id: int = 3, iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
            "area": float(bbox[2] * bbox[3]), "iscrowd": iscrowd}


CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]


@pytest.fixture
def make_coco(tmp_path):
    """make_coco(images, annotations, categories=CATEGORIES, split="train", skip_files=())."""

    def _make(images, annotations, categories=CATEGORIES, split="train", skip_files=()):
        root = tmp_path / "coco"
        for image in images:
            if image["file_name"] not in skip_files:
                write_image(root / split / image["file_name"], image["height"], image["width"])
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        return root

    return _make


def voc_xml(filename: str, width: int, height: int, objects) -> str:
    """VOC XML text; objects are (name, xmin, ymin, xmax, ymax, difficult)."""
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2, d in objects)
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation><filename>{filename}</filename>{size}{body}</annotation>"


@pytest.fixture
def make_voc(tmp_path):
    """make_voc({stem: (width, height, objects)}, splits={name: [stems]}) -> standard VOC root."""

    def _make(entries: dict, splits: dict | None = None):
        root = tmp_path / "VOC"
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        for stem, (width, height, objects) in entries.items():
            write_image(root / "JPEGImages" / f"{stem}.png", height, width)
            (root / "Annotations" / f"{stem}.xml").write_text(
                voc_xml(f"{stem}.png", width, height, objects))
        for name, stems in (splits or {}).items():
            (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (root / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(stems) + "\n")
        return root

    return _make


@pytest.fixture
def helpers():
    """The module's helper functions (test modules cannot import conftest under importlib mode)."""
    return SimpleNamespace(write_image=write_image, coco_image=coco_image, coco_ann=coco_ann,
                           voc_xml=voc_xml, categories=CATEGORIES)
