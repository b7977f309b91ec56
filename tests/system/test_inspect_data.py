"""tools/inspect_data.py as a user runs it: on a tiny generated shapes set (the two PNGs at the
right size and not blank, report.md and the printed coverage line, the default folder and nothing
else written), on raccoon (the box counts equal the <object> elements of its train split's XML
files) and with bad input (one line, exit code 2).

The command lines run in this process (helpers/run_tool.py), one in a new interpreter.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.run_tool import run_tool

from detector.data import generate_shapes_dataset

pytestmark = pytest.mark.slow  # builds datasets and draws figures (a few seconds each)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SIZE, NUM_TRAIN, SHOWN = 64, 12, 5
TINY = [f"dataset.num_train={NUM_TRAIN}", "dataset.num_val=4", f"dataset.image_size={SIZE}",
        f"dataset.min_size={SIZE}", f"dataset.max_size={SIZE}", f"num_images={SHOWN}"]
COVERAGE = re.compile(r"^anchor coverage \(IoU >= 0\.5\): \d{1,3}\.\d %$", re.MULTILINE)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    return generate_shapes_dataset(root=tmp_path_factory.mktemp("data") / "shapes",
                                   num_train=NUM_TRAIN, num_val=4, image_size=SIZE)


def _image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a readable image"
    return image


def _not_blank(image: np.ndarray) -> None:
    assert image.std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > 50


def test_shapes_default_folder_pictures_report_and_printed_lines(shapes_root, tmp_path):
    done = run_tool("inspect_data.py", [f"dataset.root={shapes_root}", *TINY], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "outputs" / "inspect_data" / "shapes_train"  # <dataset>_<split>
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # no run folder, no .hydra
    assert sorted(p.name for p in out.iterdir()) == ["boxes.png", "contact_sheet.png", "report.md"]
    assert COVERAGE.search(done.stdout), done.stdout
    assert re.search(r"^anchor coverage \(IoU >= 0\.7\): \d{1,3}\.\d %$", done.stdout, re.M)
    assert f"report and figures: {out.relative_to(tmp_path)}" in done.stdout
    report = (out / "report.md").read_text()
    assert COVERAGE.search(report.replace("- anchor coverage", "anchor coverage"))
    assert "| small |" in report and "| rectangle |" in report
    # 5 tiles of 64 px: 3 columns x 2 rows, 4 px around each cell
    sheet = _image(out / "contact_sheet.png")
    assert sheet.shape == (2 * (SIZE + 4) + 4, 3 * (SIZE + 4) + 4, 3)
    _not_blank(sheet[4:4 + SIZE, 4:4 + SIZE])  # the first tile holds a picture
    boxes = _image(out / "boxes.png")
    assert boxes.shape[0] > 300 and boxes.shape[1] > 600
    _not_blank(boxes)


def test_shapes_val_split_in_a_new_interpreter(shapes_root, tmp_path):
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "tools" / "inspect_data.py"),
                           f"dataset.root={shapes_root}", *TINY, "split=val", "num_images=0",
                           "model.backbone.output_stride=8",
                           f"output_dir={tmp_path / 'out'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "shapes (val split): 4 images" in done.stdout
    assert ", stride 8, offset 0.5" in done.stdout  # the anchors' stride follows the backbone
    assert COVERAGE.search(done.stdout)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["boxes.png", "report.md"]


def _raccoon_objects(root: Path) -> int:
    """The <object> elements (not difficult) of the XML files the train split names."""
    with open(root / "data" / "train_labels.csv", newline="") as f:
        names = {row[0] for row in list(csv.reader(f))[1:] if row}
    total = 0
    for name in names:
        for obj in ET.parse(root / "annotations" / f"{Path(name).stem}.xml").iter("object"):
            total += obj.findtext("difficult", "0").strip() != "1"
    return total


def test_raccoon_counts_match_the_xml_files(raccoon_root, tmp_path):
    objects = _raccoon_objects(raccoon_root)
    done = run_tool("inspect_data.py", ["experiment=raccoon", f"dataset.root={raccoon_root}",
                                        "num_images=2", f"output_dir={tmp_path}"],
                    cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    assert f"boxes per class: raccoon {objects}\n" in done.stdout
    assert f", 1 class, {objects} boxes;" in done.stdout
    assert COVERAGE.search(done.stdout)
    assert f"| raccoon | {objects} |" in (tmp_path / "report.md").read_text()
    # every raccoon image has a box, so at least its best anchor is positive
    positives = re.search(r"^RPN positive anchors per image: ([0-9.]+) \(median", done.stdout, re.M)
    assert positives and float(positives.group(1)) >= 1.0
    assert "- RPN positive anchors per image: " in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("args", [
    ["nosuchkey=1"],
    ["dataset=voc", "dataset.root=/nonexistent/VOC2007"],
    ["split=test"],
    ["num_images=-1"],
    ["dataset.anchor_sizes=[32,-1]"],
], ids=["unknown-key", "missing-dataset", "bad-split", "negative-images", "bad-anchors"])
def test_bad_input_is_one_line_and_exit_2(args, shapes_root, tmp_path):
    done = run_tool("inspect_data.py", [f"dataset.root={shapes_root}", *TINY, *args,
                                        f"output_dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "out").exists()
