"""Drawing touches exactly the box outline; curve plots read metrics.jsonl and write real PNGs."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from detector import visualize
from detector.visualize import (
    GT_COLOR,
    class_color,
    draw_detections,
    metric_series,
    plot_loss_comparison,
    plot_metrics,
    read_metrics_jsonl,
    save_image,
)

NAMES = ["cat", "dog"]
GREY = 128


def grey(h: int = 200, w: int = 200) -> np.ndarray:
    return np.full((h, w, 3), GREY, dtype=np.uint8)


# --- drawing ---------------------------------------------------------------------------------


def test_outline_is_drawn_on_the_box_edges_and_nowhere_inside():
    image = grey()
    # box covers pixel columns 20..179 and rows 30..169; 1 px lines at a 200 px image
    out = draw_detections(image, np.array([[20.0, 30.0, 180.0, 170.0]]), np.array([2]),
                          np.array([0.93]), class_names=NAMES)
    dog = class_color(2)
    for y, x in [(30, 100), (169, 100), (100, 20), (100, 179)]:  # top, bottom, left, right
        assert tuple(out[y, x]) == dog, (y, x)
    for y, x in [(100, 100), (100, 23), (33, 100), (166, 100), (100, 176), (100, 5), (190, 100)]:
        assert tuple(out[y, x]) == (GREY,) * 3, (y, x)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == GREY).all()  # the input is left alone


def test_caption_sits_above_the_box():
    out = draw_detections(grey(), np.array([[20.0, 60.0, 180.0, 170.0]]), np.array([1]),
                          np.array([0.5]), class_names=NAMES)
    assert (out[50:59, 20:40] != GREY).any()  # the "cat 0.50" tag
    assert (out[0:40] == GREY).all()  # but nothing far above it


def test_score_threshold_hides_weak_boxes_and_tensors_are_accepted():
    boxes = torch.tensor([[20.0, 30.0, 180.0, 170.0], [50.0, 50.0, 60.0, 60.0]])
    out = draw_detections(grey(), boxes, torch.tensor([1, 2]), torch.tensor([0.9, 0.1]),
                          class_names=NAMES, score_threshold=0.5)
    assert tuple(out[30, 100]) == class_color(1)
    assert (out[50:60, 50:60] == GREY).all()


def test_no_boxes_leave_the_image_unchanged():
    image = grey()
    out = draw_detections(image, np.zeros((0, 4)), np.zeros((0,), dtype=np.int64), np.zeros((0,)),
                          class_names=NAMES, gt_boxes=np.zeros((0, 4)))
    assert np.array_equal(out, image)
    assert np.array_equal(draw_detections(image, [], [], class_names=NAMES), image)


def test_gt_boxes_are_dashed():
    out = draw_detections(grey(), np.zeros((0, 4)), [], class_names=NAMES,
                          gt_boxes=np.array([[20.0, 30.0, 180.0, 170.0]]))
    top = out[30, 20:180]
    on = (top == GT_COLOR).all(axis=1)
    assert on[:6].all() and not on[6:12].any() and on[12:18].all()  # 6 px dash, 6 px gap
    assert (out[100, 21:179] == GREY).all()


def test_bad_image_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        draw_detections(np.zeros((10, 10, 3), np.float32), [], [], class_names=NAMES)


def test_save_image_round_trips_rgb(tmp_path):
    image = grey(20, 30)
    image[5, 7] = (255, 0, 0)  # pure red in RGB
    path = save_image(tmp_path / "sub" / "x.png", image)
    back = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert np.array_equal(cv2.cvtColor(back, cv2.COLOR_BGR2RGB), image)


# --- curves ----------------------------------------------------------------------------------


def write_jsonl(path, records, tail: str = ""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def full_run(n: int = 40) -> list[dict]:
    records = []
    for it in range(0, n, 2):
        parts = {k: 1.0 / (1 + it) for k in ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box")}
        records.append({"iter": it, "loss": sum(parts.values()), **parts, "lr": 0.01})
        if it % 10 == 0:
            records.append({"iter": it, "phase": "val", "AP": it / 100, "AP50": it / 50})
    return records


def read_png(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, "not a readable image"
    return image


def test_plot_metrics_writes_a_png_grid(tmp_path):
    src = write_jsonl(tmp_path / "metrics.jsonl", full_run())
    full = read_png(plot_metrics(src, tmp_path / "plots" / "curves.png"))
    only_loss = read_png(plot_metrics(src, tmp_path / "loss.png", keys=["loss"]))
    # 7 panels (5 losses, lr, AP/AP50) on a 3x3 grid vs a single panel
    assert full.shape[0] > 2 * only_loss.shape[0] and full.shape[1] > 2 * only_loss.shape[1]
    assert only_loss.shape[0] >= 200 and only_loss.shape[1] >= 300
    assert full.std() > 5  # something was drawn, not a blank canvas


def test_missing_keys_are_skipped(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", [{"iter": i, "loss": 1.0 / (i + 1)} for i in range(5)])
    one = read_png(plot_metrics(src, tmp_path / "a.png"))
    also = read_png(plot_metrics(src, tmp_path / "b.png", keys=["loss", "AP", "nope"]))
    assert one.shape == also.shape  # still a single panel


def test_nothing_to_plot_warns_but_writes(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", [{"iter": 0, "note": "started"}])
    with pytest.warns(UserWarning, match="nothing to plot"):
        read_png(plot_metrics(src, tmp_path / "empty.png"))


def test_series_split_by_step_and_skip_bad_values(tmp_path):
    records = [
        {"iter": 0, "step": 1, "loss": 2.0},
        {"iter": 1, "step": 1, "loss": float("nan")},
        {"iter": 2, "step": 1, "loss": 0.0},
        {"iter": 0, "step": 2, "loss": 3.0},
        {"step": 2, "loss": 9.0},  # no iter
        {"iter": 1, "step": 2, "loss": None},
    ]
    src = write_jsonl(tmp_path / "m.jsonl", records, tail='{"iter": 3, "lo')  # half-written line
    with pytest.warns(UserWarning, match="not JSON"):
        loaded = read_metrics_jsonl(src)
    assert metric_series(loaded, "loss") == {
        "step 1": ([0.0, 2.0], [2.0, 0.0]), "step 2": ([0.0], [3.0])
    }
    assert metric_series(loaded, "loss", positive=True) == {
        "step 1": ([0.0], [2.0]), "step 2": ([0.0], [3.0])
    }
    both = metric_series([{"iter": 5, "step": 3, "phase": "val", "AP": 0.1}], "AP")
    assert both == {"step 3, phase val": ([5.0], [0.1])}


def test_loss_comparison_overlays_runs(tmp_path, monkeypatch):
    ce = write_jsonl(tmp_path / "ce.jsonl", full_run())
    focal = write_jsonl(tmp_path / "focal.jsonl", full_run(20))
    figures = []
    save = visualize._save_figure
    monkeypatch.setattr(visualize, "_save_figure", lambda fig, out: figures.append(fig) or
                        save(fig, out))
    image = read_png(plot_loss_comparison({"ce": ce, "focal": focal}, tmp_path / "cmp.png", smooth=3))
    assert image.shape[0] >= 300 and image.shape[1] >= 500
    # every run is drawn: one labelled line per (run, phase group) that has loss values
    expected = [f"{name} [{group}]" if group else name
                for name, path in (("ce", ce), ("focal", focal))
                for group in metric_series(read_metrics_jsonl(path), "loss", positive=True)]
    assert any(e.startswith("ce") for e in expected) and any(e.startswith("focal") for e in expected)
    (ax,) = figures[0].axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == expected
    assert [t.get_text() for t in ax.get_legend().get_texts()] == expected
    assert all(len(line.get_xdata()) > 0 for line in lines)
