"""CocoDetection on tiny hand-made sets (incl. broken ones) and on the real coco_tiny subset."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from detector.data.coco import CocoDetection
from detector.data.report import DatasetError


@pytest.fixture
def three_images(make_coco, helpers):
    """Images 1 (two boxes, one crowd), 2 (one box, category 7), 3 (no boxes)."""
    images = [helpers.coco_image(i) for i in (1, 2, 3)]
    anns = [helpers.coco_ann(1, 1, [2, 3, 10, 5]),
            helpers.coco_ann(2, 1, [0, 0, 40, 30], iscrowd=1),
            helpers.coco_ann(3, 2, [5, 5, 4, 4], category_id=7)]
    return make_coco(images, anns)


def test_sample_contract(three_images):
    ds = CocoDetection(root=three_images, split="train")
    assert len(ds) == 3 and ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    sample = ds[0]
    assert sample["image"].shape == (3, 30, 40) and sample["image"].dtype == torch.float32
    torch.testing.assert_close(sample["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0]]))
    assert sample["labels"].tolist() == [1] and sample["labels"].dtype == torch.long
    assert sample["image_id"] == 1 and sample["orig_size"] == (30, 40)
    assert sample["scale"] == (1.0, 1.0)
    assert ds[1]["labels"].tolist() == [2]  # category 7 -> label 2
    assert ds[2]["boxes"].shape == (0, 4) and ds[2]["labels"].shape == (0,)
    assert ds.report["crowd_box"] == 1
    # the crowd box stays in the evaluation ground truth, with its original category id
    assert len(ds.coco.getAnnIds(imgIds=[1], iscrowd=None)) == 2
    torch.testing.assert_close(ds.image_aspect_ratios(), torch.full((3,), 40 / 30))


def test_index_out_of_range(three_images):
    ds = CocoDetection(root=three_images, split="train")
    with pytest.raises(IndexError):
        ds[3]
    assert ds[-1]["image_id"] == 3


def test_keep_empty_false_filters_negatives(three_images):
    ds = CocoDetection(root=three_images, split="train", keep_empty=False)
    assert ds.image_ids == [1, 2] and ds.report["empty_image_filtered"] == 1


def test_category_id_round_trip(three_images):
    ds = CocoDetection(root=three_images, split="train")
    for cat_id in ds.coco.getCatIds():
        assert ds.label_to_cat_id[ds.cat_id_to_label[cat_id]] == cat_id
    assert sorted(ds.label_to_cat_id) == [1, 2]


def test_missing_image_error_and_skip(make_coco, helpers):
    images = [helpers.coco_image(1), helpers.coco_image(2)]
    root = make_coco(images, [helpers.coco_ann(1, 1, [1, 1, 5, 5])], skip_files={"0001.png"})
    with pytest.raises(DatasetError, match=r"0001\.png \(image id 1\) does not exist"):
        CocoDetection(root=root, split="train")
    with pytest.warns(UserWarning, match="0001.png"):
        ds = CocoDetection(root=root, split="train", on_bad="skip")
    assert ds.image_ids == [2] and ds.report.as_dict() == {"missing_image": 1}


def _corrupt(root: Path, name: str) -> None:
    (root / "train" / name).write_bytes(b"\xff\xd8\xff\xe0 definitely not a complete jpeg")


def test_corrupt_image_error_at_load(make_coco, helpers):
    root = make_coco([helpers.coco_image(1), helpers.coco_image(2)], [])
    _corrupt(root, "0001.png")
    ds = CocoDetection(root=root, split="train")
    with pytest.raises(DatasetError, match="0001.png is corrupt"):
        ds[0]
    assert ds[1]["image_id"] == 2


def test_corrupt_image_skip_yields_next_image(make_coco, helpers):
    root = make_coco([helpers.coco_image(1), helpers.coco_image(2)], [])
    _corrupt(root, "0001.png")
    ds = CocoDetection(root=root, split="train", on_bad="skip")
    with pytest.warns(UserWarning, match="0001.png is corrupt"):
        assert ds[0]["image_id"] == 2
    assert ds.report["unreadable_image"] == 1


def test_verify_images_finds_corrupt_and_mismatched_files_up_front(make_coco, helpers):
    images = [helpers.coco_image(1), helpers.coco_image(2, height=30, width=41),
              helpers.coco_image(3)]
    root = make_coco(images, [helpers.coco_ann(1, 2, [1, 1, 5, 5])])
    _corrupt(root, "0001.png")
    helpers.write_image(root / "train" / "0002.png", 30, 40)  # annotation says 41 wide
    with pytest.raises(DatasetError, match="0001.png is corrupt"):
        CocoDetection(root=root, split="train", verify_images=True)
    with pytest.warns(UserWarning):
        ds = CocoDetection(root=root, split="train", verify_images=True, on_bad="skip")
    assert ds.image_ids == [3]
    assert ds.report.as_dict() == {"unreadable_image": 1, "size_mismatch": 1}
    assert ds.coco.getImgIds() == [3] and ds.coco.getAnnIds() == []


def test_size_mismatch_error_names_the_file(make_coco, helpers):
    root = make_coco([helpers.coco_image(1, height=30, width=40)], [])
    helpers.write_image(root / "train" / "0001.png", 40, 30)  # rotated on disk
    ds = CocoDetection(root=root, split="train")
    with pytest.raises(DatasetError, match=r"0001\.png \(id 1\) is 30x40 .* says 40x30"):
        ds[0]


def test_no_usable_image_left_is_an_error(make_coco, helpers):
    root = make_coco([helpers.coco_image(1)], [], skip_files={"0001.png"})
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="no usable images"):
        CocoDetection(root=root, split="train", on_bad="skip")


# ---- real data: ../shared/data/coco_tiny -------------------------------------------------


@pytest.mark.parametrize(("split", "readme_boxes"), [("train2017", 705), ("val2017", 815)])
def test_coco_tiny_exact_counts(coco_tiny_root, split, readme_boxes):
    raw = json.loads((coco_tiny_root / "annotations" / f"instances_{split}.json").read_text())
    crowd = sum(1 for a in raw["annotations"] if a["iscrowd"])
    targets = sum(1 for a in raw["annotations"]
                  if not a["iscrowd"] and a["bbox"][2] >= 1 and a["bbox"][3] >= 1)
    assert (len(raw["images"]), len(raw["annotations"]), len(raw["categories"])) == (
        80, readme_boxes, 80)  # the data README's totals

    ds = CocoDetection(root=coco_tiny_root, split=split)
    assert len(ds) == 80 and ds.num_classes == 80
    assert sum(len(r.boxes) for r in ds.records) == targets
    assert ds.report["crowd_box"] == crowd > 0
    assert len(ds.coco.getAnnIds(iscrowd=None)) == readme_boxes  # GT keeps crowd boxes
    by_id = sorted(raw["categories"], key=lambda c: c["id"])
    assert ds.class_names == [c["name"] for c in by_id]
    assert max(ds.cat_id_to_label) == 90  # COCO ids have gaps; labels do not
    assert sorted(ds.label_to_cat_id) == list(range(1, 81))
    for cat_id, label in ds.cat_id_to_label.items():
        assert ds.label_to_cat_id[label] == cat_id


def test_coco_tiny_targets_match_raw_json(coco_tiny_root):
    """Per image: the training boxes are the raw non-crowd boxes, xywh -> xyxy, same classes."""
    raw = json.loads((coco_tiny_root / "annotations" / "instances_val2017.json").read_text())
    ds = CocoDetection(root=coco_tiny_root, split="val2017")
    record = ds.records[7]
    anns = [a for a in raw["annotations"] if a["image_id"] == record.image_id and not a["iscrowd"]]
    expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
    np.testing.assert_allclose(record.boxes, expected, atol=1e-3)
    assert [ds.label_to_cat_id[int(label)] for label in record.labels] == [
        a["category_id"] for a in anns]


@pytest.mark.parametrize("cwd", [".", "elsewhere/deeper"])
def test_a_relative_root_from_any_working_directory(make_coco, helpers, tmp_path, monkeypatch,
                                                    cwd):
    """Relative root, ann_file and image_dir: the root from the working directory, the other two
    from the root (each joined once)."""
    images = [helpers.coco_image(1), helpers.coco_image(2)]
    root = make_coco(images, [helpers.coco_ann(1, 1, [2, 2, 10, 10])])
    (tmp_path / cwd).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path / cwd)
    relative = Path(os.path.relpath(root))
    assert not relative.is_absolute()
    standard = CocoDetection(root=relative, split="train")
    (root / "other_images").symlink_to(root / "train")
    (root / "annotations" / "instances_train.json").rename(root / "train.json")
    moved = CocoDetection(root=relative, split="ignored", ann_file="train.json",
                          image_dir="other_images")
    assert standard.image_ids == moved.image_ids == [1, 2]
    assert moved[0]["image"].shape[-2:] == (30, 40)  # the image is found under image_dir
    assert str(moved.image_dir) == str(relative / "other_images")
