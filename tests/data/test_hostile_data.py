"""Malformed annotation files end as one DatasetError line naming the file and the key.

A valid tiny COCO file is mutated in many ways (each a case), and VOC XML/split files are broken
the ways hostile testers found (a ``<width>`` of ``inf``, invalid UTF-8, an absolute
``<filename>``); before, these escaped as TypeError, KeyError, OverflowError,
UnicodeDecodeError or RecursionError (Hydra: "Error in call to target", a traceback).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.data import CocoDetection, DatasetError, VocDetection

ANN = "annotations/instances_train.json"


def _valid() -> dict:
    """Two images, two categories, two boxes: loads cleanly."""
    return {"images": [{"id": 1, "file_name": "0001.png", "width": 40, "height": 30},
                       {"id": 2, "file_name": "0002.png", "width": 40, "height": 30}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 8],
                             "area": 80.0, "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [5, 5, 9, 9],
                             "area": 81.0, "iscrowd": 0}]}


def _write_coco(root: Path, content: dict | bytes) -> Path:
    for name in ("0001.png", "0002.png"):
        (root / "train").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train" / name), np.full((30, 40, 3), 90, np.uint8))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    (root / ANN).write_bytes(raw)
    return root


def _set(path: str, value) -> Callable[[dict], dict]:
    """A mutation: the value at ``path`` (dot/int keys, e.g. ``images.0.file_name``) replaced;
    ``...`` deletes it."""
    def mutate(data: dict) -> dict:
        node, *keys, last = [data, *(int(k) if k.isdigit() else k for k in path.split("."))]
        for key in keys:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value
        return data
    return mutate


def _text(replace: str, by: str) -> Callable[[dict], bytes]:
    """A mutation of the JSON text itself (what json.dumps cannot write)."""
    return lambda data: json.dumps(data).replace(replace, by, 1).encode()


MUTATIONS = [  # (id, mutation, what the one line names)
    ("file_name_int", _set("images.0.file_name", 5), "image id 1 file_name must be a non-empty"),
    ("file_name_null", _set("images.0.file_name", None), "image id 1 file_name"),
    ("file_name_list", _set("images.0.file_name", ["a.png"]), "image id 1 file_name"),
    ("file_name_nul", _set("images.0.file_name", "a\x00.png"), "image id 1 file_name"),
    ("file_name_empty", _set("images.0.file_name", ""), "image id 1 file_name"),
    ("image_id_list", _set("images.0.id", [1]), "images[0].id must be an integer"),
    ("image_id_string", _set("images.0.id", "1"), "images[0].id must be an integer"),
    ("image_id_dict", _set("images.1.id", {"a": 1}), "images[1].id must be an integer"),
    ("image_id_float", _set("images.0.id", 1.5), "images[0].id must be an integer"),
    ("image_id_huge", _set("images.0.id", 10**30), "images[0].id must be an integer"),
    ("image_id_negative", _set("images.0.id", -4), "images[0].id must be an integer"),
    ("width_bool", _set("images.0.width", True), "image id 1 has an invalid size"),
    ("width_string", _set("images.0.width", "40"), "image id 1 has an invalid size"),
    ("width_huge", _set("images.0.width", 10**12), "image id 1 has an invalid size"),
    ("width_nan", _text('"width": 40', '"width": NaN'), "image id 1 has an invalid size"),
    ("width_inf", _text('"width": 40', '"width": 1e400'), "image id 1 has an invalid size"),
    ("height_missing", _set("images.0.height", ...), "image id 1 lacks file_name/width/height"),
    ("images_dict", _set("images", {"id": 1}), "'images' must be a list"),
    ("images_string", _set("images", "0001.png"), "'images' must be a list"),
    ("image_not_object", _set("images.0", 1), "images[0] must be an object"),
    ("image_list", _set("images.1", [1, 2]), "images[1] must be an object"),
    ("category_id_dict", _set("categories.0.id", {"a": 1}), "categories[0].id must be"),
    ("category_id_huge", _set("categories.0.id", 10**10), "categories[0].id must be"),
    ("category_name_list", _set("categories.1.name", ["dog"]), "categories[1].name must be"),
    ("category_name_missing", _set("categories.0.name", ...), "categories[0].name must be"),
    ("categories_string", _set("categories", "cat"), "'categories' must be a list"),
    ("annotations_string", _set("annotations", "x"), "'annotations' must be a list"),
    ("annotation_list", _set("annotations.0", [1]), "annotations[0] must be an object"),
    ("annotation_id_list", _set("annotations.0.id", [1]), "annotations[0].id must be"),
    ("annotation_id_missing", _set("annotations.1.id", ...), "annotations without an 'id'"),
    ("annotation_image_id_list", _set("annotations.0.image_id", [1]),
     "annotation id 1 refers to unknown image id [1]"),
    ("annotation_category_dict", _set("annotations.0.category_id", {"x": 1}),
     "annotation id 1 has category id {'x': 1}"),
    ("bbox_huge_int", _text("[1, 2, 10, 8]", "[1, 2, 1" + "0" * 400 + ", 8]"),
     "annotation id 1 has a non-finite bbox"),
    ("bbox_string", _set("annotations.0.bbox", ["1", 2, 3, 4]),
     "annotation id 1 has a non-finite bbox"),
    ("bbox_bool", _set("annotations.0.bbox", [True, 2, 3, 4]),
     "annotation id 1 has a non-finite bbox"),
    ("bbox_nested", _set("annotations.0.bbox", [[1], 2, 3, 4]),
     "annotation id 1 has a non-finite bbox"),
    ("iscrowd_string", _set("annotations.0.iscrowd", "yes"), "annotation id 1 has an invalid "
                                                             "iscrowd"),
    ("iscrowd_list", _set("annotations.0.iscrowd", [0]), "annotation id 1 has an invalid iscrowd"),
    ("area_string", _set("annotations.1.area", "big"), "annotation id 2 has an invalid area"),
    ("area_inf", _text('"area": 80.0', '"area": Infinity'), "annotation id 1 has an invalid area"),
    ("deep_nesting", lambda data: b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     "is nested too deeply"),
    ("invalid_utf8", lambda data: json.dumps(data).encode().replace(b"cat", b"c\xff\xfet"),
     "is not UTF-8 text"),
    ("int_past_4300_digits", _text('"width": 40', '"width": ' + "4" * 5000), "is not valid JSON"),
    ("top_level_list", lambda data: b"[1, 2]", "not a COCO instances file"),
    ("truncated", lambda data: json.dumps(data).encode()[:50], "is not valid JSON"),
    ("empty", lambda data: b" \n", "is empty"),
]


@pytest.mark.parametrize(("mutate", "names"), [m[1:] for m in MUTATIONS],
                         ids=[m[0] for m in MUTATIONS])
def test_a_mutated_coco_file_is_one_dataset_error_naming_file_and_key(mutate, names, tmp_path):
    root = _write_coco(tmp_path / "coco", mutate(copy.deepcopy(_valid())))
    with pytest.raises(DatasetError) as info:
        CocoDetection(root=root, split="train")
    message = str(info.value)
    assert "\n" not in message and names in message, message
    assert ANN in message or str(root) in message, message


def test_the_unmutated_file_loads(tmp_path):
    """The mutations start from a file that is fine (so each case tests its one change)."""
    dataset = CocoDetection(root=_write_coco(tmp_path / "coco", _valid()), split="train")
    assert len(dataset) == 2 and dataset.class_names == ["cat", "dog"]


def test_an_annotation_file_that_is_a_folder_or_fifo_is_refused_without_hanging(tmp_path):
    root = _write_coco(tmp_path / "coco", _valid())
    (root / ANN).unlink()
    (root / ANN).mkdir()
    with pytest.raises(DatasetError, match="is not a regular file"):
        CocoDetection(root=root, split="train")
    (root / ANN).rmdir()
    os.mkfifo(root / ANN)  # reading it would block forever
    with pytest.raises(DatasetError, match="is not a regular file"):
        CocoDetection(root=root, split="train")


@pytest.mark.parametrize(("key", "value", "names"), [
    ("split", 5, "split must be a path, got 5"),
    ("ann_file", ["a"], "ann_file must be a path"),
    ("image_dir", "a\x00b", "image_dir must be a path"),
    ("on_bad", "never", "on_bad must be 'error' or 'skip', got 'never'"),
    ("on_bad", 10**5000, "on_bad must be 'error' or 'skip', got an integer of ~5001 digits"),
], ids=["split", "ann_file", "image_dir", "on_bad", "on_bad_huge"])
def test_bad_constructor_arguments_are_one_line(key, value, names, tmp_path):
    root = _write_coco(tmp_path / "coco", _valid())
    with pytest.raises(DatasetError) as info:
        CocoDetection(**{"root": root, "split": "train", key: value})
    assert names in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------- Pascal VOC
def _voc(root: Path, width: str = "40", *, filename: str = "a.png", xml: bytes | None = None,
         split: bytes = b"a\n") -> Path:
    for folder in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (root / folder).mkdir(parents=True)
    cv2.imwrite(str(root / "JPEGImages" / "a.png"), np.full((30, 40, 3), 90, np.uint8))
    body = (f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
            f"<height>30</height></size><object><name>cat</name><bndbox><xmin>2</xmin>"
            f"<ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")
    (root / "Annotations" / "a.xml").write_bytes(xml if xml is not None else body.encode())
    (root / "ImageSets" / "Main" / "train.txt").write_bytes(split)
    return root


@pytest.mark.parametrize(("width", "names"), [
    ("inf", "<size><width> must be a number of pixels in [0, 1000000], got 'inf'"),
    ("1e400", "<size><width> must be a number"),
    ("nan", "<size><width> must be a number"),
    ("-5", "<size><width> must be a number"),
    ("9" * 5000, "<size><width> must be a number"),
    ("forty", "<size><width> must be a number of pixels in [0, 1000000], got 'forty'"),
])
def test_voc_size_that_is_no_size_is_one_line_naming_the_file(width, names, tmp_path):
    root = _voc(tmp_path / "VOC", width)
    with pytest.raises(DatasetError) as info:
        VocDetection(root=root, split="train")
    message = str(info.value)
    assert names in message and str(root / "Annotations" / "a.xml") in message, message
    assert "\n" not in message


def test_voc_invalid_utf8_xml_and_split_file_are_one_line(tmp_path):
    root = _voc(tmp_path / "a", xml=b"<annotation><filename>\xff\xfe</filename></annotation>")
    with pytest.raises(DatasetError, match=r"a\.xml is not valid XML"):
        VocDetection(root=root, split="train")
    root = _voc(tmp_path / "b", split=b"a\n\xff\xfe\n")
    with pytest.raises(DatasetError, match=r"split file .*train\.txt cannot be read as UTF-8"):
        VocDetection(root=root, split="train")


@pytest.mark.parametrize("filename", ["/etc/passwd", "../../a.png", "/"])
def test_voc_filename_outside_the_image_folder_is_not_followed(filename, tmp_path):
    """``path.relative_to`` raised ValueError for an absolute <filename>; one outside the image
    folder is not read: the image is found by the XML's name instead."""
    root = _voc(tmp_path / "VOC", filename=filename)
    dataset = VocDetection(root=root, split="train")
    assert [r.path for r in dataset.records] == [root / "JPEGImages" / "a.png"]


def test_voc_bad_class_names_argument_is_one_line(tmp_path):
    root = _voc(tmp_path / "VOC")
    with pytest.raises(DatasetError, match="class_names must be a non-empty list of names"):
        VocDetection(root=root, split="train", class_names=[1, 2])


def test_eval_of_a_malformed_coco_file_exits_2_in_one_line(tiny_checkpoint, tmp_path):
    """Through Hydra (dataset=coco): "Error executing job ... Error in call to target" and a
    traceback before; now the tools' one line naming the file and the key."""
    from helpers.run_tool import run_tool

    bad = _set("images.0.file_name", 5)(copy.deepcopy(_valid()))
    root = _write_coco(tmp_path / "coco", bad)
    (root / "annotations" / "instances_val2017.json").write_bytes((root / ANN).read_bytes())
    done = run_tool("eval.py", [f"checkpoint={tiny_checkpoint}", "dataset=coco",
                                f"dataset.root={root}", "device=cpu", "num_workers=0",
                                "num_visualize=0"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert "instances_val2017.json: image id 1 file_name must be a non-empty string" in (
        done.stderr), done.stderr
