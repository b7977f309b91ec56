"""The analysis figures: error counts and dAP50 per type, reliability diagrams with the score
distributions of true and false positives, confusion matrices and per-class AP50 against
training frequency; one colour per seed group. Agg canvases only.

Shorthand: G groups, K classes, B calibration bins.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detector.study.analysis import AnalysisOptions, RunAnalysis, group_values
from detector.study.calibration import reliability
from detector.study.errors import ERROR_TYPES, FP_TYPES, TP
from detector.study.gallery import write_gallery
from detector.study.summary import Group, Study
from detector.untrusted import plain_text, writable_file

__all__ = ["plot_calibration", "plot_class_ap", "plot_confusion", "plot_errors", "write_figures"]

_CELL_TEXT, _TICKS = 30, 100  # confusion matrices: counts written / classes named up to these


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(writable_file(path), dpi=90)
    return path


def _done(group: Group, analyses: Mapping[str, RunAnalysis]) -> list[RunAnalysis]:
    return [analyses[r.name] for r in group.runs if analyses[r.name].analysed]


def _no_data(fig: Figure, text: str) -> None:
    fig.text(0.5, 0.5, text, ha="center", va="center", color="0.4")


@plain_text
def plot_errors(study: Study, analyses: Mapping[str, RunAnalysis], path: Path) -> Path:
    """Two panels: error count per type and AP50 gained by fixing it, a bar per group
    (mean over its analysed runs, std as the error bar)."""
    fig = _figure(11.0, 4.2)
    groups = [g for g in study.groups if _done(g, analyses)]
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(ERROR_TYPES))
    for p, (suffix, title) in enumerate(((" n", "errors at the operating point (count)"),
                                         (" dAP50", "AP50 gained by fixing the type"))):
        ax = fig.add_subplot(1, 2, p + 1)
        for g, group in enumerate(groups):
            stats = []
            for kind in ERROR_TYPES:
                key = "counts" if suffix == " n" else "dap"
                values = list(group_values(
                    group, analyses, lambda a, k=kind, key=key: getattr(a, key).get(k)).values())
                stats.append((np.mean(values), np.std(values, ddof=1) if len(values) > 1 else 0)
                             if values else (np.nan, 0))
            means, stds = zip(*stats, strict=True)
            ax.bar(x + (g - (len(groups) - 1) / 2) * width, means, width, yerr=stds,
                   color=f"C{g % 10}", capsize=2,
                   label=f"{group.label} (n={len(_done(group, analyses))})" if p == 0 else None)
        ax.set_xticks(x, ERROR_TYPES)
        ax.set(title=title, xlabel="error type", ylabel=title.split(" (")[0])
        ax.set_ylim(bottom=0)
        ax.grid(True, axis="y", alpha=0.3)
    if groups:
        fig.legend(loc="outside upper center", ncols=min(3, len(groups)), fontsize="small")
    else:
        _no_data(fig, "no analysed run")
    return _save(fig, path)


def _pooled(done: list[RunAnalysis]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, is_tp, FP type code) of every judged detection of the runs."""
    scores = np.concatenate([a.det.scores for a in done])
    kinds = np.concatenate([a.all_kinds for a in done])
    keep = np.isin(kinds, range(len(FP_TYPES) + 1))  # not the ignored ones
    return scores[keep], kinds[keep] == TP, kinds[keep]


@plain_text
def plot_calibration(study: Study, analyses: Mapping[str, RunAnalysis], path: Path,
                     options: AnalysisOptions) -> Path:
    """Left: precision against confidence per bin for each group (its runs' detections pooled),
    the diagonal being perfect calibration. Right: scores of true and false positives."""
    fig = _figure(11.0, 4.4)
    ax, hist = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax.plot([0, 1], [0, 1], color="0.5", linestyle=":", label="perfectly calibrated")
    bins = np.linspace(0, 1, 41)
    for g, group in enumerate(study.groups):
        done = _done(group, analyses)
        if not done:
            continue
        scores, is_tp, _ = _pooled(done)
        diagram = reliability(scores, is_tp, bins=options.bins,
                              min_score=options.calib_min_score)
        eces = [a.d_ece for a in done if a.d_ece is not None]
        ece = f", D-ECE {np.mean(eces):.3f}" if eces else ""
        full = diagram.count > 0
        ax.plot(diagram.confidence[full], diagram.precision[full], marker="o",
                color=f"C{g % 10}", label=f"{group.label}{ece}")
        hist.hist(scores[is_tp], bins=bins, histtype="step", color=f"C{g % 10}", linewidth=1.5,
                  label=f"{group.label}: true positives")
        hist.hist(scores[~is_tp], bins=bins, histtype="step", color=f"C{g % 10}",
                  linestyle="--", label=f"{group.label}: false positives")
    ax.axvline(options.calib_min_score, color="0.7", linewidth=0.8,
               label=f"D-ECE counts scores >= {options.calib_min_score:g}")
    ax.set(title="reliability (IoU 0.5)", xlabel="confidence (mean score in bin)",
           ylabel="precision in bin", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left")
    hist.set(title="score distributions", xlabel="score", ylabel="detections (log)", xlim=(0, 1))
    hist.set_yscale("log")
    hist.grid(True, alpha=0.3)
    if hist.get_legend_handles_labels()[0]:
        hist.legend(fontsize="x-small", loc="upper center")
    return _save(fig, path)


@plain_text
def plot_confusion(study: Study, analyses: Mapping[str, RunAnalysis], path: Path,
                   options: AnalysisOptions) -> Path:
    """One matrix per group (summed over its runs with the class list of its first): rows the
    true class, columns the predicted one, each row as fractions of its boxes, counts written
    in the cells (up to ``_CELL_TEXT`` classes; class names up to ``_TICKS``)."""
    groups = [g for g in study.groups if _done(g, analyses)]
    ncols = max(1, min(3, len(groups)))
    nrows = max(1, math.ceil(len(groups) / ncols))
    fig = _figure(4.6 * ncols, 4.2 * nrows)
    if not groups:
        _no_data(fig, "no analysed run")
    for g, group in enumerate(groups):
        done = _done(group, analyses)
        done = [a for a in done if a.class_names == done[0].class_names]
        matrix = np.sum([a.confusion for a in done], axis=0)
        names = [*done[0].class_names, "background"]
        totals = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
        ax = fig.add_subplot(nrows, ncols, g + 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(matrix if len(names) <= _CELL_TEXT else []):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
        if len(names) <= _TICKS:
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(title=f"{group.label}\n(scores >= {options.min_score:g})",
               xlabel="predicted", ylabel="true")
        ax.title.set_fontsize(9)
    return _save(fig, path)


@plain_text
def plot_class_ap(study: Study, analyses: Mapping[str, RunAnalysis], path: Path) -> Path:
    """AP50 of each class against its instances in the train split (log x when they span a
    decade), a marker per group and class (mean over runs, std bar), named by class."""
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    plotted = False
    for g, group in enumerate(study.groups):
        done = [a for a in _done(group, analyses) if a.frequency]
        for name in dict.fromkeys(n for a in done for n in a.class_names):
            aps = [a.class_ap50[name] for a in done if a.class_ap50.get(name) is not None]
            if not aps:
                continue
            freq = np.mean([a.frequency.get(name, 0) for a in done])
            ax.errorbar([freq], [np.mean(aps)], yerr=[np.std(aps, ddof=1) if len(aps) > 1 else 0],
                        marker="o", color=f"C{g % 10}", capsize=3, label=group.label)
            ax.annotate(name, (freq, np.mean(aps)), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
            plotted = True
    if not plotted:
        _no_data(fig, "no per-class AP with training frequencies")
    else:
        low, high = ax.get_xlim()
        if low > 0 and high / low > 10:
            ax.set_xscale("log")
        handles = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))  # 1/group
        fig.legend(handles.values(), handles.keys(), loc="outside right upper",
                   fontsize="small")
    ax.set(title="per-class AP50 against training frequency",
           xlabel="instances in the train split", ylabel="AP50 (val)", ylim=(0, 1.02))
    ax.grid(True, alpha=0.3, which="both")
    return _save(fig, path)


def write_figures(study: Study, analyses: Mapping[str, RunAnalysis], out: Path,
                  options: AnalysisOptions, left_out: Counter | None = None) -> list[Path]:
    """Every figure of the report, and the worst-image gallery under ``out/worst``
    (``left_out`` counts its images not drawn, by reason)."""
    return [plot_errors(study, analyses, out / "errors.png"),
            plot_calibration(study, analyses, out / "calibration.png", options),
            plot_confusion(study, analyses, out / "confusion.png", options),
            plot_class_ap(study, analyses, out / "class_ap_vs_frequency.png"),
            write_gallery(analyses, out / "worst", count=options.worst, left_out=left_out)]
