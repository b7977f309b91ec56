"""The side-by-side table of ``tools/bench_peer.py``: the peer's and our run, evaluated the same
way, with the settings in which they differ (``comparison.md`` and ``comparison.json``).

A run's metrics are ``detector.evaluation.evaluate_coco``'s dict (None: no evaluation, e.g. a
diverged run); undefined values (no ground truth in an area range) are None and print as n/a.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from detector.fileio import atomic_write_text

__all__ = ["COLUMNS", "COMPARISON_JSON", "COMPARISON_MD", "RunResult", "class_ap50",
           "format_comparison", "setting_differences", "write_comparison"]

COMPARISON_MD, COMPARISON_JSON = "comparison.md", "comparison.json"
COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs")
MAX_CLASS_COLUMNS = 8  # more classes: per-class AP50 in a second table, one row per class


@dataclass(frozen=True)
class RunResult:
    """One row of the table.

    Attributes:
        name (str): ``peer`` or ``ours``. folder (str): its run folder.
        status (str): finished | diverged | failed (a note says why).
        metrics (dict, optional): the final evaluation. iterations (int): steps taken.
        sec_per_step (float, optional): ``detector.benchmark.peer.step_time``.
        wall_time_s (float, optional): training and final evaluation.
        note (str, optional): why there are no metrics.
    """

    name: str
    folder: str
    status: str
    metrics: dict | None = None
    iterations: int = 0
    sec_per_step: float | None = None
    wall_time_s: float | None = None
    note: str | None = None


def class_ap50(metrics: Mapping[str, Any] | None) -> dict[str, float | None]:
    """AP at IoU 0.5 per class name: the mean of COCOeval's interpolated precision over its 101
    recall thresholds (``metrics["pr_iou50"]``), None for a class without ground truth."""
    if not metrics or not isinstance(metrics.get("pr_iou50"), Mapping):
        return {}
    curves = metrics["pr_iou50"].get("precision", {})
    return {name: None if values is None else sum(values) / len(values)
            for name, values in curves.items()}


def setting_differences(peer: Mapping[str, str], ours: Mapping[str, str]
                        ) -> list[tuple[str, str, str]]:
    """(setting, peer, ours) for each setting whose displayed values differ, in ``peer``'s
    order (a setting one side lacks shows as ``-``)."""
    keys = [*peer, *(k for k in ours if k not in peer)]
    return [(k, peer.get(k, "-"), ours.get(k, "-")) for k in keys
            if peer.get(k, "-") != ours.get(k, "-")]


def _number(value, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _class_names(results: Sequence[RunResult]) -> list[str]:
    names: list[str] = []
    for result in results:
        names += [n for n in class_ap50(result.metrics) if n not in names]
    return names


def format_comparison(results: Sequence[RunResult], *, differences: Sequence[tuple[str, str, str]],
                      notes: Sequence[str] = (), title: str = "peer vs ours") -> str:
    """The markdown report: the metrics table (one row per run), per-class AP50 (columns, or a
    second table when there are more than ``MAX_CLASS_COLUMNS`` classes), the settings that
    differ and ``notes``."""
    names = _class_names(results)
    wide = len(names) <= MAX_CLASS_COLUMNS
    head = ["run", "status", *COLUMNS, *(f"AP50 {n}" for n in names if wide),
            "s/step", "iterations", "wall time (s)"]
    lines = [f"# {title}", "", _row(head), _row(["---"] * len(head))]
    for r in results:
        per_class = class_ap50(r.metrics)
        cells = [r.name, r.status, *(_number((r.metrics or {}).get(c)) for c in COLUMNS),
                 *(_number(per_class.get(n)) for n in names if wide),
                 _number(r.sec_per_step), str(r.iterations), _number(r.wall_time_s, 1)]
        lines.append(_row(cells))
    if names and not wide:
        lines += ["", "Per-class AP50:", "", _row(["class", *(r.name for r in results)]),
                  _row(["---"] * (len(results) + 1))]
        tables = [class_ap50(r.metrics) for r in results]
        lines += [_row([n, *(_number(t.get(n)) for t in tables)]) for n in names]
    lines += ["", *(f"- {r.name}: {r.note}" for r in results if r.note)]
    lines += ["", "## peer settings that differ from ours", "", _row(["setting", "peer", "ours"]),
              _row(["---"] * 3), *(_row(d) for d in differences)]
    lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines).replace("\n\n\n", "\n\n").rstrip() + "\n"


def write_comparison(folder: Path, results: Sequence[RunResult], *,
                     peer_settings: Mapping[str, str], ours_settings: Mapping[str, str],
                     notes: Sequence[str] = (), extra: Mapping[str, Any] | None = None) -> str:
    """Write ``comparison.md`` and ``comparison.json`` into ``folder``; returns the markdown.
    The JSON holds each run's row (its metrics without the PR curves, plus ``class_AP50``),
    both settings lists, the differences, the notes and ``extra`` (the command's settings)."""
    differences = setting_differences(peer_settings, ours_settings)
    text = format_comparison(results, differences=differences, notes=notes)
    rows = []
    for r in results:
        row = asdict(r)
        if r.metrics is not None:
            row["metrics"] = {k: v for k, v in r.metrics.items() if k != "pr_iou50"}
            row["metrics"]["class_AP50"] = class_ap50(r.metrics)
        rows.append(row)
    record = {"runs": rows, "peer_settings": dict(peer_settings),
              "ours_settings": dict(ours_settings),
              "differences": [dict(zip(("setting", "peer", "ours"), d, strict=True))
                              for d in differences],
              "notes": list(notes), **dict(extra or {})}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / COMPARISON_MD, text)
    atomic_write_text(folder / COMPARISON_JSON, json.dumps(record, indent=1, allow_nan=False))
    return text
