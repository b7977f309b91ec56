"""Training curves of a run: its ``metrics.jsonl`` read back and drawn (matplotlib, Agg).

``metrics.jsonl`` holds one JSON object per line, each with ``"iter"`` and any of the loss keys,
``"lr"`` and evaluation keys (``"AP"``, ``"AP50"``, ...); :mod:`detector.run_files` reads it (the
one reader of that file). Lines that carry ``"step"`` and/or ``"phase"`` values (multi-step
schedules) are drawn as separate, labelled series. Figures are drawn on their own Agg canvas:
pyplot and its global state are never used.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from detector.run_files import read_metrics_jsonl
from detector.study.figure_style import line_style, plain_log_axis
from detector.untrusted import plain_text

LOSS_KEYS: tuple[str, ...] = ("loss", "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box")
EVAL_KEYS: tuple[str, ...] = ("AP", "AP50")
DEFAULT_KEYS: tuple[str, ...] = (*LOSS_KEYS, "lr", "grad_norm", *EVAL_KEYS)
GROUP_KEYS: tuple[str, ...] = ("step", "phase")
_EVAL_TITLE = "COCO eval"

Series = dict[str, tuple[list[float], list[float]]]  # group label -> (iters, values)


def metric_series(records: Iterable[Mapping[str, Any]], key: str, *, positive: bool = False) -> Series:
    """``key`` against ``iter``, one series per group such as ``"step 2, phase val"`` (``""`` if
    the lines carry no ``step``/``phase``).

    Lines without ``iter`` or with a missing, non-numeric or non-finite value are left out;
    ``positive=True`` also drops values <= 0 (for log axes).
    """
    series: Series = {}
    for r in records:
        value, it = r.get(key), r.get("iter")
        if not (_is_number(value) and _is_number(it)) or (positive and value <= 0):
            continue
        group = ", ".join(f"{g} {r[g]}" for g in GROUP_KEYS if g in r)
        xs, ys = series.setdefault(group, ([], []))
        xs.append(float(it))
        ys.append(float(value))
    return series


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _smoothed(xs: list[float], ys: list[float], window: int) -> tuple[list[float], list[float]]:
    """Trailing moving average over ``window`` points (unchanged if the series is shorter)."""
    if window <= 1 or len(ys) < window:
        return xs, ys
    kernel = np.full(window, 1.0 / window)
    return xs[window - 1:], np.convolve(ys, kernel, mode="valid").tolist()


def _panels(records: list[dict], keys: Sequence[str]) -> list[tuple[str, dict[str, Series], bool]]:
    """(title, {key: series}, log_y) per subplot: a panel per loss or other key, one shared
    panel for AP/AR keys; keys without data get no panel."""
    panels: list[tuple[str, dict[str, Series], bool]] = []
    eval_panel: dict[str, Series] = {}
    for key in keys:
        is_loss = key.startswith("loss")
        series = metric_series(records, key, positive=is_loss)
        if not series:
            continue
        if key.startswith(("AP", "AR")):
            eval_panel[key] = series
        else:
            panels.append((key, {key: series}, is_loss))
    if eval_panel:
        panels.append((_EVAL_TITLE, eval_panel, False))
    return panels


@plain_text
def plot_metrics(
    metrics_jsonl_path: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    keys: Sequence[str] | None = None,
    smooth: int = 1,
) -> Path:
    """A PNG grid of training curves: losses (log y), lr, and AP/AR keys vs iteration.

    Args:
        metrics_jsonl_path: the run's ``metrics.jsonl``.
        out_png: where to write the figure (parent dirs are created).
        keys: keys to plot, in panel order; default :data:`DEFAULT_KEYS`. Keys absent from the
            file are skipped; with nothing at all to plot a placeholder figure is written and a
            warning raised.
        smooth: moving-average window applied to loss curves (1 = raw).
    """
    records = read_metrics_jsonl(metrics_jsonl_path)
    fig = metrics_figure(records, keys=keys, smooth=smooth)
    if not fig.axes:
        warnings.warn(f"nothing to plot in {metrics_jsonl_path}", stacklevel=2)
    return _save_figure(fig, out_png)


@plain_text
def metrics_figure(records: list[dict], *, keys: Sequence[str] | None = None,
                   smooth: int = 1) -> Figure:
    """The figure of :func:`plot_metrics` from ``metrics.jsonl`` records (no axes, a
    placeholder text, when nothing is to be drawn). Series with few points get markers, so a
    short run's single log point shows."""
    panels = _panels(records, DEFAULT_KEYS if keys is None else keys)
    ncols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    if not panels:
        fig.text(0.5, 0.5, "no metrics to plot", ha="center", va="center")
    for i, (title, by_key, log_y) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for key, series in by_key.items():
            for group, (xs, ys) in series.items():
                label = " ".join(s for s in (key if len(by_key) > 1 else "", group) if s)
                if log_y:
                    xs, ys = _smoothed(xs, ys, smooth)
                ax.plot(xs, ys, label=label or None, **line_style(len(xs)))
        if title == _EVAL_TITLE:
            ax.margins(y=0.25)  # room for the legend off the (few) evaluation points
        _style_axes(ax, title, log_y)
    return fig


def _style_axes(ax: Any, title: str, log_y: bool) -> None:
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if log_y:
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
    ax.grid(True, alpha=0.3)
    if any(not line.get_label().startswith("_") for line in ax.get_lines()):
        ax.legend(fontsize="small")


def _save_figure(fig: Figure, out_png: str | os.PathLike) -> Path:
    path = Path(out_png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
