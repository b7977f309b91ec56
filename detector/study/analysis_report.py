"""The error analysis of runs as one folder: ``analysis.md`` (:mod:`detector.study.analysis_text`)
and the figures and worst-image gallery (:mod:`detector.study.analysis_plots`) of the measures of
:mod:`detector.study.analysis`, runs grouped by seed as in :func:`detector.study.compare`.

    from detector.study import analyze
    report = analyze(["outputs/multirun/2026-12-03_15-00-00"], "outputs/analysis")
    print(report.text)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detector.study.analysis import AnalysisOptions, RunAnalysis, analyze_run
from detector.study.analysis_plots import write_figures
from detector.study.analysis_text import analysis_text
from detector.study.report import prepare_out_dir
from detector.study.runs import check_same_dataset, find_runs
from detector.study.summary import Study, build_study
from detector.untrusted import writable_file

__all__ = ["AnalysisReport", "analyze"]

_DEFAULTS = AnalysisOptions()  # frozen


@dataclass
class AnalysisReport:
    """What :func:`analyze` wrote: the folder, its files, the markdown as printed, the runs
    (grouped as ``study.groups``) and their analyses by run name."""

    out_dir: Path
    files: list[Path]
    text: str
    study: Study
    analyses: dict[str, RunAnalysis]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def analyze(arguments: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            options: AnalysisOptions = _DEFAULTS) -> AnalysisReport:
    """Analyse the runs under ``arguments`` (run folders, sweep folders or globs) into
    ``out_dir``: analysis.md, errors.png, calibration.png, confusion.png,
    class_ap_vs_frequency.png and worst/. Runs with malformed files are left out
    (``AnalysisReport.skipped``, one line of the text); gallery images that cannot be shown are
    counted in it. Raises StudyError (one sentence) for no runs or mixed datasets."""
    skipped: list[tuple[str, str]] = []
    runs = find_runs(arguments, skipped)
    check_same_dataset(runs)
    study = build_study(runs)
    analyses = {run.name: analyze_run(run, options) for run in runs}
    out = prepare_out_dir(out_dir)
    left_out: Counter[str] = Counter()
    figures = write_figures(study, analyses, out, options, left_out)
    text = analysis_text(study, analyses, options, skipped=skipped, left_out=left_out)
    writable_file(out / "analysis.md").write_text(text, encoding="utf-8")
    return AnalysisReport(out, [out / "analysis.md", *figures], text, study, analyses, skipped)
