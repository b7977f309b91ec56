"""The generated shapes dataset: deterministic, idempotent, loads through the COCO code path."""

import json
import logging

import numpy as np
import pytest

from detector.data.coco import CocoDetection
from detector.data.image_io import read_image_rgb
from detector.data.report import DatasetError
from detector.data.shapes import (
    CLASS_NAMES,
    ShapesDetection,
    generate_shapes_dataset,
    render_shapes_image,
)

SMALL = {"num_train": 10, "num_val": 4, "image_size": 64}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory):
    """The default-parameter set (the training config's default dataset)."""
    return generate_shapes_dataset(root=tmp_path_factory.mktemp("default") / "shapes")


def _contents(root):
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    return {str(f): (root / f).read_bytes() for f in files}


def test_same_seed_identical_other_seed_different(tmp_path):
    a = generate_shapes_dataset(root=tmp_path / "a", seed=3, **SMALL)
    b = generate_shapes_dataset(root=tmp_path / "b", seed=3, **SMALL)
    c = generate_shapes_dataset(root=tmp_path / "c", seed=4, **SMALL)
    assert _contents(a) == _contents(b)
    assert _contents(a)["annotations/instances_train.json"] != _contents(c)[
        "annotations/instances_train.json"]


def test_idempotent_and_regenerates_on_new_parameters(tmp_path):
    root = generate_shapes_dataset(root=tmp_path / "s", **SMALL)
    stamp = (root / "train" / "000000.png").stat().st_mtime_ns
    generate_shapes_dataset(root=root, **SMALL)
    assert (root / "train" / "000000.png").stat().st_mtime_ns == stamp
    generate_shapes_dataset(root=root, **{**SMALL, "num_train": 5})
    assert len(list((root / "train").iterdir())) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folder left behind


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        generate_shapes_dataset(root=tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_rendered_boxes_are_inside_the_image_and_not_tiny():
    rng = np.random.default_rng(0)
    for _ in range(60):
        image, boxes, labels = render_shapes_image(rng, image_size=96)
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert len(boxes) == len(labels) <= 4 and set(labels.tolist()) <= {1, 2, 3, 4}
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 96)
        sides = boxes[:, 2:] - boxes[:, :2]
        # the thinnest shape is an ellipse/rectangle of aspect 0.55 at the smallest diameter
        assert np.all(sides >= 0.25 * 96 * 0.55)
        # every shape spans at least ~60% of the smallest diameter (a quarter of the image) along
        # its longer side: two cells of a stride-16 map at 128 px
        assert np.all(sides.max(axis=1) >= 0.6 * 0.25 * 96)


def test_default_set_shape_and_coco_code_path(default_root):
    train = ShapesDetection(root=default_root, split="train")
    val = ShapesDetection(root=default_root, split="val")
    assert isinstance(train, CocoDetection)
    assert (len(train), len(val)) == (600, 150)
    assert train.class_names == list(CLASS_NAMES)
    raw = json.loads((default_root / "annotations" / "instances_train.json").read_text())
    assert sum(len(r.boxes) for r in train.records) == len(raw["annotations"])
    per_image = np.array([len(r.boxes) for r in train.records])
    assert 0.05 < np.mean(per_image == 0) < 0.2  # some negatives, ~10 %
    assert per_image.max() == 4
    labels = np.concatenate([r.labels for r in train.records])
    counts = np.bincount(labels, minlength=5)[1:]
    assert counts.min() > 0.15 * counts.sum()  # the four classes are balanced
    sides = np.concatenate([r.boxes[:, 2:] - r.boxes[:, :2] for r in train.records])
    assert sides.min() >= 16 * 0.55 and sides.max() <= 80.01  # diameters 16..80 px
    assert train.report.as_dict() == {}
    assert read_image_rgb(train.records[0].path).shape == (128, 128, 3)
    sample = val[0]
    assert sample["image"].shape == (3, 128, 128) and sample["image_id"] == val.image_ids[0]


def test_generating_a_set_is_a_warning_with_the_path(tmp_path, caplog):
    root = tmp_path / "mistyped" / "shapes"
    with caplog.at_level(logging.WARNING, logger="detector.data.shapes"):
        generate_shapes_dataset(root=root, **SMALL)
    (record,) = [r for r in caplog.records if r.name == "detector.data.shapes"]
    assert record.levelno == logging.WARNING and str(root.resolve()) in record.getMessage()
    assert "none there yet" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detector.data.shapes"):
        generate_shapes_dataset(root=root, **SMALL)  # already there: nothing to say
        assert caplog.records == []
        generate_shapes_dataset(root=root, **{**SMALL, "num_val": 2})
    assert "other parameters" in caplog.records[0].getMessage()


def _train_counts(root) -> np.ndarray:
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    return np.bincount([a["category_id"] for a in coco["annotations"]], minlength=5)[1:]


def test_class_ratios_zero_leaves_classes_out_and_val_stays_balanced(tmp_path):
    root = generate_shapes_dataset(root=tmp_path / "s", class_ratios=[1, 1, 0, 0], **SMALL)
    counts = _train_counts(root)
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == counts[3] == 0
    val = json.loads((root / "annotations" / "instances_val.json").read_text())
    balanced = generate_shapes_dataset(root=tmp_path / "b", **SMALL)
    assert val == json.loads((balanced / "annotations" / "instances_val.json").read_text())
    assert json.loads((root / "manifest.json").read_text())["class_ratios"] == [1, 1, 0, 0]


def test_class_ratios_give_the_requested_frequencies_deterministically(tmp_path):
    params = {"num_train": 400, "num_val": 1, "image_size": 64, "class_ratios": [1, 1, 1, 0.1]}
    a = generate_shapes_dataset(root=tmp_path / "a", **params)
    b = generate_shapes_dataset(root=tmp_path / "b", **params)
    assert _contents(a) == _contents(b)
    counts = _train_counts(a)
    # ~1000 objects: a star is drawn with p = 0.1 / 3.1; the commonest classes agree to ~10 %
    assert counts.sum() > 800
    common = counts[:3]
    assert common.min() > 0.8 * common.max()
    assert 0.05 < counts[3] / common.mean() < 0.17


def test_equal_ratios_are_the_balanced_set_and_bad_ratios_one_line(tmp_path):
    equal = generate_shapes_dataset(root=tmp_path / "e", class_ratios=[2, 2, 2, 2], **SMALL)
    default = generate_shapes_dataset(root=tmp_path / "d", **SMALL)
    assert _contents(equal) == _contents(default)
    for bad in ([1, 1, 1], [1, -1, 1, 1], [0, 0, 0, 0], [1, float("nan"), 1, 1]):
        with pytest.raises(DatasetError, match="class_ratios must be 4 non-negative") as info:
            generate_shapes_dataset(root=tmp_path / "bad", class_ratios=bad, **SMALL)
        assert "\n" not in str(info.value)
