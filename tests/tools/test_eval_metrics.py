"""tools/eval.py metric=coco|voc07|voc (one or a list) and results=PATH.json (a saved COCO results
file scored without any model), run in this process (helpers/run_tool.py) on a 3-image COCO-format
set whose classes are the tiny checkpoint's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.run_tool import run_tool
from helpers.tiny_checkpoint import TINY_CLASSES, TINY_SIZE

# (image id, category id, [x, y, w, h], iscrowd): category 4 has only a crowd/difficult box
GT = [(1, 1, [4, 4, 20, 20], 0), (1, 2, [30, 30, 24, 20], 0), (2, 3, [10, 12, 30, 30], 0),
      (3, 1, [8, 8, 16, 16], 0), (3, 4, [40, 40, 10, 10], 1)]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    (root / "val").mkdir()
    (root / "annotations").mkdir()
    images = []
    for image_id in (1, 2, 3):
        cv2.imwrite(str(root / "val" / f"{image_id}.png"),
                    np.full((TINY_SIZE, TINY_SIZE, 3), 40 * image_id, np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": TINY_SIZE,
                       "height": TINY_SIZE})
    annotations = [{"id": n + 1, "image_id": img, "category_id": cat, "bbox": box,
                    "area": box[2] * box[3], "iscrowd": crowd}
                   for n, (img, cat, box, crowd) in enumerate(GT)]
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(TINY_CLASSES)]
    (root / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": categories}))
    return root


def _dataset(root: Path) -> list[str]:
    return ["dataset=coco", f"dataset.root={root}", "dataset.val_split=val",
            f"dataset.min_size={TINY_SIZE}", f"dataset.max_size={TINY_SIZE}", "device=cpu",
            "num_workers=0"]


def _one_line_error(done, pattern: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert re.search(pattern, done.stderr), done.stderr


def test_eval_prints_and_writes_voc07_beside_coco(tiny_checkpoint, coco_root, tmp_path):
    """The checkpoint's VOC07 and COCO numbers, then the same numbers from its saved results
    file, scored with no model at all (results= needs no checkpoint)."""
    checkpoint = tmp_path / "run" / "final.pth"  # the session's checkpoint folder stays as is
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    own = checkpoint.parent / "final_val_metrics.json"  # the run's own evaluation (shapes)
    own.write_text('{"AP": 0.5}')
    done = run_tool("eval.py", [f"checkpoint={checkpoint}", *_dataset(coco_root),
                                "metric=[coco,voc07]", "num_visualize=0", "batch_size=3"],
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "VOC07 mAP " in done.stdout and "Average Precision  (AP)" in done.stdout
    folder = checkpoint.parent
    assert own.read_text() == '{"AP": 0.5}'  # another dataset: the run's own files stay
    stem = f"final_eval_coco_{coco_root.name}_val"
    assert sorted(p.name for p in folder.iterdir()) == [
        "final.pth", f"{stem}_detections", f"{stem}_metrics.json", f"{stem}_results.json",
        "final_val_metrics.json"]
    assert f"{stem}_metrics.json" in done.stdout
    metrics = json.loads((folder / f"{stem}_metrics.json").read_text())
    assert set(metrics["VOC07_per_class"]) == set(TINY_CLASSES)
    assert metrics["VOC07_positives"] == {"square": 2, "circle": 1, "triangle": 1, "ellipse": 0}
    assert metrics["VOC07_per_class"]["ellipse"] is None and "AP50" in metrics
    assert f"VOC07 mAP {'-' if metrics['VOC07'] is None else format(metrics['VOC07'], '.4f')}" \
        in done.stdout
    results = tmp_path / "saved.json"
    results.write_bytes((folder / f"{stem}_results.json").read_bytes())
    again = run_tool("eval.py", [f"results={results}", *_dataset(coco_root),
                                 "metric=[coco,voc07]", "checkpoint=/nonexistent.pth"],
                     cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    rescored = json.loads((tmp_path / "saved_metrics.json").read_text())
    assert rescored["num_detections"] == metrics["num_detections"] > 0
    for key in ("VOC07", "VOC07_per_class", "AP", "AP50", "per_class"):
        assert rescored[key] == metrics[key], key


def test_a_results_file_is_scored_without_a_model(coco_root, tmp_path):
    """Exact detections of every positive, and one FP below them: VOC AP 1 for each class with
    positives, ``-`` for ellipse (its only box is a crowd one)."""
    entries = [{"image_id": img, "category_id": cat, "bbox": box, "score": 0.9 - n / 10}
               for n, (img, cat, box, crowd) in enumerate(GT) if not crowd]
    entries.append({"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.01})
    results = tmp_path / "r.json"
    results.write_text(json.dumps(entries))
    done = run_tool("eval.py", [f"results={results}", *_dataset(coco_root), "metric=voc"],
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "VOC mAP 1.0000" in done.stdout and "Average Precision" not in done.stdout
    assert [line.split() for line in done.stdout.splitlines() if line.startswith("ellipse")] == \
        [["ellipse", "-", "0"]]
    metrics = json.loads((tmp_path / "r_metrics.json").read_text())
    assert metrics == {"VOC": 1.0, "VOC_per_class": {"square": 1.0, "circle": 1.0,
                                                     "triangle": 1.0, "ellipse": None},
                       "VOC_positives": {"square": 2, "circle": 1, "triangle": 1, "ellipse": 0}}


@pytest.mark.parametrize(("content", "pattern"), [
    ('[{"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]',
     r"r\.json: entry 0: image_id 99 is not an image of the ground truth$"),
    ('[{"image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5], "score": 0.5}]',
     r"entry 0: category_id 9 is not a category of the ground truth$"),
    ('[{"image_id": 1, "category_id": 1, "bbox": "0 0 5 5", "score": 0.5}]', r"bbox must be"),
    ('{"oops"', r"r\.json is not valid JSON"),
])
def test_a_bad_results_file_is_one_line_and_exit_2(coco_root, tmp_path, content, pattern):
    results = tmp_path / "r.json"
    results.write_text(content)
    done = run_tool("eval.py", [f"results={results}", *_dataset(coco_root), "metric=voc07"],
                    cwd=tmp_path)
    _one_line_error(done, pattern)
    assert not (tmp_path / "r_metrics.json").exists()


@pytest.mark.parametrize(("args", "pattern"), [
    (["metric=map"], r"metric must be one of coco, voc07, voc or a list of them, got 'map'"),
    (["metric=[voc07,bogus]"], r"metric must be one of"),
    (["metric=[]"], r"metric must be one of"),
])
def test_a_bad_metric_is_one_line_and_exit_2(coco_root, tmp_path, args, pattern):
    results = tmp_path / "r.json"
    results.write_text("[]")
    done = run_tool("eval.py", [f"results={results}", *_dataset(coco_root), *args], cwd=tmp_path)
    _one_line_error(done, pattern)


def test_results_without_a_dataset_is_one_line_and_exit_2(tmp_path):
    done = run_tool("eval.py", [f"results={tmp_path / 'r.json'}", "device=cpu"], cwd=tmp_path)
    _one_line_error(done, r"results= needs dataset=")


def _eval_cfg(dataset: dict | None, split: str = "val"):
    from omegaconf import OmegaConf
    return OmegaConf.create({"split": split, **({"dataset": dataset} if dataset else {})})


VOC = {"name": "voc", "root": "datasets/data/VOCdevkit/VOC2007",
       "val": {"_target_": "detector.data.VocDetection", "root": "datasets/data/VOCdevkit/VOC2007",
               "split": "test", "split_file": None, "transforms": {"min_size": 600}}}


@pytest.mark.parametrize(("composed", "split", "stem"), [
    (None, "val", "final_val"),  # the run's own dataset (no dataset=)
    (VOC, "val", "final_val"),  # dataset= composed as the run's own (transforms aside)
    ({**VOC, "val": {**VOC["val"], "transforms": {"min_size": 300}}}, "val", "final_val"),
    (None, "train", "final_train"),
    ({**VOC, "name": "coco"}, "val", "final_eval_coco_VOC2007_val"),
    ({**VOC, "root": "/data/other/VOC2012", "val": {**VOC["val"], "root": "/data/other/VOC2012"}},
     "val", "final_eval_voc_VOC2012_val"),
    ({**VOC, "val": {**VOC["val"], "split": "val"}}, "val", "final_eval_voc_VOC2007_val"),
    ({**VOC, "val": {**VOC["val"], "split_file": "mine.txt"}}, "val",
     "final_eval_voc_VOC2007_val"),
])
def test_outputs_on_another_dataset_are_named_by_it(composed, split, stem):
    """Evaluating on another dataset (name, root or split differ) never takes the names of the
    run's own final_<split>_* files."""
    from detector_cli.evaluate import output_stem
    state = {"config": {"dataset": VOC}}
    assert output_stem(_eval_cfg(composed, split), Path("run/checkpoints/final.pth"),
                       state) == stem


def test_proposals_sets_the_test_time_top_n_and_names_the_outputs(tiny_checkpoint, coco_root,
                                                                 tmp_path):
    """eval.py proposals=N: the RPN keeps N proposals per image at test time (its pre-NMS top-n
    raised to at least N, training's values untouched), in files of their own; a bad value is
    one line."""
    import torch

    from detector.checkpoint import load_checkpoint
    from detector_cli.evaluate import build_model

    state = load_checkpoint(tiny_checkpoint)
    own = build_model(tiny_checkpoint, state, torch.device("cpu")).proposal_generator
    model = build_model(tiny_checkpoint, state, torch.device("cpu"),
                        {"proposals": own.pre_nms_top_n[1] + 5})
    rpn = model.proposal_generator
    assert rpn.post_nms_top_n == (own.post_nms_top_n[0], own.pre_nms_top_n[1] + 5)
    assert rpn.pre_nms_top_n == (own.pre_nms_top_n[0], own.pre_nms_top_n[1] + 5)
    fewer = build_model(tiny_checkpoint, state, torch.device("cpu"), {"proposals": 1})
    assert fewer.proposal_generator.pre_nms_top_n == own.pre_nms_top_n
    assert fewer.proposal_generator.post_nms_top_n == (own.post_nms_top_n[0], 1)

    checkpoint = tmp_path / "run" / "final.pth"  # the session's checkpoint folder stays as is
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    common = [f"checkpoint={checkpoint}", *_dataset(coco_root), "num_visualize=0", "batch_size=3"]
    done = run_tool("eval.py", [*common, "proposals=7"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stem = f"final_eval_coco_{coco_root.name}_val_proposals7"
    assert (checkpoint.parent / f"{stem}_metrics.json").is_file()
    # the proposals' recall is measured at the count kept (7 < 100: one column) and printed
    recall = json.loads((checkpoint.parent / f"{stem}_metrics.json").read_text())["proposal_recall"]
    assert recall["limits"] == [7] and recall["iou_thresholds"] == [0.5, 0.7]
    assert recall["rows"]["all"]["boxes"] > 0 and "R50@7" in done.stdout
    quiet = run_tool("eval.py", [*common, "proposals=7", "proposal_recall=false"], cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "proposal_recall" not in json.loads((checkpoint.parent / f"{stem}_metrics.json")
                                               .read_text())
    _one_line_error(run_tool("eval.py", [*common, "proposal_recall=2"], cwd=tmp_path),
                    r"proposal_recall must be true or false")
    for bad in ("proposals=0", "proposals=1.5", "proposals=true"):
        refused = run_tool("eval.py", [*common, bad], cwd=tmp_path)
        _one_line_error(refused, r"proposals must be null or an integer in \[1, 100000\]")
