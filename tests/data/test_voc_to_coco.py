"""datasets/voc_to_coco.py: the CLI writes a COCO JSON equal to what VocDetection trains on."""

import json
import os
import shlex
from pathlib import Path

import hydra
import numpy as np
import pytest
from helpers.load_file import load_file
from hydra import compose, initialize_config_dir

from detector.data.coco import CocoDetection
from detector.data.voc import VocDetection

SCRIPT = Path(__file__).resolve().parents[2] / "datasets" / "voc_to_coco.py"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def cli():
    return load_file(SCRIPT, "voc_to_coco")


def test_converts_and_round_trips_through_coco(cli, make_voc, tmp_path):
    objects = [("cat", 1, 1, 10, 5, 0), ("dog", 3, 4, 45, 20, 0), ("cat", 2, 2, 8, 8, 1)]
    root = make_voc({"a": (40, 30, objects), "b": (30, 40, [])}, splits={"val": ["a", "b"]})
    out = tmp_path / "out" / "instances_val.json"
    assert cli.main(["--root", str(root), "--split", "val", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == ["cat", "dog"]
    assert [a["bbox"] for a in data["annotations"]] == [[0, 0, 10, 5], [2, 3, 38, 17], [1, 1, 7, 7]]
    assert [a["iscrowd"] for a in data["annotations"]] == [0, 0, 1]  # difficult: ignored at eval

    as_coco = CocoDetection(root=root, ann_file=out, image_dir="JPEGImages")
    as_voc = VocDetection(root=root, split="val")
    assert as_coco.image_ids == as_voc.image_ids and as_coco.class_names == as_voc.class_names
    for c, v in zip(as_coco.records, as_voc.records, strict=True):
        np.testing.assert_array_equal(c.boxes, v.boxes)
        np.testing.assert_array_equal(c.labels, v.labels)


def test_bad_input_exits_with_message(cli, make_voc, tmp_path, capsys):
    root = make_voc({"a": (40, 30, [("cat", 1, 1, 10, 5, 0)])})
    (root / "Annotations" / "a.xml").write_text("")
    assert cli.main(["--root", str(root), "--out", str(tmp_path / "x.json")]) == 1
    assert "a.xml is empty" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_raccoon_conversion(cli, raccoon_root, tmp_path):
    out = tmp_path / "raccoon_test.json"
    cli.main(["--root", str(raccoon_root), "--split-file", "data/test_labels.csv", "--out",
              str(out)])
    data = json.loads(out.read_text())
    assert (len(data["images"]), len(data["annotations"]), len(data["categories"])) == (40, 44, 1)


@pytest.mark.parametrize("cwd", [".", "elsewhere"])
def test_a_relative_root_by_split_name_and_the_printed_overrides_read_it_back(
        cli, make_voc, tmp_path, monkeypatch, capsys, cwd):
    """datasets/README's command: a relative --root with --split (the root was joined twice,
    exit 1); what it prints reads the JSON back through configs/dataset/coco.yaml."""
    root = make_voc({"a": (40, 30, [("cat", 1, 1, 10, 5, 0)]), "b": (30, 40, [])},
                    splits={"test": ["a", "b"]})
    (tmp_path / cwd).mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path / cwd)
    relative = os.path.relpath(root)
    out = Path(relative) / "annotations" / "instances_test.json"  # inside the root
    assert cli.main(["--root", relative, "--split", "test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 2 images, 1 box, 1 class\n" in printed
    (line,) = [ln for ln in printed.splitlines() if ln.startswith("read it with: ")]
    overrides = shlex.split(line.removeprefix("read it with: "))
    assert overrides == ["dataset=coco", f"dataset.root={relative}",
                         "dataset.val_ann_file=annotations/instances_test.json",
                         "dataset.val_image_dir=JPEGImages"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    as_coco = hydra.utils.instantiate(cfg.dataset.val)
    as_voc = VocDetection(root=relative, split="test")
    assert as_coco.image_ids == as_voc.image_ids == [1, 2]
    assert as_coco.class_names == as_voc.class_names == ["cat"]
    assert as_coco[0]["orig_size"] == as_voc[0]["orig_size"] == (30, 40)


def test_an_output_outside_the_root_is_printed_absolute(cli, make_voc, tmp_path, monkeypatch,
                                                         capsys):
    root = make_voc({"a": (40, 30, [("cat", 1, 1, 10, 5, 0)])})
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--root", "VOC", "--out", "converted/all.json"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == (f"read it with: dataset=coco dataset.root=VOC dataset.val_ann_file="
                    f"{tmp_path / 'converted' / 'all.json'} dataset.val_image_dir=JPEGImages")
    assert root == tmp_path / "VOC"
