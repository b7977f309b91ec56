"""A comparison report: runs in, one folder out with summary.md, summary.csv, curves.png,
pr_curves.png and (runs that differ in one numeric key) lr_sweep.png.

    from detector.study import compare
    report = compare(["outputs/multirun/2026-11-30_12-00-00"], "outputs/compare")
    print(report.text)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detector.study.plots import has_pr_data, numeric_key, plot_curves, plot_pr_curves, plot_sweep
from detector.study.runs import check_same_dataset, find_runs
from detector.study.summary import Study, build_study, difference_lines, group_table, run_table

__all__ = ["Report", "compare", "markdown_table", "summary_text"]


@dataclass
class Report:
    """What :func:`compare` wrote: the folder, its files and the summary as printed."""

    out_dir: Path
    files: list[Path]
    text: str
    study: Study


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """Header row + data rows as a GitHub markdown table (``|`` in cells escaped)."""
    cells = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def summary_text(study: Study) -> str:
    """The report's markdown: runs, groups (mean +- std over seeds), the difference of two."""
    keys = ", ".join(study.keys) or "none (one run, or identical configs)"
    parts = [f"# Comparison of {len(study.runs)} runs", "",
             f"Config keys that differ: {keys}.", "", "## Runs", "",
             markdown_table(run_table(study))]
    if any(len(g.runs) > 1 for g in study.groups):
        parts += ["", "## Groups (runs that differ only by seed: mean +- std over finished runs)",
                  "", markdown_table(group_table(study))]
    diffs = difference_lines(study)
    if diffs:
        parts += ["", "## Difference (B - A)", "", *(f"- {line}" for line in diffs)]
    return "\n".join(parts) + "\n"


def _write_csv(path: Path, rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["" if v is None else v for v in row] for row in rows])
    return path


def compare(arguments: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Report:
    """Compare the runs under ``arguments`` (run folders, sweep folders or globs) into
    ``out_dir``. Raises StudyError (one sentence) for no runs or mixed datasets."""
    runs = find_runs(arguments)
    check_same_dataset(runs)
    study = build_study(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = summary_text(study)
    (out / "summary.md").write_text(text)
    files = [out / "summary.md", _write_csv(out / "summary.csv", run_table(study, raw=True)),
             plot_curves(study, out / "curves.png")]
    if has_pr_data(study):
        files.append(plot_pr_curves(study, out / "pr_curves.png"))
    key = numeric_key(study)
    if key is not None:
        files.append(plot_sweep(study, key, out / "lr_sweep.png"))
    return Report(out, files, text, study)
