"""Convert a Pascal VOC-style folder (XML annotations) into a COCO instances JSON.

The JSON is exactly the ground truth `detector.data.VocDetection` evaluates against: VOC's
1-based inclusive pixel boxes become continuous ``[x, y, w, h]``, boxes are clipped to the image,
degenerate ones dropped, ``difficult`` objects carry ``iscrowd=1`` (COCOeval ignores them) and
``difficult=1``. ``file_name`` is relative to the image folder, printed at the end.

At the end it prints the ``dataset=coco`` overrides that read the JSON back (``dataset.root``,
``dataset.<train|val>_ann_file`` and ``dataset.<train|val>_image_dir``, relative to the root
when they lie inside it, else absolute), e.g. for ``tools/eval.py``.

Examples:
    python datasets/voc_to_coco.py --root datasets/data/VOCdevkit/VOC2007 --split test \\
        --out datasets/data/VOCdevkit/VOC2007/annotations/instances_test.json
    python datasets/voc_to_coco.py --root ../shared/data/raccoon \\
        --split-file data/test_labels.csv --out datasets/data/raccoon/instances_test.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from detector.data.coco_format import clean_coco_dict
from detector.data.report import DataReport, DatasetError
from detector.data.voc import load_voc_as_coco


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="dataset folder")
    parser.add_argument("--out", required=True, type=Path, help="COCO JSON file to write")
    parser.add_argument("--split", help="split name, e.g. trainval (ImageSets/Main/<split>.txt)")
    parser.add_argument("--split-file", help="explicit .txt or .csv split (relative to --root)")
    parser.add_argument("--ann-dir", help="XML folder (default Annotations/ or annotations/)")
    parser.add_argument("--image-dir", help="image folder (default JPEGImages/ or images/)")
    parser.add_argument("--classes", nargs="+", help="class list (default: discovered, sorted)")
    parser.add_argument("--classes-file", help="read the class list from / save it to this file")
    parser.add_argument("--on-bad", choices=("error", "skip"), default="error",
                        help="stop at the first bad input (default) or skip and count it")
    parser.add_argument("--verify-images", action="store_true",
                        help="decode every image to check it is readable and its size matches")
    return parser.parse_args(argv)


def convert(args: argparse.Namespace) -> tuple[dict, Path, DataReport]:
    """Build the cleaned COCO dict; returns (dict, image folder, report)."""
    report = DataReport(on_bad=args.on_bad, name=str(args.root))
    coco_dict, image_dir = load_voc_as_coco(
        root=args.root, report=report, split=args.split, split_file=args.split_file,
        ann_dir=args.ann_dir, image_dir=args.image_dir, class_names=args.classes,
        classes_file=args.classes_file)
    cleaned = clean_coco_dict(coco_dict, image_dir=image_dir, report=report,
                              verify_images=args.verify_images, source=str(args.root))
    return cleaned, image_dir, report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        coco_dict, image_dir, report = convert(args)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(coco_dict))
    print(f"wrote {args.out}: {_count(coco_dict['images'], 'image', 'images')}, "
          f"{_count(coco_dict['annotations'], 'box', 'boxes')}, "
          f"{_count(coco_dict['categories'], 'class', 'classes')}")
    print(f"image folder (file_name is relative to it): {image_dir}")
    print(report.summary())
    print("read it with: " + " ".join(coco_overrides(args.root, args.out, image_dir)))
    return 0


def _count(items: list, one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def _from_root(root: Path, path: Path) -> str:
    """``path`` as the dataset config reads it: relative to ``root`` when inside it, else
    absolute."""
    root, path = root.resolve(), path.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def coco_overrides(root: Path, out: Path, image_dir: Path, split: str = "val") -> list[str]:
    """The overrides that read ``out`` (images in ``image_dir``) as the ``split`` split of
    ``dataset=coco`` (``configs/dataset/coco.yaml``), shell-quoted."""
    return [shlex.quote(arg) for arg in (
        "dataset=coco", f"dataset.root={root}", f"dataset.{split}_ann_file={_from_root(root, out)}",
        f"dataset.{split}_image_dir={_from_root(root, image_dir)}")]


if __name__ == "__main__":
    sys.exit(main())
