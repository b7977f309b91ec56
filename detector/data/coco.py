"""COCO JSON datasets, official layout: ``annotations/instances_<split>.json`` + ``<split>/``."""

from __future__ import annotations

from pathlib import Path

from detector.data.coco_format import load_coco_json
from detector.data.dataset import DetectionDataset
from detector.data.report import DataReport, DatasetError, OnBad, shown
from detector.data.transforms import DetectionTransforms


def checked_path(value: object, name: str, *, optional: bool = True) -> Path | None:
    """``value`` as a Path: a non-empty str or Path without NUL (None when ``optional``).

    Raises:
        DatasetError: ``<name> must be a path, got ...``.
    """
    if value is None and optional:
        return None
    if isinstance(value, Path):
        value = str(value)
    if not (isinstance(value, str) and 0 < len(value) <= 4096 and "\x00" not in value):
        raise DatasetError(f"{name} must be a path, got {shown(value)}")
    return Path(value)


class CocoDetection(DetectionDataset):
    """A COCO instances file and its image folder.

    COCO's non-contiguous category ids become labels 1..K in increasing id order
    (`cat_id_to_label` / `label_to_cat_id`); `coco` keeps the original ids for evaluation.
    ``iscrowd`` boxes are never training targets (COCOeval ignores them).

    Args:
        root: dataset folder.
        split: e.g. ``"train2017"``: reads ``annotations/instances_<split>.json`` and images
            from ``<split>/``.
        ann_file, image_dir: override those two paths (relative paths are taken from `root`).
        transforms: a `DetectionTransforms` pipeline (default: normalise only, original size).
        keep_empty: keep images without training boxes, as negatives.
        on_bad: ``"error"`` (raise `DatasetError`) or ``"skip"`` (warn, count, skip) for missing
            or unreadable images, size mismatches and unknown categories.
        min_box_size: boxes narrower or shorter than this many pixels are dropped and counted.
        verify_images: decode every image up front, so bad files are found before training.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str = "train2017",
        ann_file: str | Path | None = None,
        image_dir: str | Path | None = None,
        transforms: DetectionTransforms | None = None,
        keep_empty: bool = True,
        on_bad: OnBad = "error",
        min_box_size: float = 1.0,
        verify_images: bool = False,
    ) -> None:
        root = checked_path(root, "root", optional=False)
        checked_path(split, "split", optional=False)
        ann_file, image_dir = checked_path(ann_file, "ann_file"), checked_path(image_dir,
                                                                               "image_dir")
        self.root = root
        self.split = split
        ann_path = root / (ann_file if ann_file is not None else
                           Path("annotations") / f"instances_{split}.json")
        report = DataReport(on_bad=on_bad, name=str(ann_path))
        super().__init__(
            coco_dict=load_coco_json(ann_path),
            image_dir=root / (image_dir if image_dir is not None else split),
            report=report,
            transforms=transforms,
            keep_empty=keep_empty,
            min_box_size=min_box_size,
            verify_images=verify_images,
        )
