"""Studies across runs: run folders read back, seed groups and their differences, comparison
reports (tables and plots), error analyses of their detections (``analyze``: TIDE error types,
calibration, confusion, per-class AP against frequency) and the sweep index a Hydra multirun
keeps. No Hydra here."""
from detector.study.analysis import AnalysisOptions
from detector.study.analysis_report import AnalysisReport, analyze
from detector.study.report import Report, compare
from detector.study.runs import Run, StudyError, find_runs, load_run
from detector.study.stats import difference, mean_std
from detector.study.summary import build_study

__all__ = ["AnalysisOptions", "AnalysisReport", "Report", "Run", "StudyError", "analyze",
           "build_study", "compare", "difference", "find_runs", "load_run", "mean_std"]
