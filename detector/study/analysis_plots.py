"""The analysis figures: error counts and dAP50 per type, reliability diagrams with the score
distributions of true and false positives, confusion matrices and per-class AP50 against
training frequency; one colour per seed group. Agg canvases only.

Shorthand: G groups, K classes, B calibration bins.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D

from detector.study.analysis import AnalysisOptions, RunAnalysis, group_values
from detector.study.calibration import reliability
from detector.study.errors import ERROR_TYPES, FP_TYPES, TP
from detector.study.figure_style import note, plain_log_axis
from detector.study.gallery import write_gallery
from detector.study.summary import Group, Study
from detector.untrusted import plain_text, writable_file

__all__ = ["calibration_figure", "class_ap_figure", "confusion_figure", "errors_figure",
           "plot_calibration", "plot_class_ap", "plot_confusion", "plot_errors", "write_figures"]

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
    return _save(errors_figure(study, analyses), path)


@plain_text
def errors_figure(study: Study, analyses: Mapping[str, RunAnalysis]) -> Figure:
    """Two panels: error count per type and AP50 gained by fixing it, a bar per group
    (mean over its analysed runs, std as the error bar: per-run values, as the title says)."""
    fig = _figure(11.0, 4.4)
    groups = [g for g in study.groups if _done(g, analyses)]
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(ERROR_TYPES))
    for p, (suffix, title, ylabel) in enumerate((
            (" n", "errors at the operating point (mean per run)", "errors per run"),
            (" dAP50", "AP50 gained by fixing the type (mean per run)", "dAP50 per run"))):
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
        ax.set(title=title, xlabel="error type", ylabel=ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("bars: mean over each group's analysed runs (n in the legend); error bars: "
                 "std across those runs", fontsize="medium")
    if groups:
        fig.legend(loc="outside lower center", ncols=_legend_columns(
            [g.label for g in groups]), fontsize="small")
    else:
        _no_data(fig, "no analysed run")
    return fig


def _legend_columns(labels: list[str], width: int = 110) -> int:
    """Columns for a legend of ``labels`` across a figure about ``width`` characters wide."""
    longest = max((len(label) for label in labels), default=1) + 6
    return max(1, min(3, len(labels), width // longest))


def _pooled(done: list[RunAnalysis]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, is_tp, FP type code) of every judged detection of the runs."""
    scores = np.concatenate([a.det.scores for a in done])
    kinds = np.concatenate([a.all_kinds for a in done])
    keep = np.isin(kinds, range(len(FP_TYPES) + 1))  # not the ignored ones
    return scores[keep], kinds[keep] == TP, kinds[keep]


@plain_text
def plot_calibration(study: Study, analyses: Mapping[str, RunAnalysis], path: Path,
                     options: AnalysisOptions) -> Path:
    return _save(calibration_figure(study, analyses, options), path)


def _empty_diagram_note(group: Group, done: list[RunAnalysis], options: AnalysisOptions) -> str:
    if not done:
        return f"{group.label}: no analysed run"
    if not any(len(a.det.scores) for a in done):
        return f"{group.label}: no detections at all (an untrained model?)"
    return f"{group.label}: no detection scored >= {options.calib_min_score:g}"


_SCORE_BINS = np.linspace(0, 1, 41)  # the score histograms' bin edges


def _draw_calibration(ax, hist, g: int, group: Group, done: list[RunAnalysis],
                      options: AnalysisOptions) -> tuple[str | None, bool]:
    """One group's reliability curve on ``ax`` and score histograms on ``hist``; returns (why
    its diagram is empty or None, whether it has any score)."""
    scores, is_tp, _ = _pooled(done) if done else (np.zeros(0), np.zeros(0, bool), None)
    diagram = reliability(scores, is_tp, bins=options.bins, min_score=options.calib_min_score)
    full = diagram.count > 0
    if full.any():
        eces = [a.d_ece for a in done if a.d_ece is not None]
        ece = f", D-ECE {np.mean(eces):.3f}" if eces else ""
        ax.plot(diagram.confidence[full], diagram.precision[full], marker="o",
                color=f"C{g % 10}", label=f"{group.label}{ece}")
    if len(scores):
        hist.hist(scores[is_tp], bins=_SCORE_BINS, histtype="step", color=f"C{g % 10}",
                  linewidth=1.5)
        hist.hist(scores[~is_tp], bins=_SCORE_BINS, histtype="step", color=f"C{g % 10}",
                  linestyle="--")
    return (None if full.any() else _empty_diagram_note(group, done, options)), bool(len(scores))


@plain_text
def calibration_figure(study: Study, analyses: Mapping[str, RunAnalysis],
                       options: AnalysisOptions) -> Figure:
    """Left: precision against confidence per bin for each group (its runs' detections pooled),
    the diagonal being perfect calibration; a group with nothing to draw is named in a note on
    the axes saying why. Right: scores of true and false positives. One legend below both."""
    fig = _figure(11.0, 4.8)
    ax, hist = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax.plot([0, 1], [0, 1], color="0.5", linestyle=":", label="perfectly calibrated")
    empty, no_scores = [], []
    for g, group in enumerate(study.groups):
        why, scored = _draw_calibration(ax, hist, g, group, _done(group, analyses), options)
        empty += [why] if why else []
        no_scores += [] if scored else [group.label]
    ax.axvline(options.calib_min_score, color="0.7", linewidth=0.8,
               label=f"D-ECE counts scores >= {options.calib_min_score:g}")
    if empty:
        note(ax, "\n".join(["empty diagram:", *empty]), y=0.62, width=55)
    ax.set(title="reliability (IoU 0.5)", xlabel="confidence (mean score in bin)",
           ylabel="precision in bin", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(True, alpha=0.3)
    hist.set(title="score distributions (solid: true, dashed: false positives)",
             xlabel="score", ylabel="detections (log)", xlim=(0, 1))
    hist.set_yscale("log")
    plain_log_axis(hist.yaxis)
    hist.grid(True, alpha=0.3)
    if no_scores:
        note(hist, "no detections: " + ", ".join(no_scores), y=0.5, width=55)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.2", linewidth=1.5),
                Line2D([], [], color="0.2", linestyle="--")]
    labels += ["true positives (right panel)", "false positives (right panel)"]
    fig.legend(handles, labels, loc="outside lower center", fontsize="x-small",
               ncols=_legend_columns(labels, width=150))
    return fig


@plain_text
def plot_confusion(study: Study, analyses: Mapping[str, RunAnalysis], path: Path,
                   options: AnalysisOptions) -> Path:
    return _save(confusion_figure(study, analyses, options), path)


@plain_text
def confusion_figure(study: Study, analyses: Mapping[str, RunAnalysis],
                     options: AnalysisOptions) -> Figure:
    """One matrix per group, its runs' counts summed (with the class list of its first; the
    title says how many runs): rows the true class, columns the predicted one, coloured by each
    row's fractions (a colour bar each), counts written in the cells (up to ``_CELL_TEXT``
    classes; class names up to ``_TICKS``)."""
    groups = [g for g in study.groups if _done(g, analyses)]
    ncols = max(1, min(3, len(groups)))
    nrows = max(1, math.ceil(len(groups) / ncols))
    fig = _figure(5.4 * ncols, 4.6 * nrows)
    if not groups:
        _no_data(fig, "no analysed run")
    else:
        fig.suptitle(f"counts summed over each group's runs (scores >= {options.min_score:g}); "
                     f"colour: share of the true class's boxes", fontsize="medium")
    for g, group in enumerate(groups):
        done = _done(group, analyses)
        done = [a for a in done if a.class_names == done[0].class_names]
        matrix = np.sum([a.confusion for a in done], axis=0)
        names = [*done[0].class_names, "background"]
        totals = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
        ax = fig.add_subplot(nrows, ncols, g + 1)
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(image, ax=ax, shrink=0.8, label="share of the row")
        for (i, j), count in np.ndenumerate(matrix if len(names) <= _CELL_TEXT else []):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
        if len(names) <= _TICKS:
            ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(names)), names, fontsize=8)
        runs = f"sum of {len(done)} runs" if len(done) > 1 else "1 run"
        ax.set(title=textwrap.fill(f"{group.label} ({runs})", 48), xlabel="predicted",
               ylabel="true")
        ax.title.set_fontsize(9)
    return fig


_LABEL_GAP = 12.0  # points between stacked class labels (8 pt text and its descent)


def _class_points(study: Study, analyses: Mapping[str, RunAnalysis]) -> list[tuple]:
    """(frequency, mean AP50, std, class name, group index) of every class of every group."""
    points = []
    for g, group in enumerate(study.groups):
        done = [a for a in _done(group, analyses) if a.frequency]
        for name in dict.fromkeys(n for a in done for n in a.class_names):
            aps = [a.class_ap50[name] for a in done if a.class_ap50.get(name) is not None]
            if aps:
                freq = float(np.mean([a.frequency.get(name, 0) for a in done]))
                points.append((freq, float(np.mean(aps)),
                               float(np.std(aps, ddof=1)) if len(aps) > 1 else 0.0, name, g))
    return points


def _label_heights(ys: list[float], low: float, high: float, gap: float) -> list[float]:
    """Heights for labels of points at heights ``ys`` (ascending) in one column: each at its
    point where it can be, pushed up to stay ``gap`` above the one below, and back down from
    ``high`` if the stack overflows (then ``low`` bounds it)."""
    placed: list[float] = []
    for y in ys:
        placed.append(max(y, placed[-1] + gap) if placed else y)
    for i in range(len(placed) - 1, -1, -1):
        ceiling = high if i == len(placed) - 1 else placed[i + 1] - gap
        placed[i] = max(low, min(placed[i], ceiling))
    return placed


def _label_classes(ax, points: list[tuple]) -> None:
    """A class-name label per point, coloured as its group; labels of points in one column
    (x within a label's height) stacked so that none overprints another, each joined to its
    point by a leader line when moved off it. Labels go right of points in the left 70 % of
    the axes, left of the others."""
    to_points = 72 / ax.figure.dpi  # display pixels -> points
    box = ax.get_window_extent().transformed(Affine2D().scale(to_points))
    xy = [ax.transData.transform((f, ap)) * to_points for f, ap, *_ in points]
    order = sorted(range(len(points)), key=lambda i: (xy[i][0], xy[i][1]))
    columns: list[list[int]] = []
    for i in order:
        if columns and xy[i][0] - xy[columns[-1][0]][0] <= _LABEL_GAP:
            columns[-1].append(i)
        else:
            columns.append([i])
    for column in columns:
        column.sort(key=lambda i: xy[i][1])
        heights = _label_heights([xy[i][1] for i in column], box.y0 + 4, box.y1 - 4,
                                 _LABEL_GAP)
        for i, height in zip(column, heights, strict=True):
            right = xy[i][0] < box.x0 + 0.7 * box.width
            dx = 8 if right else -8
            moved = abs(height - xy[i][1]) > 2
            ax.annotate(points[i][3], xy=(points[i][0], points[i][1]),
                        xytext=(dx, height - xy[i][1]), textcoords="offset points",
                        ha="left" if right else "right", va="center", fontsize=8,
                        color=f"C{points[i][4] % 10}",
                        arrowprops={"arrowstyle": "-", "color": "0.6", "linewidth": 0.6,
                                    "shrinkA": 0, "shrinkB": 3} if moved else None)


@plain_text
def plot_class_ap(study: Study, analyses: Mapping[str, RunAnalysis], path: Path) -> Path:
    return _save(class_ap_figure(study, analyses), path)


@plain_text
def class_ap_figure(study: Study, analyses: Mapping[str, RunAnalysis]) -> Figure:
    """AP50 of each class against its instances in the train split (log x, plain decimal ticks,
    when they span a decade), a marker per group and class (mean over runs, std bar), named by
    class in the group's colour (stacked with leader lines where points share a place); the
    legend of the groups above the axes."""
    fig = _figure(8.0, 5.2)
    ax = fig.add_subplot()
    points = _class_points(study, analyses)
    for freq, mean, std, _, g in points:
        ax.errorbar([freq], [mean], yerr=[std], marker="o", color=f"C{g % 10}", capsize=3,
                    label=study.groups[g].label)
    ax.set(title="per-class AP50 against training frequency",
           xlabel="instances in the train split", ylabel="AP50 (val)", ylim=(-0.02, 1.04))
    ax.grid(True, alpha=0.3, which="both")
    if not points:
        _no_data(fig, "no per-class AP with training frequencies")
        return fig
    low, high = ax.get_xlim()
    if low > 0 and high / low > 10:
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    handles = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))  # 1/group
    fig.legend(handles.values(), handles.keys(), loc="outside upper center", fontsize="small",
               ncols=_legend_columns(list(handles), width=80))
    fig.canvas.draw()  # the layout sets the axes' place: labels are stacked in pixels ...
    fig.set_layout_engine("none")  # ... so the axes must not move after
    _label_classes(ax, points)
    return fig


def write_figures(study: Study, analyses: Mapping[str, RunAnalysis], out: Path,
                  options: AnalysisOptions, left_out: Counter | None = None) -> list[Path]:
    """Every figure of the report, and the worst-image gallery under ``out/worst``
    (``left_out`` counts its images not drawn, by reason)."""
    return [plot_errors(study, analyses, out / "errors.png"),
            plot_calibration(study, analyses, out / "calibration.png", options),
            plot_confusion(study, analyses, out / "confusion.png", options),
            plot_class_ap(study, analyses, out / "class_ap_vs_frequency.png"),
            write_gallery(analyses, out / "worst", count=options.worst, left_out=left_out)]
