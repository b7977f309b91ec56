"""The inspection report's figures (matplotlib, Agg): weight histograms as one grid per block,
the BN gamma distribution per layer, and activation statistics per layer. With several runs
(checkpoints) the figures put them side by side: one column (or bar) per run. Text is drawn as
written (no mathtext: a layer called ``$\\frac`` is just that)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from torch import Tensor

from detector.inspection.activations import ActivationStats
from detector.untrusted import plain_text

__all__ = ["plot_activations", "plot_block_histograms", "plot_gamma_distribution"]

_BINS = 60


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=90)
    return path


@plain_text
def plot_block_histograms(rows: list[tuple[str, dict[str, Tensor]]], path: Path, *,
                          title: str, gamma_threshold: float) -> Path:
    """One block's grid: a row per layer (conv/linear weights, BN gammas), a column per run.

    Args:
        rows: ``(layer label, {run label: weight Tensor})``; BN rows are labelled ``bn*`` or end
            in ``(gamma)`` and get the prunable threshold drawn as dashed lines.
        path: the PNG to write.
    """
    runs = list(dict.fromkeys(run for _, by_run in rows for run in by_run))
    height = 2.1 * len(rows) + 0.6
    fig = Figure(figsize=(4.2 * len(runs), height))  # fixed margins: constrained layout is slow
    fig.subplots_adjust(left=0.18 / len(runs) + 0.02, right=0.98, bottom=0.5 / height,
                        top=1 - 0.6 / height, hspace=0.75, wspace=0.35)
    fig.suptitle(title)
    for r, (label, by_run) in enumerate(rows):
        values = {run: _finite(w) for run, w in by_run.items()}
        low = min((v.min() for v in values.values() if v.size), default=0.0)
        high = max((v.max() for v in values.values() if v.size), default=0.0)
        if high - low < 1e-6 * max(1.0, abs(high)):  # one value (e.g. gammas at init: all 1)
            low, high = low - 0.05 * max(1.0, abs(low)), high + 0.05 * max(1.0, abs(high))
        bins = np.linspace(low, high, _BINS + 1)  # shared by the runs of a row
        for c, run in enumerate(runs):
            ax = fig.add_subplot(len(rows), len(runs), r * len(runs) + c + 1)
            if run in values and values[run].size:
                ax.hist(values[run], bins=bins, color=f"C{c}", label=run)
                ax.set_yscale("log")
                ax.yaxis.set_minor_locator(NullLocator())
            ax.set_xlim(bins[0], bins[-1])  # the data's range, whatever else is drawn
            if "gamma" in label:
                _threshold_lines(ax, gamma_threshold, bins[0], bins[-1])
            ax.set_title(f"{label} - {run}", fontsize=9)
            ax.set_xlabel("weight value" if "gamma" not in label else "gamma")
            ax.set_ylabel("count (log)")
    return _save(fig, path)


def _finite(weights: Tensor) -> np.ndarray:
    """The finite values of a weight tensor, flattened (NaN/inf have no place on an axis)."""
    values = weights.flatten().numpy()
    return values[np.isfinite(values)]


def _threshold_lines(ax, threshold: float, low: float, high: float) -> None:
    """The prunable band +-``threshold`` as dashed lines where it falls inside [low, high]
    (a gamma row's data); otherwise a note, so the axis stays on the gammas (at init, all 1:
    lines at +-0.01 would squeeze their one bar to a sliver)."""
    inside = [x for x in (-threshold, threshold) if low <= x <= high]
    for x in inside:
        ax.axvline(x, color="k", linestyle="--", linewidth=0.8)
    if not inside:
        ax.text(0.02, 0.95, f"none in the prunable band |gamma| < {threshold:g}",
                transform=ax.transAxes, fontsize=7, va="top", color="0.3")


@plain_text
def plot_gamma_distribution(gammas: dict[str, dict[str, Tensor]], path: Path, *,
                            threshold: float) -> Path:
    """|gamma| of every BN layer as box plots (log y), the runs side by side per layer.

    Args:
        gammas: ``{run label: {layer label: gamma Tensor[C]}}``.
    """
    runs = list(gammas)
    layers = list(dict.fromkeys(layer for by_layer in gammas.values() for layer in by_layer))
    fig = Figure(figsize=(max(6.0, 0.45 * len(layers) * len(runs) + 1.5), 4.2),
                 layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        data = [np.clip(np.abs(_finite(gammas[run][layer])), 1e-8, None) for layer in layers
                if layer in gammas[run]]
        positions = [j + (i - (len(runs) - 1) / 2) * width for j, layer in enumerate(layers)
                     if layer in gammas[run]]
        parts = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                           showfliers=True, flierprops={"markersize": 2})
        for box in parts["boxes"]:
            box.set_facecolor(f"C{i}")
        ax.plot([], [], color=f"C{i}", linewidth=8, label=run)  # legend entry
    ax.axhline(threshold, color="k", linestyle="--", linewidth=0.8,
               label=f"prunable: |gamma| < {threshold:g}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right")
    ax.set_ylabel("|gamma|")
    ax.set_xlabel("BN layer")
    ax.set_title("BN gamma distribution")
    fig.legend(loc="outside right upper", fontsize=8)  # off the boxes
    return _save(fig, path)


@plain_text
def plot_activations(activations: dict[str, list[ActivationStats]], path: Path) -> Path:
    """Per ReLU layer: fraction of zeros, mean activation and fraction of dead channels, one bar
    per run side by side.

    Args:
        activations: ``{run label: per-layer ActivationStats}``.
    """
    runs = list(activations)
    layers = list(dict.fromkeys(s.label for stats in activations.values() for s in stats))
    panels = (("fraction of zeros after ReLU", lambda s: s.zero_fraction),
              ("mean activation", lambda s: s.mean),
              ("dead channels (fraction)", lambda s: len(s.dead_channels) / s.channels))
    fig = Figure(figsize=(max(7.0, 0.5 * len(layers) * len(runs)), 8.5), layout="constrained")
    width = 0.8 / len(runs)
    for p, (title, value) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, p + 1)
        for i, run in enumerate(runs):
            by_label = {s.label: value(s) for s in activations[run]}
            xs = [j + (i - (len(runs) - 1) / 2) * width for j, la in enumerate(layers)
                  if la in by_label]
            ax.bar(xs, [by_label[la] for la in layers if la in by_label], width=width,
                   color=f"C{i}", label=run if p == 0 else None)
        ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(title)
        ax.set_xlabel("layer")
    fig.legend(loc="outside upper center", ncols=min(len(runs), 4), fontsize=8)  # off the bars
    return _save(fig, path)
