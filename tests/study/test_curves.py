"""Training curves: metrics.jsonl read back (detector.run_files) and plotted (detector.study.curves)."""
from __future__ import annotations

import json

import cv2
import pytest

from detector.run_files import read_metrics_jsonl
from detector.study.curves import metric_series, plot_metrics


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
    with pytest.warns(UserWarning, match="not a JSON object"):
        loaded = read_metrics_jsonl(src)
    assert metric_series(loaded, "loss") == {
        "step 1": ([0.0, 2.0], [2.0, 0.0]), "step 2": ([0.0], [3.0])
    }
    assert metric_series(loaded, "loss", positive=True) == {
        "step 1": ([0.0], [2.0]), "step 2": ([0.0], [3.0])
    }
    both = metric_series([{"iter": 5, "step": 3, "phase": "val", "AP": 0.1}], "AP")
    assert both == {"step 3, phase val": ([5.0], [0.1])}
