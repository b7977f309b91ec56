"""Where and why runs differ, beyond one AP number: TIDE error decomposition, calibration,
confusion and per-class AP against training frequency for finished runs, grouped by seed as in
:func:`detector.study.compare`, into one folder with ``analysis.md`` and figures.

    from detector.study.analysis import analyze
    report = analyze(["outputs/multirun/2026-12-03_15-00-00"], "outputs/analysis")
    print(report.text)

A run is analysed from the detections its evaluation wrote: ``final_results.json`` (written at
the end of training) or ``checkpoints/<name>_<split>_results.json`` (``tools/eval.py``), COCO
results with the original category ids, scored against the annotation file that the run's
``config.json`` names for that split (relative paths are taken from the current folder, as
training took them). A run without them is listed with the reason, not analysed.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.evaluation.coco_eval import evaluate_coco
from detector.study.calibration import Reliability, d_ece, reliability
from detector.study.confusion import confusion_matrix
from detector.study.errors import (
    TP,
    Boxes,
    ErrorAnalysis,
    classify_errors,
    coco_from_dict,
    detections,
    error_dap,
    ground_truth,
)
from detector.study.outcome import FINAL_RESULTS, FINISHED
from detector.study.runs import Run, StudyError, check_same_dataset, find_runs
from detector.study.summary import Study, build_study

__all__ = ["AnalysisOptions", "AnalysisReport", "RunAnalysis", "analyze", "analyze_run",
           "class_frequency", "find_detections", "split_files"]


@dataclass(frozen=True)
class AnalysisOptions:
    """``min_score``: the operating point of the error counts, the confusion matrix and the
    gallery; ``t_f``/``t_b``: TIDE's foreground/background IoU; ``bins`` and ``calib_min_score``:
    the D-ECE's bins over [calib_min_score, 1]; ``worst``: gallery images per run."""

    min_score: float = 0.5
    t_f: float = 0.5
    t_b: float = 0.1
    bins: int = 10
    calib_min_score: float = 0.3
    worst: int = 6


@dataclass
class RunAnalysis:
    """One run, analysed (``note`` None) or not (``note`` says why).

    Attributes:
        counts: error counts at ``min_score`` (``ERROR_TYPES`` and ``tp``).
        dap: ``AP50`` and the AP50 gained by fixing each error type (all detections).
        d_ece / class_d_ece: overall and per class name (None: no detection to judge).
        class_ap50 / frequency: per class name: AP50, and instances in the train split.
        is_tp: of every detection (``det``) at IoU ``t_f`` (calibration, score histograms);
            ``kinds``: the error verdicts at the operating point (``operating`` detections).
    """

    run: Run
    note: str | None = None
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    dap: dict[str, float] = field(default_factory=dict)
    d_ece: float | None = None
    class_d_ece: dict[str, float | None] = field(default_factory=dict)
    reliability: Reliability | None = None
    class_ap50: dict[str, float | None] = field(default_factory=dict)
    frequency: dict[str, int] | None = None
    confusion: np.ndarray | None = None
    det: Boxes | None = None
    all_kinds: np.ndarray | None = None
    gt: Boxes | None = None
    operating: Boxes | None = None
    kinds: ErrorAnalysis | None = None
    coco: dict | None = None
    image_dir: Path | None = None

    @property
    def analysed(self) -> bool:
        return self.note is None


def find_detections(run: Run) -> tuple[Path, str] | None:
    """(results file, the split it is of) of a run: ``final_results.json`` (val), else the
    newest ``checkpoints/*_<split>_results.json`` that ``tools/eval.py`` wrote."""
    if (run.path / FINAL_RESULTS).is_file():
        return run.path / FINAL_RESULTS, "val"
    found = sorted((run.path / "checkpoints").glob("*_results.json"),
                   key=lambda p: (p.stem.startswith("final_"), p.stat().st_mtime))
    for path in reversed(found):
        match = re.search(r"_(train|val)_results$", path.stem)
        if match:
            return path, match.group(1)
    return None


def split_files(config: Mapping[str, Any], split: str) -> tuple[Path, Path] | None:
    """(annotation JSON, image folder) of a split of a run's flattened config (COCO layout:
    ``root/annotations/instances_<split>.json`` and ``root/<split>/``, or the config's
    ``ann_file``/``image_dir``); None for datasets without a COCO file (VOC XML)."""
    key = f"dataset.{split}"
    if "Voc" in str(config.get(f"{key}._target_", "")) or f"{key}.root" not in config:
        return None
    root = Path(str(config[f"{key}.root"]))
    name = str(config.get(f"{key}.split", split))
    ann = config.get(f"{key}.ann_file") or Path("annotations") / f"instances_{name}.json"
    images = config.get(f"{key}.image_dir") or name
    return root / ann, root / images


def class_frequency(coco_dict: Mapping[str, Any]) -> dict[str, int]:
    """Instances (non-crowd annotations) per class name, in category order."""
    names = {c["id"]: c["name"] for c in coco_dict["categories"]}
    counts = dict.fromkeys(names.values(), 0)
    for ann in coco_dict["annotations"]:
        if not ann.get("iscrowd", 0) and ann["category_id"] in names:
            counts[names[ann["category_id"]]] += 1
    return counts


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StudyError(f"cannot read {path}: {error}") from None


def _inputs(run: Run) -> tuple[list, dict, Path, dict | None]:
    """(results, val annotations, image folder, train annotations or None); StudyError (the
    note) when something is missing."""
    found = find_detections(run)
    if found is None:
        why = "" if run.status == FINISHED else f"{run.label}, "
        raise StudyError(f"{why}no detections ({FINAL_RESULTS}, or "
                         f"checkpoints/*_val_results.json from tools/eval.py)")
    results_path, split = found
    files = split_files(run.config, split)
    if files is None:
        raise StudyError("the dataset has no COCO annotation file in config.json (VOC XML?)")
    if not files[0].is_file():
        raise StudyError(f"annotations {files[0]} not found (run from the folder training "
                         f"ran in)")
    train = split_files(run.config, "train")
    train_coco = _read_json(train[0]) if train and train[0].is_file() else None
    return _read_json(results_path), _read_json(files[0]), files[1], train_coco


def analyze_run(run: Run, options: AnalysisOptions = AnalysisOptions()) -> RunAnalysis:
    """Every measure of one run (see :class:`RunAnalysis`); never raises for a run that lacks
    its inputs: the returned ``note`` says what is missing."""
    try:
        results, coco, image_dir, train_coco = _inputs(run)
        return _measure(run, results, coco, image_dir, train_coco, options)
    except (StudyError, ValueError, KeyError) as error:
        return RunAnalysis(run=run, note=str(error).splitlines()[0])


def _measure(run: Run, results: list, coco: dict, image_dir: Path, train_coco: dict | None,
             options: AnalysisOptions) -> RunAnalysis:
    gt, det = ground_truth(coco), detections(results)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    ids, names = [c["id"] for c in cats], [c["name"] for c in cats]
    everything = classify_errors(gt, det, t_f=options.t_f, t_b=options.t_b)
    is_tp = everything.kind == TP
    operating = det.subset(det.scores >= options.min_score)
    kinds = classify_errors(gt, operating, t_f=options.t_f, t_b=options.t_b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no detections: AP 0
        pr = evaluate_coco(coco_from_dict(coco), results)["pr_iou50"]["precision"]
    calib = {"bins": options.bins, "min_score": options.calib_min_score}
    return RunAnalysis(
        run=run, class_names=names, category_ids=ids, counts=kinds.counts(),
        dap=error_dap(coco, det, analysis=everything),
        d_ece=d_ece(det.scores, is_tp, **calib),
        class_d_ece={n: d_ece(det.scores[det.labels == c], is_tp[det.labels == c], **calib)
                     for c, n in zip(ids, names, strict=True)},
        reliability=reliability(det.scores, is_tp, **calib),
        class_ap50={n: None if pr.get(n) is None else float(np.mean(pr[n])) for n in names},
        frequency=class_frequency(train_coco) if train_coco else None,
        confusion=confusion_matrix(gt, det, category_ids=ids, min_score=options.min_score,
                                   iou=options.t_f),
        det=det, all_kinds=everything.kind, gt=gt, operating=operating, kinds=kinds, coco=coco,
        image_dir=image_dir)


@dataclass
class AnalysisReport:
    """What :func:`analyze` wrote: the folder, its files, the markdown as printed, the runs
    (grouped as ``study.groups``) and their analyses by run name."""

    out_dir: Path
    files: list[Path]
    text: str
    study: Study
    analyses: dict[str, RunAnalysis]


def analyze(arguments: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
            options: AnalysisOptions = AnalysisOptions()) -> AnalysisReport:
    """Analyse the runs under ``arguments`` (run folders, sweep folders or globs) into
    ``out_dir``: analysis.md, errors.png, calibration.png, confusion.png,
    class_ap_vs_frequency.png and worst/. Raises StudyError (one sentence) for no runs or
    mixed datasets."""
    from detector.study.analysis_plots import write_figures  # matplotlib, cv2: on use only
    from detector.study.analysis_text import analysis_text

    runs = find_runs(arguments)
    check_same_dataset(runs)
    study = build_study(runs)
    analyses = {run.name: analyze_run(run, options) for run in runs}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = analysis_text(study, analyses, options)
    (out / "analysis.md").write_text(text)
    files = [out / "analysis.md", *write_figures(study, analyses, out, options)]
    return AnalysisReport(out, files, text, study, analyses)
