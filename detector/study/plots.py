"""The study's figures: training curves per group (mean over seeds with a +-std band, schedule
phases marked), final AP50 against a swept numeric key (diverged runs as crosses) and
precision-recall curves at IoU 0.5 per class. Agg canvases only; pyplot is never used.

Shorthand: G groups, N runs in a group, I logged iterations, R = 101 recall thresholds.
"""

from __future__ import annotations

import math
import os
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from detector.run_files import COMPLETED, DIVERGED
from detector.study.figure_style import line_style, plain_log_axis
from detector.study.runs import Run
from detector.study.summary import SEED_KEY, Group, Study, value_of
from detector.untrusted import finite_number, plain_text, shown

__all__ = ["CURVE_KEYS", "NOT_TRAINING", "changes_training", "curves_figure", "numeric_key",
           "plot_curves", "plot_pr_curves", "plot_sweep", "sweep_figure"]

MAX_PR_PANELS = 120  # classes drawn in pr_curves.png (the first ones)
CURVE_KEYS = ("loss", "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "grad_norm",
              "AP", "AP50")


def _figure(panels: int, ncols: int, size: tuple[float, float],
            legend_in: float = 0.0) -> tuple[Figure, int]:
    """A figure for ``panels`` panels of ``size`` inches, ``ncols`` a row, and ``legend_in``
    inches on the right for a legend off the data."""
    ncols = max(1, min(ncols, panels))
    nrows = max(1, math.ceil(panels / ncols))
    width = size[0] * ncols + legend_in
    fig = Figure(figsize=(width, size[1] * nrows))
    FigureCanvasAgg(fig)
    # fixed margins: a constrained layout measures every tick label again (seconds per figure)
    fig.subplots_adjust(left=1.0 / width, right=1 - (0.2 + legend_in) / width,
                        bottom=0.55 / (size[1] * nrows), top=1 - 0.35 / (size[1] * nrows),
                        wspace=0.45, hspace=0.5)
    return fig, ncols


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


# --- curves ----------------------------------------------------------------------------------


def _grid(runs: Sequence[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iters [I], values [N, I]) of ``key``: NaN where a run has no value there, so lines break
    between phases that do not log the key (the 4-step schedule)."""
    marker = "AP" if key.startswith("AP") else "loss"
    iters = sorted({r["iter"] for run in runs for r in run.records if marker in r and "iter" in r})
    index = {it: i for i, it in enumerate(iters)}
    values = np.full((len(runs), len(iters)), np.nan)
    for n, run in enumerate(runs):
        for r in run.records:
            value = finite_number(r.get(key))  # NaN, inf: a gap
            if marker in r and r.get("iter") in index and value is not None:
                values[n, index[r["iter"]]] = value
    return np.asarray(iters, dtype=float), values


def _phase_starts(runs: Sequence[Run]) -> dict[float, str]:
    """Iteration after which each schedule phase but the first begins -> its name (from the
    phase's first log point: its iteration less its ``phase_iter``, where logged)."""
    starts: dict[float, str] = {}
    for run in runs:
        previous = None
        for r in run.records:
            if "loss" in r and "iter" in r and r.get("phase") != previous:
                if previous is not None:
                    start = r["iter"] - r["phase_iter"] if "phase_iter" in r else r["iter"]
                    starts.setdefault(float(start), shown(r["phase"], limit=40))
                previous = r.get("phase")
    return starts


def _draw_group(ax, iters: np.ndarray, values: np.ndarray, color: str, label: str) -> None:
    with warnings.catch_warnings():  # all-NaN columns: NaN mean, a gap in the line
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        count = np.sum(~np.isnan(values), axis=0)
        std = np.where(count > 1, np.nanstd(values, axis=0, ddof=min(1, len(values) - 1)), 0)
    ax.plot(iters, mean, color=color, label=f"{label} (n={len(values)})",
            **line_style(int(np.sum(~np.isnan(mean)))))
    if len(values) > 1:
        ax.fill_between(iters, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


_PHASE_DASHES = (":", "--", "-.", (0, (1, 4)), (0, (5, 2, 1, 2, 1, 2)), (0, (8, 3)))


@plain_text
def plot_curves(study: Study, out_png: str | os.PathLike) -> Path:
    """Every loss term, the gradient norm and AP/AP50 against iteration, one line per group."""
    return _save(curves_figure(study), out_png)


@plain_text
def curves_figure(study: Study) -> Figure:
    """The figure of :func:`plot_curves`: a panel per key; the groups and the schedule phases'
    starts (grey, a dash pattern each, drawn in every panel) named in one legend beside the
    panels, so that no label lies on a curve."""
    keys = [k for k in CURVE_KEYS if any(k in r for run in study.runs for r in run.records)]
    phases = sorted(_phase_starts(study.runs).items())
    fig, ncols = _figure(max(1, len(keys)), 3, (4.6, 3.2), legend_in=2.8)
    if not keys:
        fig.text(0.5, 0.5, "no metrics.jsonl records to plot", ha="center", va="center")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(math.ceil(len(keys) / ncols), ncols, i + 1)
        for g, group in enumerate(study.groups):
            iters, values = _grid(group.runs, key)
            if iters.size:
                _draw_group(ax, iters, values, f"C{g % 10}", group.label)
        for p, (start, name) in enumerate(phases):
            ax.axvline(start, color="0.35", linewidth=1, linestyle=_PHASE_DASHES[p % 6],
                       label=f"{name} starts (it {start:g})")
        if key.startswith("loss") or key == "grad_norm":
            ax.set_yscale("log")
            plain_log_axis(ax.yaxis)
        elif key.startswith("AP"):
            ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set(title=key, xlabel="iteration", ylabel=key)
        ax.grid(True, alpha=0.3)
    handles: dict[str, object] = {}  # the same groups and phases in each panel: one legend
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        labels = [textwrap.fill(label, 36) for label in handles]
        fig.legend(list(handles.values()), labels, fontsize="x-small", loc="upper right",
                   bbox_to_anchor=(1.0, 1 - 0.35 / fig.get_figheight()),
                   title="groups; schedule phases", title_fontsize="x-small")
    return fig


# --- learning-rate (or any numeric key) sweep ------------------------------------------------


def _as_float(value) -> float | None:
    """A number, or a string that spells a finite one; else None."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    return finite_number(value)


#: config keys that do not change what is trained (logging, evaluation, checkpoints, where and
#: how fast it runs): never the studied variable of a sweep
NOT_TRAINING = frozenset({
    "output_dir", "name", "device", "resume", "num_workers", "train.progress",
    "train.log_period", "train.eval_period", "train.eval_batch_size", "train.eval_metric",
    "train.checkpoint_period", "train.keep_checkpoints", "train.histogram_period",
    "train.best_metric", "train.best_mode", "train.ema_eval_raw"})


def changes_training(key: str) -> bool:
    """Whether a config key can change the trained model (``optimizer.lr`` does,
    ``train.eval_period`` does not: :data:`NOT_TRAINING`, and ``hydra.*``)."""
    return key not in NOT_TRAINING and not key.startswith("hydra.")


def numeric_key(study: Study) -> str | None:
    """The one differing key (seed aside) that changes the training and whose values are all
    numbers, with at least two distinct values; None if there is no such key or more than one."""
    found = [k for k in study.keys if k != SEED_KEY and changes_training(k)
             and all(_as_float(value_of(r, k)) is not None for r in study.runs)
             and len({_as_float(value_of(r, k)) for r in study.runs}) > 1]
    return found[0] if len(found) == 1 else None


@plain_text
def plot_sweep(study: Study, key: str, out_png: str | os.PathLike, metric: str = "AP50") -> Path:
    """Final ``metric`` against ``key`` as a PNG (see :func:`sweep_figure`)."""
    return _save(sweep_figure(study, key, metric), out_png)


@plain_text
def sweep_figure(study: Study, key: str, metric: str = "AP50") -> Figure:
    """Final ``metric`` against ``key`` (log x, plain decimal ticks, when all values are
    positive: learning rates); one line per combination of the other keys, mean over seeds with
    the runs as dots; diverged runs as red crosses on the axis (AP 0), labelled with the
    iteration where they diverged; the legend beside the axes."""
    fig, _ = _figure(1, 1, (7.0, 4.5), legend_in=2.6)
    ax = fig.add_subplot(1, 1, 1)
    others = [k for k in study.keys if k not in (key, SEED_KEY)]
    series: dict[str, list[Run]] = {}
    for run in study.runs:
        label = shown(", ".join(f"{k}={value_of(run, k)}" for k in others), limit=100) or metric
        series.setdefault(label, []).append(run)
    for s, (label, runs) in enumerate(series.items()):
        color = f"C{s % 10}"
        points = sorted((_as_float(value_of(r, key)), r.metric(metric)) for r in runs
                        if r.status in COMPLETED and r.metric(metric) is not None)
        if points:
            xs = sorted({x for x, _ in points})
            means = [np.mean([y for x2, y in points if x2 == x]) for x in xs]
            ax.plot(xs, means, color=color, marker="o", label=label)
            ax.scatter(*zip(*points, strict=True), color=color, s=12, alpha=0.5)
        for run in (r for r in runs if r.status == DIVERGED):
            x = _as_float(value_of(run, key))
            ax.plot([x], [0.0], marker="x", markersize=10, markeredgewidth=2, color="red",
                    linestyle="none", zorder=3, clip_on=False)
            ax.annotate(f"diverged\nit {run.final.get('iteration')}", (x, 0.0), fontsize=7,
                        textcoords="offset points", xytext=(0, 8), ha="center", color="red")
    if all(_as_float(value_of(r, key)) > 0 for r in study.runs):
        ax.set_xscale("log")
        plain_log_axis(ax.xaxis)
    if any(r.status == DIVERGED for r in study.runs):  # a legend entry that shows the cross
        ax.plot([], [], marker="x", markersize=10, markeredgewidth=2, color="red",
                linestyle="none", label="diverged (reason: summary.md)")
    ax.set(title=f"final {metric} against {key}", xlabel=key, ylabel=f"final {metric}")
    ax.set_ylim(bottom=0, top=max(0.05, ax.get_ylim()[1]))
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig


# --- precision-recall ------------------------------------------------------------------------


def _pr(group: Group, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(recall [R], precision [N, R]) of one class over the group's finished runs."""
    curves, recall = [], None
    for run in group.finished():
        pr = run.final.get("pr_iou50") or {}
        values = (pr.get("precision") or {}).get(name)
        if values is not None:
            curves.append(values)
            recall = pr["recall"]
    return None if not curves else (np.asarray(recall), np.asarray(curves, dtype=float))


def has_pr_data(study: Study) -> bool:
    return any((r.final or {}).get("pr_iou50") for g in study.groups for r in g.finished())


@plain_text
def plot_pr_curves(study: Study, out_png: str | os.PathLike) -> Path:
    """Precision against recall at IoU 0.5 (COCOeval's interpolated curve), a panel per class,
    one line per group (mean over its runs, +-std band); the first ``MAX_PR_PANELS`` classes."""
    classes = study.classes[:MAX_PR_PANELS]
    fig, ncols = _figure(max(1, len(classes)), 4, (3.6, 3.2), legend_in=2.4)
    for i, name in enumerate(classes):
        ax = fig.add_subplot(math.ceil(len(classes) / ncols), ncols, i + 1)
        for g, group in enumerate(study.groups):
            found = _pr(group, name)
            if found is None:
                continue
            recall, curves = found
            mean = curves.mean(axis=0)
            ax.plot(recall, mean, color=f"C{g % 10}", label=f"{group.label} (n={len(curves)})")
            if len(curves) > 1:
                std = curves.std(axis=0, ddof=1)
                ax.fill_between(recall, mean - std, mean + std, color=f"C{g % 10}", alpha=0.2,
                                linewidth=0)
        ax.set(title=f"{name} (IoU 0.5)", xlabel="recall", ylabel="precision", xlim=(0, 1),
               ylim=(0, 1.02))
        ax.grid(True, alpha=0.3)
        if not ax.get_lines():  # no ground truth of this class in the val set (undefined)
            ax.text(0.5, 0.5, "no curve (no GT)", ha="center", va="center", color="0.4")
    handles = {}  # one legend for all panels, beside them (the groups are the same in each)
    for ax in fig.axes:
        for line in ax.get_lines():
            handles.setdefault(line.get_label().split(" (n=")[0], line)
    if handles:
        fig.legend(list(handles.values()), [h.get_label() for h in handles.values()],
                   fontsize="small", loc="upper right",
                   bbox_to_anchor=(1.0, 1 - 0.35 / fig.get_figheight()))
    return _save(fig, out_png)
