"""The side-by-side tables of detector/inspection/report.py on hand-built state dicts."""

from __future__ import annotations

import torch

from detector.inspection.report import _layer_table, _tag_runs, inspect_state, summary_table


def _state(scale: float, *, with_head: bool) -> dict[str, torch.Tensor]:
    conv = torch.tensor([0.5, -0.5, 0.0, 1.0]).reshape(1, 1, 2, 2) * scale  # mean |w| 0.5 x scale
    state = {
        "backbone.features.0.weight": conv,
        "backbone.features.1.weight": torch.tensor([1.0, 0.0]) * scale,  # BN gamma: 1 prunable
        "backbone.features.1.bias": torch.zeros(2),
        "backbone.features.1.running_mean": torch.zeros(2),
        "backbone.features.1.running_var": torch.ones(2),
    }
    if with_head:
        state["roi_head.fc6.weight"] = torch.full((2, 3), 0.25)
    return state


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_layer_table_puts_each_column_of_both_runs_side_by_side():
    runs = [inspect_state(_state(1.0, with_head=True), label="ce"),
            inspect_state(_state(2.0, with_head=False), label="focal")]
    _tag_runs(runs)
    table = _layer_table(runs)
    header = table.splitlines()[0]
    assert "| mean abs w (A) | mean abs w (B) | std (A) | std (B) |" in header
    rows = {row[0]: row for row in _rows(table)}
    conv = rows["conv1_1"]
    assert conv[1:4] == ["backbone.conv1", "conv", "4"]
    assert conv[4:6] == ["0.5", "1"]           # mean |w|: A, then B (twice the weights)
    assert conv[8:10] == ["25.00%", "25.00%"]  # one of four weights is exactly 0 in both
    head = rows["roi_head.fc6"]                # only in A: B's cells are "-"
    assert head[4:6] == ["0.25", "-"]
    assert head[6:] == ["0", "-", "0.00%", "-", "0.00%", "-"]


def test_summary_table_counts_prunable_channels_per_run():
    runs = [inspect_state(_state(1.0, with_head=False), label="a"),
            inspect_state(_state(1.0, with_head=False), label="b")]
    rows = {row[0]: row for row in _rows(summary_table(runs))}
    # columns: block, then (weights, mean |w|, near 0 abs, near 0 rel, prunable) x (A, B), ...
    assert rows["backbone.conv1"][9:11] == ["1/2", "1/2"]
