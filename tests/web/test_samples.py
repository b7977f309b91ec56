"""Sample images from a run's own val split (detector/web/samples.py)."""

from __future__ import annotations

import logging

from detector.data import generate_shapes_dataset
from detector.web import sample_images


def _shapes_config(root, num_val: int = 5) -> dict:
    """The dataset part of a checkpoint's config, as train_net stores it (resolved), and the set
    it describes (a description never generates it)."""
    generate_shapes_dataset(root=root, num_train=2, num_val=num_val, image_size=64)
    val = {"_target_": "detector.data.ShapesDetection", "root": str(root), "split": "val",
           "num_train": 2, "num_val": num_val, "image_size": 64, "on_bad": "error",
           "transforms": {"_target_": "detector.data.build_transforms", "train": False,
                          "min_size": 64, "max_size": 64}}
    return {"name": "shapes", "val": val}


def test_samples_come_from_the_val_split_images_with_objects_first(tmp_path):
    paths = sample_images(_shapes_config(tmp_path / "shapes"), count=3)
    assert len(paths) == 3 and len(set(paths)) == 3
    for path in paths:
        assert path.is_file() and path.parent == tmp_path / "shapes" / "val"


def test_asking_for_more_than_there_are(tmp_path):
    assert len(sample_images(_shapes_config(tmp_path / "shapes", num_val=2), count=6)) == 2


def test_no_dataset_or_missing_data_gives_no_samples_and_a_log_line(tmp_path, caplog):
    assert sample_images(None) == []
    assert sample_images({"name": "shapes"}) == []  # a config without a val split
    coco = {"_target_": "detector.data.CocoDetection", "root": str(tmp_path / "nowhere"),
            "split": "val"}
    with caplog.at_level(logging.WARNING):
        assert sample_images({"name": "coco", "val": coco}) == []
    assert "no sample images" in caplog.text
