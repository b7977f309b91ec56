"""The map-style detection dataset every format shares: a cleaned COCO dict in, samples out.

Shorthand: N boxes of one image, K classes. A sample is
``{"image": FloatTensor[3, h, w] (normalised RGB), "boxes": FloatTensor[N, 4] (xyxy, resized
pixels), "labels": LongTensor[N] (1..K), "image_id": int, "orig_size": (h, w), "scale": (sy, sx)}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from detector.data.coco_format import category_maps, clean_coco_dict, index_coco
from detector.data.image_io import read_image_rgb
from detector.data.report import DataReport, DatasetError
from detector.data.transforms import DetectionTransforms, build_transforms
from detector.ops.boxes import xywh_to_xyxy


@dataclass(frozen=True)
class ImageRecord:
    """One image and its training targets, in original pixels."""

    image_id: int
    path: Path
    height: int
    width: int
    boxes: np.ndarray  # float32[N, 4] xyxy
    labels: np.ndarray  # int64[N] 1..K


def _is_training_target(ann: dict, use_difficult: bool) -> bool:
    if ann.get("difficult", 0):
        return use_difficult
    return not ann.get("iscrowd", 0)


def _count_ignored(anns: list[dict], report: DataReport) -> None:
    report.count("difficult_box", sum(1 for a in anns if a.get("difficult", 0)))
    report.count("crowd_box", sum(1 for a in anns if a["iscrowd"] and not a.get("difficult", 0)))


def build_records(
    coco, *, image_dir: Path, cat_id_to_label: dict[int, int], report: DataReport,
    keep_empty: bool, use_difficult: bool,
) -> list[ImageRecord]:
    """Training targets per image, in the order of ``coco.dataset["images"]``."""
    records = []
    for image in coco.dataset["images"]:
        anns = coco.imgToAnns.get(image["id"], [])
        _count_ignored(anns, report)
        targets = [a for a in anns if _is_training_target(a, use_difficult)]
        if not targets and not keep_empty:
            report.count("empty_image_filtered")
            continue
        xywh = np.array([a["bbox"] for a in targets], dtype=np.float32).reshape(-1, 4)
        boxes = xywh_to_xyxy(torch.from_numpy(xywh)).numpy()
        labels = np.array([cat_id_to_label[a["category_id"]] for a in targets], dtype=np.int64)
        records.append(ImageRecord(int(image["id"]), image_dir / image["file_name"],
                                   int(image["height"]), int(image["width"]), boxes, labels))
    return records


class DetectionDataset(Dataset):
    """Detection samples from a COCO-format dict (see the module docstring for one sample).

    Subclasses (`CocoDetection`, `VocDetection`, `ShapesDetection`) only produce the dict.

    Attributes:
        coco: pycocotools `COCO` ground truth, original pixels and category ids; crowd and
            difficult boxes carry ``iscrowd=1`` so COCOeval ignores them.
        class_names: K names; label l is ``class_names[l - 1]``.
        cat_id_to_label, label_to_cat_id: the category id <-> contiguous label maps.
        report: counters of skipped/dropped/clipped inputs (`DataReport`).
    """

    def __init__(
        self,
        *,
        coco_dict: dict,
        image_dir: str | Path,
        report: DataReport,
        transforms: DetectionTransforms | None = None,
        keep_empty: bool = True,
        use_difficult: bool = False,
        min_box_size: float = 1.0,
        verify_images: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.report = report
        self.transforms = transforms if transforms is not None else build_transforms(
            train=False, min_size=None)
        cleaned = clean_coco_dict(coco_dict, image_dir=self.image_dir, report=report,
                                  min_box_size=min_box_size, verify_images=verify_images,
                                  source=report.name)
        self.coco = index_coco(cleaned)
        self.class_names, self.cat_id_to_label, self.label_to_cat_id = category_maps(
            cleaned["categories"])
        self.records = build_records(self.coco, image_dir=self.image_dir,
                                     cat_id_to_label=self.cat_id_to_label, report=report,
                                     keep_empty=keep_empty, use_difficult=use_difficult)
        if not self.records:
            raise DatasetError(f"{report.name}: no usable images left\n{report.summary()}")

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes."""
        return len(self.class_names)

    @property
    def image_ids(self) -> list[int]:
        """The image ids this dataset yields, in index order (restrict evaluation to these)."""
        return [r.image_id for r in self.records]

    def image_aspect_ratios(self) -> torch.Tensor:
        """FloatTensor[len(self)]: width / height of each original image, from the annotations."""
        return torch.tensor([r.width / r.height for r in self.records], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        """Sample `index`; under ``on_bad="skip"`` an unreadable image yields the next good one."""
        if not -len(self.records) <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} images")
        for offset in range(len(self.records)):
            try:
                return self._load((index + offset) % len(self.records))
            except DatasetError as err:
                self.report.bad(err.kind, str(err))
        raise DatasetError(f"{self.report.name}: no image of the dataset could be read")

    def _load(self, index: int) -> dict:
        record = self.records[index]
        image = read_image_rgb(record.path)
        if image.shape[:2] != (record.height, record.width):
            raise DatasetError(
                f"image {record.path} (id {record.image_id}) is {image.shape[1]}x{image.shape[0]}"
                f" (w x h) but the annotation says {record.width}x{record.height}",
                kind="size_mismatch")
        out = self.transforms(image=image, boxes=record.boxes, labels=record.labels)
        return {
            "image": out["image"],
            "boxes": out["boxes"],
            "labels": out["labels"],
            "image_id": record.image_id,
            "orig_size": (record.height, record.width),
            "scale": out["scale"],
        }
