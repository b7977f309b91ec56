"""Studies across runs: run folders read back, seed groups and their differences, comparison
reports (tables and plots), error analyses of their detections (``analyze``: TIDE error types,
calibration, confusion, per-class AP against frequency) and the sweep index a Hydra multirun
keeps. No Hydra here."""
from detector.study.analysis import AnalysisOptions, AnalysisReport, analyze
from detector.study.outcome import (
    DIVERGED,
    FINAL_RESULTS,
    FINISHED,
    INCOMPLETE,
    diverged_record,
    finished_record,
)
from detector.study.report import Report, compare
from detector.study.runs import Run, StudyError, find_runs, load_run
from detector.study.stats import difference, mean_std
from detector.study.summary import build_study

__all__ = ["DIVERGED", "FINAL_RESULTS", "FINISHED", "INCOMPLETE", "AnalysisOptions",
           "AnalysisReport", "Report", "Run", "StudyError", "analyze", "build_study", "compare",
           "difference", "diverged_record", "finished_record", "find_runs", "load_run",
           "mean_std"]
