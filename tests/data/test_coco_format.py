"""COCO-format dicts: structural validation, box clipping/dropping, category maps."""

import json

import numpy as np
import pytest

from detector.data.coco_format import (
    category_maps,
    clean_coco_dict,
    clip_and_filter_boxes,
    load_coco_json,
    validate_coco_dict,
)
from detector.data.report import DataReport, DatasetError


def _dict(helpers, annotations, images=None):
    images = images or [helpers.coco_image(1, height=30, width=40)]
    return {"images": images, "annotations": annotations, "categories": helpers.categories}


def test_clip_and_filter_hand_computed():
    boxes = np.array([[-5.0, 2, 10, 8], [30, 20, 45, 35], [5, 5, 5, 9], [8, 8, 3, 12],
                      [39.5, 1, 41, 4]])
    sizes = np.array([[30, 40]] * 5)
    clipped, was_clipped, keep = clip_and_filter_boxes(boxes, sizes, min_size=1.0)
    np.testing.assert_array_equal(clipped, [[0, 2, 10, 8], [30, 20, 40, 30], [5, 5, 5, 9],
                                            [8, 8, 3, 12], [39.5, 1, 40, 4]])
    assert was_clipped.tolist() == [True, True, False, False, True]
    assert keep.tolist() == [True, True, False, False, False]  # zero w, negative w, 0.5 px wide


def test_clean_clips_and_drops_with_counts(tmp_path, helpers):
    helpers.write_image(tmp_path / "0001.png", 30, 40)
    anns = [helpers.coco_ann(1, 1, [-5, 2, 15, 6]),      # partly left of the image: clipped
            helpers.coco_ann(2, 1, [10, 10, 0, 5]),       # zero width: dropped
            helpers.coco_ann(3, 1, [10, 10, -4, 5]),      # negative width: dropped
            helpers.coco_ann(4, 1, [50, 10, 5, 5]),       # entirely outside: dropped
            helpers.coco_ann(5, 1, [1, 2, 3, 4], 7)]      # fine
    report = DataReport()
    cleaned = clean_coco_dict(_dict(helpers, anns), image_dir=tmp_path, report=report)
    assert [a["id"] for a in cleaned["annotations"]] == [1, 5]
    assert cleaned["annotations"][0]["bbox"] == [0, 2, 10, 6]
    assert report.as_dict() == {"clipped_box": 1, "degenerate_box": 3}


def test_unknown_category_errors_naming_the_annotation(tmp_path, helpers):
    helpers.write_image(tmp_path / "0001.png", 30, 40)
    data = _dict(helpers, [helpers.coco_ann(17, 1, [1, 1, 5, 5], category_id=99)])
    with pytest.raises(DatasetError, match="annotation id 17 has category id 99"):
        clean_coco_dict(data, image_dir=tmp_path, report=DataReport())
    report = DataReport(on_bad="skip")
    with pytest.warns(UserWarning, match="category id 99"):
        cleaned = clean_coco_dict(data, image_dir=tmp_path, report=report)
    assert cleaned["annotations"] == [] and report["unknown_category"] == 1


@pytest.mark.parametrize("bbox", [[1, 2, float("nan"), 4], [1, 2, 3], None])
def test_malformed_bbox_is_a_clear_error(tmp_path, helpers, bbox):
    helpers.write_image(tmp_path / "0001.png", 30, 40)
    ann = {"id": 5, "image_id": 1, "category_id": 3, "bbox": bbox, "iscrowd": 0}
    with pytest.raises(DatasetError, match="annotation id 5 has"):
        clean_coco_dict(_dict(helpers, [ann]), image_dir=tmp_path, report=DataReport())


def test_annotation_of_unknown_image(tmp_path, helpers):
    helpers.write_image(tmp_path / "0001.png", 30, 40)
    data = _dict(helpers, [helpers.coco_ann(8, 42, [1, 1, 5, 5])])
    with pytest.raises(DatasetError, match="annotation id 8 refers to unknown image id 42"):
        clean_coco_dict(data, image_dir=tmp_path, report=DataReport())


def test_missing_image_drops_its_annotations_silently_under_skip(tmp_path, helpers):
    helpers.write_image(tmp_path / "0002.png", 30, 40)
    images = [helpers.coco_image(1), helpers.coco_image(2)]
    anns = [helpers.coco_ann(1, 1, [1, 1, 5, 5]), helpers.coco_ann(2, 2, [1, 1, 5, 5])]
    report = DataReport(on_bad="skip")
    with pytest.warns(UserWarning, match=r"0001\.png \(image id 1\) does not exist"):
        cleaned = clean_coco_dict(_dict(helpers, anns, images), image_dir=tmp_path, report=report)
    assert [i["id"] for i in cleaned["images"]] == [2]
    assert [a["id"] for a in cleaned["annotations"]] == [2]
    assert report.as_dict() == {"missing_image": 1}


def test_duplicate_ids_are_errors(helpers):
    images = [helpers.coco_image(1), helpers.coco_image(2), helpers.coco_image(1, name="x.png")]
    with pytest.raises(DatasetError, match=r"f\.json: duplicate image ids \[1\]"):
        validate_coco_dict(_dict(helpers, [], images), source="f.json")
    anns = [helpers.coco_ann(4, 1, [1, 1, 2, 2]), helpers.coco_ann(4, 1, [1, 1, 3, 3])]
    with pytest.raises(DatasetError, match=r"duplicate annotation ids \[4\]"):
        validate_coco_dict(_dict(helpers, anns), source="f.json")


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ("  \n", "is empty"), ("{not json", "not valid JSON"),
     ('{"annotations": []}', "not a COCO instances file"),
     ('{"images": [], "categories": [{"id": 1, "name": "a"}]}', "contains no images")],
)
def test_bad_annotation_files(tmp_path, content, message):
    path = tmp_path / "instances_x.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        load_coco_json(path)
    assert "instances_x.json" in str(info.value)


def test_image_without_size_is_an_error(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 0, "height": 5}],
            "categories": [{"id": 1, "name": "a"}]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="image id 1 has an invalid size"):
        load_coco_json(path)


def test_category_maps_are_contiguous_in_id_order():
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"},
            {"id": 13, "name": "stop"}]
    names, to_label, to_cat = category_maps(cats)
    assert names == ["person", "stop", "toothbrush"]
    assert to_label == {1: 1, 13: 2, 90: 3}
    assert to_cat == {1: 1, 2: 13, 3: 90}
