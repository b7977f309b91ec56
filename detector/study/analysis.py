"""Where and why runs differ, beyond one AP number: the measures of one finished run (TIDE error
decomposition, calibration, confusion and per-class AP against training frequency) and their
values over a seed group. :mod:`detector.study.analysis_text` and
:mod:`detector.study.analysis_plots` render them; :func:`detector.study.analyze`
(:mod:`detector.study.analysis_report`) writes the report.

A run is analysed from the detections its evaluation wrote: ``final_results.json`` (written at
the end of training) or ``checkpoints/<name>_<split>_results.json`` (``tools/eval.py``), COCO
results with the original category ids, scored against the annotation file that the run's
``config.json`` names for that split (relative paths are taken from the current folder, as
training took them). A run without them, or whose files are malformed (see
:mod:`detector.study.coco_checks`), is listed with the reason, not analysed. Every file read
lies under the dataset root the run's config names (links resolved); gallery images outside it
are left out and counted.
"""

from __future__ import annotations

import re
import stat
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detector.evaluation.coco_eval import evaluate_coco
from detector.run_files import CHECKPOINTS, COMPLETED, FINAL_RESULTS
from detector.study.calibration import Reliability, d_ece, reliability
from detector.study.coco_checks import check_coco, check_results, inside
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
from detector.study.runs import Run, StudyError
from detector.study.summary import Group, seed_of
from detector.untrusted import RunFileError, read_json, shown

__all__ = ["AnalysisOptions", "Measure", "RunAnalysis", "analyze_run", "class_frequency",
           "find_detections", "group_values", "split_files"]


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
    dataset_root: Path | None = None

    @property
    def analysed(self) -> bool:
        return self.note is None


def find_detections(run: Run) -> tuple[Path, str] | None:
    """(results file, the split it is of) of a run: ``final_results.json`` (val), else the
    newest ``checkpoints/*_<split>_results.json`` that ``tools/eval.py`` wrote."""
    if (run.path / FINAL_RESULTS).is_file():
        return run.path / FINAL_RESULTS, "val"
    found = []
    for path in (run.path / CHECKPOINTS).glob("*_results.json"):
        try:
            info = path.stat()
        except (OSError, ValueError):
            continue  # a dangling or looping link
        if stat.S_ISREG(info.st_mode):
            found.append((path.stem.startswith("final_"), info.st_mtime, path))
    for _, _, path in sorted(found, reverse=True):
        match = re.search(r"_(train|val)_results$", path.stem)
        if match:
            return path, match.group(1)
    return None


def split_files(config: Mapping[str, Any], split: str) -> tuple[Path, Path] | None:
    """(annotation JSON, image folder) of a split of a run's flattened config (COCO layout:
    ``root/annotations/instances_<split>.json`` and ``root/<split>/``, or the config's
    ``ann_file``/``image_dir``); None for datasets without a COCO file (VOC XML).

    Raises:
        StudyError: a value that is not a string, or files that would lie outside the root.
    """
    found = _dataset_files(config, split)
    return None if found is None else found[1:]


def _dataset_files(config: Mapping[str, Any], split: str) -> tuple[Path, Path, Path] | None:
    """(root, annotation JSON, image folder) of a split (see :func:`split_files`)."""
    key = f"dataset.{split}"
    if "Voc" in str(config.get(f"{key}._target_", "")) or f"{key}.root" not in config:
        return None
    values = {k: config.get(f"{key}.{k}") for k in ("root", "split", "ann_file", "image_dir")}
    if not all(v is None or isinstance(v, str) for v in values.values()) or not values["root"]:
        raise StudyError(f"config.json: dataset.{split} root/split/ann_file/image_dir are not "
                         f"strings")
    root = Path(values["root"])
    name = values["split"] or split
    ann = root / (values["ann_file"] or Path("annotations") / f"instances_{name}.json")
    images = root / (values["image_dir"] or name)
    if not (inside(ann, root) and inside(images, root)):
        raise StudyError(f"config.json: the {split} annotations or images "
                         f"({shown(ann, limit=80)}, {shown(images, limit=80)}) are not under "
                         f"the dataset root {shown(root, limit=80)}")
    return root, ann, images


def class_frequency(coco_dict: Mapping[str, Any]) -> dict[str, int]:
    """Instances (non-crowd annotations) per class name, in category order."""
    names = {c["id"]: c["name"] for c in coco_dict["categories"]}
    counts = dict.fromkeys(names.values(), 0)
    for ann in coco_dict["annotations"]:
        if not ann.get("iscrowd", 0) and ann["category_id"] in names:
            counts[names[ann["category_id"]]] += 1
    return counts


MAX_JSON_BYTES = 2 << 30  # detections and annotation files


def _read_coco(path: Path) -> dict:
    return check_coco(read_json(path, limit=MAX_JSON_BYTES), shown(path))


def _inputs(run: Run) -> tuple[list, dict, tuple[Path, Path], dict | None]:
    """(results, val annotations, (dataset root, image folder), train annotations or None);
    StudyError or RunFileError (the note) when something is missing or malformed."""
    found = find_detections(run)
    if found is None:
        why = "" if run.status in COMPLETED else f"{run.label}, "
        raise StudyError(f"{why}no detections ({FINAL_RESULTS}, or "
                         f"checkpoints/*_val_results.json from tools/eval.py)")
    results_path, split = found
    files = _dataset_files(run.config, split)
    if files is None:
        raise StudyError("the dataset has no COCO annotation file in config.json (VOC XML?)")
    root, ann, images = files
    if not ann.is_file():
        raise StudyError(f"annotations {shown(ann)} not found (run from the folder training "
                         f"ran in)")
    coco = _read_coco(ann)
    results = check_results(read_json(results_path, limit=MAX_JSON_BYTES), shown(results_path))
    known = {c["id"] for c in coco["categories"]}
    if any(det["category_id"] not in known for det in results):
        raise StudyError(f"{shown(results_path)}: detections of categories that "
                         f"{shown(ann)} does not have")
    train = _dataset_files(run.config, "train")
    train_coco = _read_coco(train[1]) if train and train[1].is_file() else None
    return results, coco, (root, images), train_coco


def analyze_run(run: Run, options: AnalysisOptions = AnalysisOptions()) -> RunAnalysis:
    """Every measure of one run (see :class:`RunAnalysis`); never raises for a run that lacks
    its inputs: the returned ``note`` says what is missing."""
    try:
        results, coco, folders, train_coco = _inputs(run)
        return _measure(run, results, coco, folders, train_coco, options)
    except (StudyError, RunFileError, ValueError, KeyError) as error:
        return RunAnalysis(run=run, note=shown(str(error).splitlines()[0], limit=300))


def _measure(run: Run, results: list, coco: dict, folders: tuple[Path, Path],
             train_coco: dict | None, options: AnalysisOptions) -> RunAnalysis:
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
        dataset_root=folders[0], image_dir=folders[1])


Measure = Callable[[RunAnalysis], float | None]


def group_values(group: Group, analyses: Mapping[str, RunAnalysis],
                 measure: Measure) -> dict[Any, float]:
    """seed -> value over the group's analysed runs (keyed by position when a seed is unknown
    or repeated, so that nothing pairs)."""
    pairs = [(seed_of(r), measure(analyses[r.name])) for r in group.runs
             if analyses[r.name].analysed]
    pairs = [(s, v) for s, v in pairs if v is not None]
    seeds = [s for s, _ in pairs]
    if None in seeds or len(set(seeds)) < len(seeds):
        return {(group.label, i): v for i, (_, v) in enumerate(pairs)}
    return dict(pairs)
