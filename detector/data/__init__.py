"""Data layer: datasets (COCO JSON, Pascal VOC XML, generated shapes), transforms, batching."""

from detector.data.coco import CocoDetection
from detector.data.coco_format import category_maps, clean_coco_dict, index_coco, load_coco_json
from detector.data.collate import collate_batch
from detector.data.dataset import DetectionDataset
from detector.data.image_io import read_image_rgb
from detector.data.loader import build_dataloader, seed_worker
from detector.data.report import DataReport, DatasetError
from detector.data.samplers import AspectRatioGroupedBatchSampler
from detector.data.shapes import CLASS_NAMES as SHAPES_CLASS_NAMES
from detector.data.shapes import LIMITS as SHAPES_LIMITS
from detector.data.shapes import (
    ShapesDetection,
    existing_shapes_dataset,
    generate_shapes_dataset,
    require_shapes_dataset,
)
from detector.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DetectionTransforms,
    boxes_to_original,
    build_transforms,
    resize_scale,
)
from detector.data.voc import VocDetection, load_voc_as_coco, parse_voc_xml

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SHAPES_CLASS_NAMES",
    "SHAPES_LIMITS",
    "AspectRatioGroupedBatchSampler",
    "CocoDetection",
    "DataReport",
    "DatasetError",
    "DetectionDataset",
    "DetectionTransforms",
    "ShapesDetection",
    "VocDetection",
    "boxes_to_original",
    "build_dataloader",
    "build_transforms",
    "category_maps",
    "clean_coco_dict",
    "collate_batch",
    "existing_shapes_dataset",
    "generate_shapes_dataset",
    "index_coco",
    "load_coco_json",
    "load_voc_as_coco",
    "parse_voc_xml",
    "read_image_rgb",
    "require_shapes_dataset",
    "resize_scale",
    "seed_worker",
]
