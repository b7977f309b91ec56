"""final_metrics.json of a finished or diverged run: hand-written metrics.jsonl files, the newest
finite training record kept, and the count of finished iterations."""
from __future__ import annotations

import json

from detector.study.outcome import (
    DIVERGED,
    FINISHED,
    diverged_record,
    finished_record,
    last_logged_losses,
)


def test_last_logged_losses_returns_the_newest_finite_training_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"iter": 10, "loss": 3.0, "loss_cls": 2.0, "lr": 0.1},
        {"iter": 20, "loss": 2.0, "loss_cls": 1.5, "grad_norm": 4.0},
        {"iter": 20, "AP": 0.2},  # an evaluation line, no loss
        {"iter": 30, "loss": 1.0, "loss_cls": 0.5, "loss_box": 0.5},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert last_logged_losses(path) == {"iter": 30, "loss": 1.0, "loss_cls": 0.5, "loss_box": 0.5}


def test_a_diverged_run_counts_the_iterations_it_finished(tmp_path):
    """The guard stopped iteration 7 (1-based): 6 iterations finished; the last finite losses
    are the newest logged ones, the non-finite terms strings."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 2, "loss": 2.0}\n{"iter": 4, "loss": 1.5, "loss_cls": 1.0}\n')
    record = diverged_record(iteration=7, lr=0.01, terms={"loss_cls": float("nan")},
                             metrics_jsonl=path, wall_time_s=1.5)
    assert record == {"status": DIVERGED, "reason": "non-finite loss_cls", "iteration": 7,
                      "lr": 0.01, "nonfinite": {"loss_cls": "nan"}, "values": {"loss_cls": "nan"},
                      "last_finite": {"iter": 4, "loss": 1.5, "loss_cls": 1.0},
                      "iterations": 6, "wall_time_s": 1.5, "checkpoint": None}
    json.dumps(record, allow_nan=False)  # valid JSON
    first = diverged_record(iteration=1, lr=0.01, terms={"loss": float("inf")},
                            metrics_jsonl=tmp_path / "none.jsonl", wall_time_s=0.1,
                            checkpoint=tmp_path / "iter_0.pth")
    assert first["iterations"] == 0 and first["last_finite"] is None
    assert first["nonfinite"] == {"loss": "inf"} and first["checkpoint"].endswith("iter_0.pth")


def test_a_finished_run_counts_every_iteration():
    record = finished_record({"AP": 0.5}, iterations=120, wall_time_s=9.0, skipped_steps=2)
    assert record == {"AP": 0.5, "status": FINISHED, "iterations": 120, "wall_time_s": 9.0,
                      "skipped_steps": 2}
