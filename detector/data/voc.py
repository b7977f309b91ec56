"""Pascal VOC XML datasets, converted in memory to the COCO format.

Layouts: the standard ``VOCdevkit/VOC20xx`` (``Annotations/``, ``JPEGImages/``,
``ImageSets/Main/<split>.txt``) and VOC-like folders such as the raccoon set (``annotations/``,
``images/``, a CSV split whose first column is the image file name). VOC boxes are 1-based
inclusive pixel indices; ``(xmin, ymin, xmax, ymax)`` becomes the continuous box
``(xmin - 1, ymin - 1, xmax, ymax)``. ``difficult`` objects become ``iscrowd=1`` (ignored by
COCOeval) with ``difficult=1`` and are no training targets unless ``use_difficult``.
"""

from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detector.data.coco import checked_path
from detector.data.dataset import DetectionDataset
from detector.data.image_io import read_image_rgb
from detector.data.report import DataReport, DatasetError, OnBad, shown
from detector.data.transforms import DetectionTransforms

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")
SPLIT_CANDIDATES = ("ImageSets/Main/{split}.txt", "{split}.txt", "{split}.csv",
                    "data/{split}_labels.csv")
_HEADER_NAMES = {"filename", "file_name", "file", "image", "image_id", "id", "name"}
MAX_XML_BYTES = 16 * 2**20  # one image's annotation (a VOC file is ~1 KB)
MAX_LIST_BYTES = 2**30  # a split file or a class list
MAX_IMAGE_SIDE = 10**6  # px of a <size>


@dataclass
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # xyxy, continuous pixels (already converted)
    difficult: bool


@dataclass
class VocAnnotation:
    path: Path
    filename: str | None
    width: int  # 0 when the XML does not say
    height: int
    objects: list[VocObject] = field(default_factory=list)


def voc_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, ...]:
    """1-based inclusive VOC pixel indices -> continuous xyxy (a 1-pixel box has width 1)."""
    return (xmin - 1.0, ymin - 1.0, xmax, ymax)


def _text(node: ET.Element, tag: str, default: str | None = None) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text else default


def _parse_object(node: ET.Element, path: Path) -> VocObject:
    name = _text(node, "name")
    box = node.find("bndbox")
    try:
        coords = [float(_text(box, tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
    except (TypeError, ValueError, AttributeError):
        raise DatasetError(f"{path}: object {name!r} has no valid <bndbox>",
                           kind="bad_annotation_file") from None
    if not name:
        raise DatasetError(f"{path}: an object has no <name>", kind="bad_annotation_file")
    difficult = _text(node, "difficult", "0") not in ("0", "false", "False")
    return VocObject(name=name, box=voc_to_xyxy(*coords), difficult=difficult)


def _side(root: ET.Element, tag: str, path: Path) -> int:
    """``<size>/<tag>`` in whole pixels (0 when absent), a finite number in [0, 10**6]."""
    text = _text(root, f"size/{tag}", "0")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_IMAGE_SIDE):
        raise DatasetError(f"{path}: <size><{tag}> must be a number of pixels in [0, "
                           f"{MAX_IMAGE_SIDE}], got {shown(text)}", kind="bad_annotation_file")
    return int(value)


def _regular_file(path: Path, what: str, limit: int, kind: str = "bad_input") -> None:
    """Raise DatasetError unless `path` is a regular file of at most `limit` bytes."""
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist" if not path.exists() else
                           f"{what} {path} is not a regular file", kind=kind)
    if path.stat().st_size > limit:
        raise DatasetError(f"{what} {path} is larger than {limit} bytes", kind=kind)


def parse_voc_xml(path: str | Path) -> VocAnnotation:
    """Parse one VOC XML annotation file.

    Raises:
        DatasetError: missing, empty, too large, unparsable (invalid UTF-8 included), or
            malformed file (a <size> that is no size in pixels, an object without a box),
            naming it and the tag.
    """
    path = Path(path)
    _regular_file(path, "annotation file", MAX_XML_BYTES, kind="bad_annotation_file")
    if path.stat().st_size == 0:
        raise DatasetError(f"annotation file {path} is empty", kind="bad_annotation_file")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DatasetError(f"annotation file {path} is not valid XML: {err}",
                           kind="bad_annotation_file") from err
    width, height = _side(root, "width", path), _side(root, "height", path)
    objects = [_parse_object(node, path) for node in root.findall("object")]
    return VocAnnotation(path=path, filename=_text(root, "filename"), width=width, height=height,
                         objects=objects)


def read_split_file(path: str | Path) -> list[str]:
    """Image stems listed in a split file, in order, without duplicates.

    ``.txt``: first token per line (VOC ``ImageSets``). ``.csv``: first column, one row per box
    is fine, a header row is skipped. Extensions are stripped: ``raccoon-1.jpg`` -> ``raccoon-1``.
    """
    path = Path(path)
    _regular_file(path, "split file", MAX_LIST_BYTES)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".csv":
                firsts = [row[0].strip() for row in csv.reader(f) if row and row[0].strip()]
                if firsts and firsts[0].lower() in _HEADER_NAMES:
                    firsts = firsts[1:]
            else:
                firsts = [line.split()[0] for line in f if line.strip()]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"split file {path} cannot be read as UTF-8 text or CSV: "
                           f"{str(err)[:200]}") from None
    stems = list(dict.fromkeys(Path(name).stem if Path(name).suffix in IMAGE_SUFFIXES else name
                               for name in firsts))
    if not stems:
        raise DatasetError(f"split file {path} lists no images")
    return stems


def discover_class_names(annotations: list[VocAnnotation]) -> list[str]:
    """The sorted set of object names."""
    return sorted({obj.name for ann in annotations for obj in ann.objects})


def _safe_name(filename: str | None) -> str | None:
    """A <filename> that names a file inside the image folder (relative, no ``..``), else None."""
    if not filename or "\x00" in filename:
        return None
    name = Path(filename)
    return None if name.is_absolute() or ".." in name.parts else filename


def _find_image(image_dir: Path, ann: VocAnnotation) -> Path:
    """The image file for `ann`: its <filename> (inside `image_dir`), else the XML's stem with a
    known suffix."""
    filename = _safe_name(ann.filename)
    if filename and (image_dir / filename).is_file():
        return image_dir / filename
    for suffix in IMAGE_SUFFIXES:
        candidate = image_dir / f"{ann.path.stem}{suffix}"
        if candidate.is_file():
            return candidate
    return image_dir / (filename or f"{ann.path.stem}.jpg")


def _image_entry(ann: VocAnnotation, image_id: int, image_dir: Path, report: DataReport):
    """COCO image dict for `ann`, or None when the size is unknown and the image unreadable."""
    path = _find_image(image_dir, ann)
    width, height = ann.width, ann.height
    if width <= 0 or height <= 0:
        try:
            height, width = read_image_rgb(path).shape[:2]
        except DatasetError as err:
            report.bad(err.kind, f"{ann.path}: no <size> and {err}")
            return None
        report.count("size_read_from_image")
    return {"id": image_id, "file_name": path.relative_to(image_dir).as_posix(),
            "width": width, "height": height}


def _object_entries(ann: VocAnnotation, image_id: int, cat_ids: dict[str, int],
                    report: DataReport) -> list[dict]:
    entries = []
    for obj in ann.objects:
        if obj.name not in cat_ids:
            report.bad("unknown_category", f"{ann.path}: object class {obj.name!r} is not in the "
                       f"class list {sorted(cat_ids)}")
            continue
        x1, y1, x2, y2 = obj.box
        entries.append({"image_id": image_id, "category_id": cat_ids[obj.name],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": int(obj.difficult), "difficult": int(obj.difficult)})
    return entries


def voc_to_coco_dict(
    annotations: dict[int, VocAnnotation],
    *,
    image_dir: str | Path,
    class_names: list[str],
    report: DataReport,
) -> dict:
    """COCO-format dict (images, annotations, categories 1..K in `class_names` order).

    Args:
        annotations: parsed XML per image id.
        image_dir: folder holding the images; ``file_name`` is relative to it.
        class_names: the class list; other object names go to ``report.bad("unknown_category")``.
    """
    image_dir = Path(image_dir)
    cat_ids = {name: i + 1 for i, name in enumerate(class_names)}
    images, anns = [], []
    for image_id, ann in annotations.items():
        entry = _image_entry(ann, image_id, image_dir, report)
        if entry is not None:
            images.append(entry)
            anns += _object_entries(ann, image_id, cat_ids, report)
    for i, a in enumerate(anns):
        a["id"] = i + 1
    categories = [{"id": i, "name": name, "supercategory": "none"} for name, i in cat_ids.items()]
    return {"images": images, "annotations": anns, "categories": categories}


def _first_existing(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root}: none of the folders {list(names)} exists")


def resolve_split_file(root: Path, split: str) -> Path:
    """The split file for `split` under `root` (see `SPLIT_CANDIDATES`)."""
    candidates = [root / pattern.format(split=split) for pattern in SPLIT_CANDIDATES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"no split file for split {split!r} under {root}; tried {[str(c) for c in candidates]}; "
        "give a split file (dataset.train_split_file=PATH / dataset.val_split_file=PATH, a .txt "
        "or .csv relative to the root) or an existing split name (dataset.train_split=NAME / "
        "dataset.val_split=NAME)")


def parse_voc_folder(
    ann_dir: Path, stems: list[str] | None, report: DataReport
) -> dict[int, VocAnnotation]:
    """Parse the XML files of `stems` (all when None), keyed by stable image ids.

    Image ids are 1-based positions in the sorted list of every XML stem in `ann_dir`, so
    different splits of one folder never share an id.
    """
    ids = {p.stem: i + 1 for i, p in enumerate(sorted(ann_dir.glob("*.xml")))}
    if not ids:
        raise DatasetError(f"annotation folder {ann_dir} holds no .xml files")
    parsed = {}
    for stem in stems if stems is not None else list(ids):
        if stem not in ids:
            report.bad("bad_annotation_file", f"{ann_dir / (stem + '.xml')} (listed in the split) "
                       "does not exist")
            continue
        try:
            parsed[ids[stem]] = parse_voc_xml(ann_dir / f"{stem}.xml")
        except DatasetError as err:
            report.bad(err.kind, str(err))
    return parsed


def _class_list(ann_dir: Path, class_names: list[str] | None, classes_file: Path | None,
                annotations: dict[int, VocAnnotation]) -> list[str]:
    """The class list: given, else read from `classes_file`, else discovered (and saved there).

    Discovery reads every XML in `ann_dir` (not only this split's) so all splits agree.
    """
    if class_names is not None:
        return list(class_names)
    if classes_file is not None and classes_file.is_file():
        _regular_file(classes_file, "class list", MAX_LIST_BYTES)
        try:
            text = classes_file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise DatasetError(f"class list {classes_file} is not UTF-8 text (byte {err.start})"
                               ) from None
        return [line.strip() for line in text.splitlines() if line.strip()]
    every = parse_voc_folder(ann_dir, None, DataReport(on_bad="skip", name=str(ann_dir)))
    names = discover_class_names(list(every.values()) or list(annotations.values()))
    if classes_file is not None:
        classes_file.write_text("\n".join(names) + "\n")
    return names


def load_voc_as_coco(
    *,
    root: str | Path,
    report: DataReport,
    split: str | None = None,
    split_file: str | Path | None = None,
    ann_dir: str | Path | None = None,
    image_dir: str | Path | None = None,
    class_names: list[str] | None = None,
    classes_file: str | Path | None = None,
) -> tuple[dict, Path]:
    """Read a VOC-style folder into a COCO-format dict; see `VocDetection` for the arguments.

    Returns:
        (coco_dict, image_dir).
    """
    root = Path(root)
    ann_path = root / ann_dir if ann_dir is not None else _first_existing(
        root, ("Annotations", "annotations"))
    image_path = root / image_dir if image_dir is not None else _first_existing(
        root, ("JPEGImages", "images"))
    if split_file is not None:
        split_path = root / split_file
    else:
        split_path = resolve_split_file(root, split) if split is not None else None
    stems = read_split_file(split_path) if split_path is not None else None
    annotations = parse_voc_folder(ann_path, stems, report)
    if not annotations:
        raise DatasetError(f"{ann_path}: no usable annotation file\n{report.summary()}")
    names = _class_list(ann_path, class_names,
                        root / classes_file if classes_file is not None else None, annotations)
    coco_dict = voc_to_coco_dict(annotations, image_dir=image_path, class_names=names,
                                 report=report)
    return coco_dict, image_path


class VocDetection(DetectionDataset):
    """A Pascal VOC XML dataset (standard VOCdevkit or VOC-like, e.g. the raccoon set).

    Args:
        root: dataset folder.
        split: split name, looked up as in `SPLIT_CANDIDATES` (e.g. ``ImageSets/Main/<split>.txt``).
        split_file: explicit ``.txt`` (one image id per line) or ``.csv`` (file name in the first
            column) split, relative to `root` (or absolute); wins over `split`. Neither: every
            XML file in the folder. `root` itself, when relative, is taken from the working
            directory (and joined once).
        ann_dir, image_dir: XML and image folders (default ``Annotations``/``annotations`` and
            ``JPEGImages``/``images``). Relative paths are taken from `root`.
        class_names: the class list, label l = class_names[l - 1]. Default: read from
            `classes_file` if it exists, else the sorted object names of all XML files (written
            to `classes_file` when given).
        use_difficult: train on ``difficult`` objects too (they stay ignored at eval).
        transforms, keep_empty, on_bad, min_box_size, verify_images: as in `CocoDetection`.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        split: str | None = None,
        split_file: str | Path | None = None,
        ann_dir: str | Path | None = None,
        image_dir: str | Path | None = None,
        class_names: list[str] | None = None,
        classes_file: str | Path | None = None,
        use_difficult: bool = False,
        transforms: DetectionTransforms | None = None,
        keep_empty: bool = True,
        on_bad: OnBad = "error",
        min_box_size: float = 1.0,
        verify_images: bool = False,
    ) -> None:
        self.root = checked_path(root, "root", optional=False)
        for name, value in (("split", split), ("split_file", split_file), ("ann_dir", ann_dir),
                            ("image_dir", image_dir), ("classes_file", classes_file)):
            checked_path(value, name)
        if class_names is not None and not (
                isinstance(class_names, Sequence) and not isinstance(class_names, str)
                and class_names
                and all(isinstance(name, str) and name for name in class_names)):
            raise DatasetError(f"class_names must be a non-empty list of names, got "
                               f"{shown(class_names)}")
        report = DataReport(on_bad=on_bad, name=f"{root} ({split_file or split or 'all'})")
        coco_dict, image_path = load_voc_as_coco(
            root=root, report=report, split=split, split_file=split_file, ann_dir=ann_dir,
            image_dir=image_dir, class_names=class_names, classes_file=classes_file)
        super().__init__(coco_dict=coco_dict, image_dir=image_path, report=report,
                         transforms=transforms, keep_empty=keep_empty, use_difficult=use_difficult,
                         min_box_size=min_box_size, verify_images=verify_images)
