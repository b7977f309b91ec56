"""Pascal VOC XML: parsing, coordinates, splits, classes, difficult, bad input, raccoon counts."""

import contextlib
import csv
import io
import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from detector.data.image_io import read_image_rgb
from detector.data.report import DatasetError
from detector.data.voc import VocDetection, parse_voc_xml, read_split_file, voc_to_xyxy

OBJ = ("cat", 1, 1, 10, 5, 0)


def test_voc_pixel_indices_to_continuous_box():
    assert voc_to_xyxy(1, 1, 10, 5) == (0.0, 0.0, 10, 5)  # pixels 1..10 -> 10 pixels wide
    assert voc_to_xyxy(7, 7, 7, 7) == (6.0, 6.0, 7, 7)  # a single pixel has width 1


def test_parse_xml(tmp_path, helpers):
    path = tmp_path / "a.xml"
    path.write_text(helpers.voc_xml("a.jpg", 40, 30, [OBJ, ("dog", 3, 4, 20.5, 30, 1)]))
    ann = parse_voc_xml(path)
    assert (ann.filename, ann.width, ann.height) == ("a.jpg", 40, 30)
    assert [(o.name, o.box, o.difficult) for o in ann.objects] == [
        ("cat", (0.0, 0.0, 10.0, 5.0), False), ("dog", (2.0, 3.0, 20.5, 30.0), True)]


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("<annotation><object>", "not valid XML"),
     ("<annotation><object><name>a</name></object></annotation>", "no valid <bndbox>")],
)
def test_bad_xml_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.xml"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        parse_voc_xml(path)
    assert "bad.xml" in str(info.value)


def test_split_files(tmp_path):
    (tmp_path / "s.txt").write_text("b\n\na 1\n")
    assert read_split_file(tmp_path / "s.txt") == ["b", "a"]
    (tmp_path / "s.csv").write_text("filename,width\nx-1.jpg,3\nx-2.jpg,3\nx-1.jpg,3\n")
    assert read_split_file(tmp_path / "s.csv") == ["x-1", "x-2"]  # one row per box, deduplicated
    with pytest.raises(DatasetError, match="nope.txt does not exist"):
        read_split_file(tmp_path / "nope.txt")


def test_standard_layout_split_and_stable_ids(make_voc):
    root = make_voc({"a": (40, 30, [OBJ]), "b": (40, 30, []), "c": (30, 40, [OBJ])},
                    splits={"train": ["a", "b"], "val": ["c"]})
    train = VocDetection(root=root, split="train")
    val = VocDetection(root=root, split="val")
    assert train.image_ids == [1, 2] and val.image_ids == [3]
    assert train.class_names == ["cat"]
    np.testing.assert_array_equal(train.records[0].boxes, [[0, 0, 10, 5]])
    assert val[0]["orig_size"] == (40, 30)


def test_class_list_from_config_and_unknown_class(make_voc):
    root = make_voc({"a": (40, 30, [OBJ, ("dog", 2, 2, 8, 8, 0)])})
    ds = VocDetection(root=root, class_names=["dog", "cat"])
    assert ds.records[0].labels.tolist() == [2, 1] and ds.label_to_cat_id == {1: 1, 2: 2}
    with pytest.raises(DatasetError, match=r"a\.xml: object class 'dog' is not in the class list"):
        VocDetection(root=root, class_names=["cat"])
    with pytest.warns(UserWarning, match="'dog'"):
        ds = VocDetection(root=root, class_names=["cat"], on_bad="skip")
    assert ds.records[0].labels.tolist() == [1] and ds.report["unknown_category"] == 1


def test_discovered_classes_are_saved_and_reused(make_voc):
    root = make_voc({"a": (40, 30, [("zebra", 1, 1, 5, 5, 0)]), "b": (40, 30, [OBJ])},
                    splits={"train": ["b"]})
    ds = VocDetection(root=root, split="train", classes_file="classes.txt")
    assert ds.class_names == ["cat", "zebra"]  # discovered over every XML, not only this split
    assert (root / "classes.txt").read_text() == "cat\nzebra\n"
    (root / "classes.txt").write_text("zebra\ncat\n")
    assert VocDetection(root=root, classes_file="classes.txt").class_names == ["zebra", "cat"]


def test_difficult_excluded_from_training_and_ignored_at_eval(make_voc):
    difficult = ("cat", 21, 11, 30, 20, 1)
    root = make_voc({"a": (40, 30, [OBJ, difficult])})
    ds = VocDetection(root=root)
    assert len(ds.records[0].boxes) == 1 and ds.report["difficult_box"] == 1
    assert len(VocDetection(root=root, use_difficult=True).records[0].boxes) == 2

    def ap50(dets):
        results = [{"image_id": 1, "category_id": 1, "bbox": b, "score": s} for b, s in dets]
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(ds.coco, ds.coco.loadRes(results), "bbox")
            ev.evaluate(), ev.accumulate(), ev.summarize()
        return ev.stats[1]

    normal, hard = [0, 0, 10, 5], [20, 10, 10, 10]
    assert ap50([(normal, 0.5)]) == pytest.approx(1.0)  # the difficult box is not a missed GT
    assert ap50([(hard, 0.9), (normal, 0.5)]) == pytest.approx(1.0)  # nor a false positive


def test_bad_files_in_folder(make_voc, helpers):
    root = make_voc({"a": (40, 30, [OBJ]), "b": (40, 30, [OBJ])},
                    splits={"train": ["a", "b", "ghost"]})
    (root / "Annotations" / "b.xml").write_text("")
    with pytest.raises(DatasetError, match=r"b\.xml is empty"):
        VocDetection(root=root, split="train")
    with pytest.warns(UserWarning):
        ds = VocDetection(root=root, split="train", on_bad="skip")
    assert ds.image_ids == [1]
    assert ds.report["bad_annotation_file"] == 2  # the empty XML and the missing 'ghost'


def test_out_of_image_and_degenerate_boxes(make_voc):
    objs = [("cat", 0, -3, 50, 20, 0), ("cat", 5, 5, 4, 9, 0), ("cat", 3, 3, 6, 3, 0)]
    ds = VocDetection(root=make_voc({"a": (40, 30, objs)}))
    # clipped to the 40x30 image; xmax < xmin dropped; ymin == ymax is one pixel high: kept
    np.testing.assert_array_equal(ds.records[0].boxes, [[0, 0, 40, 20], [2, 2, 6, 3]])
    assert ds.report.as_dict() == {"clipped_box": 1, "degenerate_box": 1}


def test_size_missing_in_xml_is_read_from_the_image(make_voc):
    root = make_voc({"a": (40, 30, [OBJ])})
    xml = root / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<width>40</width>", "<width>0</width>"))
    ds = VocDetection(root=root)
    assert ds.records[0].width == 40 and ds.report["size_read_from_image"] == 1


# ---- real data: ../shared/data/raccoon -----------------------------------------------------


def _csv_split(path):
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["filename"] for r in rows}, len(rows)


def test_raccoon_exact_counts_and_owner_split(raccoon_root):
    everything = VocDetection(root=raccoon_root)
    assert len(everything) == 200 and everything.class_names == ["raccoon"]
    assert sum(len(r.boxes) for r in everything.records) == 217
    assert everything.report.as_dict() == {}
    sizes = {}
    for part in ("train", "test"):
        files, rows = _csv_split(raccoon_root / "data" / f"{part}_labels.csv")
        ds = VocDetection(root=raccoon_root, split_file=f"data/{part}_labels.csv")
        assert len(ds) == len(files) and sum(len(r.boxes) for r in ds.records) == rows
        assert {r.path.name for r in ds.records} == files
        sizes[part] = (len(ds), set(ds.image_ids))
    assert (sizes["train"][0], sizes["test"][0]) == (160, 40)
    assert not sizes["train"][1] & sizes["test"][1]


def test_raccoon_border_boxes_convert_exactly(raccoon_root):
    """The README's 59 border-touching boxes land exactly on the image edge, none outside."""
    ds = VocDetection(root=raccoon_root)
    touching = 0
    for r in ds.records:
        b = r.boxes
        touching += int(np.sum((b[:, 0] == 0) | (b[:, 1] == 0) | (b[:, 2] == r.width)
                               | (b[:, 3] == r.height)))
    assert touching == 59 and ds.report["clipped_box"] == 0
    xml = ET.parse(raccoon_root / "annotations" / "raccoon-1.xml").getroot()
    xmin = float(xml.find("object/bndbox/xmin").text)
    record = next(r for r in ds.records if r.path.name == "raccoon-1.jpg")
    assert record.boxes[0, 0] == xmin - 1


def test_raccoon_non_rgb_images_load_as_three_channels(raccoon_root):
    odd = [p for p in sorted((raccoon_root / "images").iterdir())
           if (im := cv2.imread(str(p), cv2.IMREAD_UNCHANGED)).ndim != 3 or im.shape[2] != 3]
    assert len(odd) == 3  # the data README says so
    ds = VocDetection(root=raccoon_root)
    index = {r.path: i for i, r in enumerate(ds.records)}
    for path in odd:
        assert read_image_rgb(path).shape[2] == 3
        assert ds[index[path]]["image"].shape[0] == 3


# ---------------------------------------------------------------------------- relative roots
def _write_csv_split(root, name: str, stems: list[str]) -> None:
    (root / "data").mkdir(exist_ok=True)
    with (root / "data" / f"{name}_labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "width", "height", "class"])
        writer.writerows([f"{stem}.png", 40, 30, "cat"] for stem in stems)


@pytest.mark.parametrize("cwd", [".", "elsewhere/deeper"])  # beside the root, and elsewhere
@pytest.mark.parametrize("how", [{"split": "train"}, {"split_file": "ImageSets/Main/train.txt"},
                                 {"split": "csv"}, {"split_file": "data/csv_labels.csv"}])
def test_a_relative_root_is_joined_once(make_voc, tmp_path, monkeypatch, cwd, how):
    """A root relative to the working directory, with a split by name (looked up under the root)
    or a split file (relative to the root): the root is joined once (it was joined twice for a
    split name: ``VOC/VOC/ImageSets/Main/train.txt does not exist``)."""
    root = make_voc({"a": (40, 30, [OBJ]), "b": (40, 30, []), "c": (30, 40, [OBJ])},
                    splits={"train": ["a", "b"]})
    _write_csv_split(root, "csv", ["a", "b"])  # split="csv" finds data/csv_labels.csv
    (tmp_path / cwd).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path / cwd)
    relative = os.path.relpath(root)
    assert not Path(relative).is_absolute() and relative.endswith("VOC")
    ds = VocDetection(root=relative, **how)
    assert ds.image_ids == [1, 2] and ds.class_names == ["cat"]
    assert len(ds) == 2 and ds[0]["image"].shape[-2:] == (30, 40)  # the image is found too


def test_no_split_file_names_the_keys_to_set(make_voc, tmp_path, monkeypatch):
    make_voc({"a": (40, 30, [OBJ])})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as info:
        VocDetection(root="VOC", split="trainval")
    message = str(info.value)
    assert "no split file for split 'trainval' under VOC; tried ['VOC/ImageSets/Main/trainval.txt'" \
        in message
    for key in ("dataset.train_split_file=", "dataset.val_split_file=", "dataset.train_split="):
        assert key in message
    assert "VOC/VOC" not in message


def test_raccoon_from_the_repository_root_with_relative_paths(raccoon_root, monkeypatch):
    """As a user types it in the checkout: ``dataset.root=../shared/data/raccoon`` with the CSV
    split by file and by name (``test`` finds ``data/test_labels.csv``)."""
    repository = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repository)
    relative = os.path.relpath(raccoon_root)
    by_file = VocDetection(root=relative, split_file="data/test_labels.csv")
    by_name = VocDetection(root=relative, split="test")
    assert by_file.image_ids == by_name.image_ids and len(by_file) == 40


def test_dataset_voc_with_a_relative_root_through_the_training_config(make_voc, tmp_path,
                                                                     monkeypatch, caplog):
    """``dataset=voc dataset.root=<relative>`` by split name, as the training tool builds it;
    its log line counts one image and one class in the singular."""
    from hydra import compose, initialize_config_dir

    from detector_cli.train import build_datasets

    make_voc({"a": (40, 30, [OBJ]), "b": (40, 30, [OBJ]), "c": (30, 40, [OBJ])},
             splits={"trainval": ["a", "b"], "test": ["c"]})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=voc", "dataset.root=../VOC"])
    with caplog.at_level(logging.INFO, logger="train_net"):
        train, val = build_datasets(cfg)
    assert (len(train), len(val)) == (2, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "train_net"]
    assert lines[0].startswith("train: 2 images, 1 class; ")
    assert lines[1].startswith("val: 1 image, 1 class; ")
