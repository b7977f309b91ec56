"""A comparison report: runs in, one folder out with summary.md, summary.csv, curves.png,
pr_curves.png and (runs that differ in one numeric key that changes the training, see
:func:`detector.study.plots.numeric_key`) lr_sweep.png.

    from detector.study import compare
    report = compare(["outputs/multirun/2026-11-30_12-00-00"], "outputs/compare")
    print(report.text)
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.study.plots import has_pr_data, numeric_key, plot_curves, plot_pr_curves, plot_sweep
from detector.study.runs import StudyError, check_same_dataset, find_runs, skipped_line
from detector.study.summary import Study, build_study, difference_lines, group_table, run_table
from detector.study.tables import markdown_table
from detector.untrusted import (
    RunFileError,
    shown,
    shown_text,
    writable_dir,
    writable_file,
)

__all__ = ["Report", "compare", "csv_cell", "prepare_out_dir", "summary_text"]

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Report:
    """What :func:`compare` wrote: the folder, its files and the summary as printed."""

    out_dir: Path
    files: list[Path]
    text: str
    study: Study
    skipped: list[tuple[str, str]] = field(default_factory=list)


def summary_text(study: Study, skipped: Sequence[tuple[str, str]] = ()) -> str:
    """The report's markdown: runs, groups (mean +- std over seeds), the difference of two;
    the runs ``skipped`` (malformed files) in one line, with their reasons."""
    keys = ", ".join(study.keys) or "none (one run, or identical configs)"
    parts = [f"# Comparison of {len(study.runs)} runs", "",
             *([skipped_line(skipped), ""] if skipped else []),
             f"Config keys that differ: {keys}.", "", "## Runs", "",
             markdown_table(run_table(study))]
    if any(len(g.runs) > 1 for g in study.groups):
        parts += ["", "## Groups (runs that differ only by seed: mean +- std over finished runs)",
                  "", markdown_table(group_table(study))]
    diffs = difference_lines(study)
    if diffs:
        parts += ["", "## Difference (B - A)", "", *(f"- {line}" for line in diffs)]
    return shown_text("\n".join(parts)) + "\n"


def csv_cell(value: Any) -> Any:
    """A value for a CSV cell: None as empty; a string escaped (``untrusted.shown``) and, when a
    spreadsheet would read it as a formula (it starts with ``= + - @``, tab or CR and is not
    a plain number such as ``-0.5``), prefixed with ``'`` (OWASP's CSV injection advice)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    text = shown(value, limit=None)
    if text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def _write_csv(path: Path, rows: list[list]) -> Path:
    with writable_file(path).open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([[csv_cell(v) for v in row] for row in rows])
    return path


def prepare_out_dir(out_dir: str | os.PathLike) -> Path:
    """The report folder, made; RunFileError -> StudyError when a file is in the way."""
    try:
        return writable_dir(Path(out_dir))
    except RunFileError as error:
        raise StudyError(str(error)) from None


def compare(arguments: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Report:
    """Compare the runs under ``arguments`` (run folders, sweep folders or globs) into
    ``out_dir``. Runs with malformed files are left out (``Report.skipped``, and one line of
    the summary). Raises StudyError (one sentence) for no runs or mixed datasets."""
    skipped: list[tuple[str, str]] = []
    runs = find_runs(arguments, skipped)
    check_same_dataset(runs)
    study = build_study(runs)
    out = prepare_out_dir(out_dir)
    text = summary_text(study, skipped)
    writable_file(out / "summary.md").write_text(text, encoding="utf-8")
    files = [out / "summary.md", _write_csv(out / "summary.csv", run_table(study, raw=True)),
             plot_curves(study, writable_file(out / "curves.png"))]
    if has_pr_data(study):
        files.append(plot_pr_curves(study, writable_file(out / "pr_curves.png")))
    key = numeric_key(study)
    if key is not None:
        files.append(plot_sweep(study, key, writable_file(out / "lr_sweep.png")))
    return Report(out, files, text, study, skipped)
