"""tools/analyze.py on fabricated run folders: every file written, seed groups and their
difference in analysis.md, a run without detections listed (not a crash), tools/eval.py output
found, mixed datasets refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.load_file import load_tool

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "star"}]
FIGURES = ("errors.png", "calibration.png", "confusion.png", "class_ap_vs_frequency.png")


def _coco(boxes: dict[int, list[tuple[int, list[float]]]]) -> dict:
    """image id -> [(category id, xywh)]."""
    anns = [{"id": n, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
             "iscrowd": 0}
            for n, (i, c, b) in enumerate(((i, c, b) for i, objs in boxes.items()
                                           for c, b in objs), 1)]
    return {"images": [{"id": i, "file_name": f"{i:03d}.png", "width": 64, "height": 64}
                       for i in boxes],
            "annotations": anns, "categories": CATEGORIES}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A COCO-layout set: 4 val images of one square and one star each; a train split of 10
    squares and 1 star."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    (root / "annotations").mkdir(parents=True)
    val = _coco({i: [(1, [4, 4, 20, 20]), (2, [36, 36, 20, 20])] for i in (1, 2, 3, 4)})
    train = _coco({i: [(1, [4, 4, 20, 20])] + ([(2, [36, 36, 20, 20])] if i == 1 else [])
                   for i in range(1, 11)})
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    (root / "annotations" / "instances_train.json").write_text(json.dumps(train))
    (root / "val").mkdir()
    for i in (1, 2, 3, 4):
        cv2.imwrite(str(root / "val" / f"{i:03d}.png"), np.full((64, 64, 3), 120, np.uint8))
    return root


def _results(errors: int) -> list[dict]:
    """Every box found (score 0.9); the first ``errors`` images also get a background false
    positive at 0.95 and a star labelled square at 0.8."""
    found = [{"image_id": i, "category_id": c, "bbox": b, "score": 0.9}
             for i in (1, 2, 3, 4) for c, b in ((1, [4, 4, 20, 20]), (2, [36, 36, 20, 20]))]
    for i in range(1, errors + 1):
        found += [{"image_id": i, "category_id": 2, "bbox": [40, 2, 10, 10], "score": 0.95},
                  {"image_id": i, "category_id": 1, "bbox": [36, 36, 20, 20], "score": 0.8}]
    return found


def _run(folder: Path, root: Path, *, loss: str, seed: int, results: list | None,
         dataset_name: str = "tiny", where: str = "final_results.json") -> Path:
    split = {"_target_": "detector.data.CocoDetection", "root": str(root)}
    cfg = {"seed": seed, "name": loss, "output_dir": str(folder),
           "dataset": {"name": dataset_name, "train": {**split, "split": "train"},
                       "val": {**split, "split": "val"}}, "loss": {"name": loss}}
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- experiment={loss}\n- seed={seed}\n")
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "final_metrics.json").write_text(json.dumps(
        {"AP": 0.5, "AP50": 0.8, "status": "finished", "iterations": 10, "wall_time_s": 1.0}))
    if results is not None:
        (folder / where).parent.mkdir(parents=True, exist_ok=True)
        (folder / where).write_text(json.dumps(results))
    return folder


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, dataset) -> Path:
    """ce seeds 0, 1 (4 and 3 images with errors), focal seeds 0, 1 (1 and 0), and a ce run
    with seed 2 that has no detections."""
    root = tmp_path_factory.mktemp("multirun") / "sweep"
    for (loss, seed), errors in {("ce", 0): 4, ("ce", 1): 3, ("focal", 0): 1,
                                 ("focal", 1): 0}.items():
        _run(root / f"experiment={loss},seed={seed}", dataset, loss=loss, seed=seed,
             results=_results(errors))
    _run(root / "experiment=ce,seed=2", dataset, loss="ce", seed=2, results=None)
    return root


@pytest.fixture(scope="module")
def tool():
    return load_tool("analyze.py")


def test_writes_every_file_and_groups_by_seed(tool, sweep, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert tool.main([str(sweep), "--out", str(out), "--worst", "2"]) == 0
    printed = capsys.readouterr().out
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name
    text = (out / "analysis.md").read_text()
    assert text in printed and str(out) in printed
    # the run without detections is listed with the reason
    assert "| experiment=ce,seed=2 | ce | 2 | not analysed: no detections" in text
    # ce seed 0: 4 background and 4 cls errors at 0.5, nothing missed (the cls targets)
    row = next(line for line in text.splitlines() if line.startswith("| experiment=ce,seed=0 "))
    assert "| 4 / +" in row and "| 0 / +0.000 |" in row
    assert "## Groups" in text and "| experiment=ce | 2/3 |" in text
    assert "## Difference (B - A): [experiment=focal] - [experiment=ce]" in text
    assert "- bkg n: -3.0000" in text  # paired by seed: (1 - 4 + 0 - 3) / 2
    assert "| experiment=ce | star | 1 |" in text  # train instances of the rare class
    worst = sorted(p.relative_to(out / "worst").as_posix() for p in (out / "worst").rglob("*.png"))
    assert worst == ["experiment=ce,seed=0/01_image1.png", "experiment=ce,seed=0/02_image2.png",
                     "experiment=ce,seed=1/01_image1.png", "experiment=ce,seed=1/02_image2.png",
                     "experiment=focal,seed=0/01_image1.png"]


def test_one_run_from_tools_eval_output(tool, dataset, tmp_path, capsys):
    run = _run(tmp_path / "run", dataset, loss="ce", seed=0, results=_results(1),
               where="checkpoints/final_val_results.json")
    assert tool.main([str(run)]) == 0
    text = (run / "analysis" / "analysis.md").read_text()
    assert "(1 analysed)" in text and "## Groups" not in text
    assert "| 1 / +" in text  # one background error


def test_runs_without_detections_are_listed_not_a_crash(tool, dataset, tmp_path):
    _run(tmp_path / "runs" / "a", dataset, loss="ce", seed=0, results=None)
    diverged = _run(tmp_path / "runs" / "b", dataset, loss="ce", seed=1, results=None)
    (diverged / "final_metrics.json").write_text(json.dumps(
        {"status": "diverged", "iteration": 60, "lr": 1000.0, "reason": "loss 7e+09 = ..."}))
    assert tool.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "analysis.md").read_text()
    assert "(0 analysed)" in text and "| a | 0 | not analysed: no detections" in text
    assert "| b | 1 | not analysed: diverged at it 60 (lr 1.0e+03), loss exploded, no det" in text
    assert all((tmp_path / "out" / name).is_file() for name in FIGURES)


def test_mixed_datasets_and_bad_arguments_are_one_line(tool, dataset, tmp_path, capsys):
    _run(tmp_path / "a", dataset, loss="ce", seed=0, results=_results(0))
    _run(tmp_path / "b", dataset, loss="ce", seed=1, results=_results(0), dataset_name="coco")
    assert tool.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "different datasets" in error
    assert tool.main([str(tmp_path / "nowhere")]) == 2
    assert tool.main([str(tmp_path / "a"), "--min-score", "2"]) == 2
