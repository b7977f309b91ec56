"""One inspection per checkpoint (weights, BN gammas, activations) and the report that puts one
or two of them side by side: ``report.md`` plus PNGs in one folder.

Names from the checkpoint (layer names, the run's label) are escaped in tables and figures,
reach file names only as one harmless component, and a symbolic link already in the report
folder is replaced, never written through (``detector.untrusted``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from detector.inspection.activations import ActivationStats, merge_by_block
from detector.inspection.plots import (
    plot_activations,
    plot_block_histograms,
    plot_gamma_distribution,
)
from detector.inspection.weights import (
    LayerStats,
    layer_weights,
    prunable_channels,
    weight_stats,
)
from detector.modeling.blocks import layer_label
from detector.untrusted import (
    path_component,
    shown,
    shown_text,
    writable_dir,
    writable_file,
)

__all__ = ["Inspection", "Thresholds", "inspect_state", "legend", "summary_table", "write_report"]


@dataclass(frozen=True)
class Thresholds:
    """What counts as small. ``abs``: |w| < abs; ``rel``: |w| < rel x the layer's max |w|;
    ``gamma``: a BN channel with |gamma| < gamma is prunable."""

    abs: float = 1e-3
    rel: float = 1e-2
    gamma: float = 1e-2


@dataclass
class Inspection:
    """Everything measured on one checkpoint.

    Attributes:
        label (str): the run's name in tables and legends.
        source (str): where it came from (the checkpoint path).
        layers (list[LayerStats]): per conv/BN/linear layer.
        weights (dict[str, tuple[str, Tensor]]): ``layer_weights`` of the state dict (histograms).
        prunable (dict[str, list[int]]): BN layer -> channels with |gamma| below the threshold.
        activations (list[ActivationStats]): per ReLU layer; empty if not measured.
        images (int): how many images the activations were measured on.
        tag (str): its letter in the headers of side-by-side tables ("A", "B"; set by
            ``write_report`` / ``summary_table`` when there are several runs).
    """

    label: str
    source: str
    layers: list[LayerStats]
    weights: dict[str, tuple[str, Tensor]]
    prunable: dict[str, list[int]]
    activations: list[ActivationStats] = field(default_factory=list)
    images: int = 0
    tag: str = ""


def inspect_state(state: dict[str, Tensor], *, label: str, source: str = "",
                  thresholds: Thresholds = Thresholds()) -> Inspection:
    """The weight side of an ``Inspection`` (set ``activations``/``images`` afterwards)."""
    return Inspection(
        label=label, source=source,
        layers=weight_stats(state, abs_threshold=thresholds.abs, rel_threshold=thresholds.rel),
        weights=layer_weights(state), prunable=prunable_channels(state, threshold=thresholds.gamma))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _headers(columns: list[str], runs: list[Inspection]) -> list[str]:
    """One header per (column, run), the runs side by side: ``mean abs w (A)``, ``... (B)``."""
    if len(runs) == 1:
        return list(columns)
    return [f"{c} ({_letter(run)})" for c in columns for run in runs]


def _letter(run: Inspection) -> str:
    return run.tag or run.label


def legend(runs: list[Inspection]) -> str:
    """``A = ce_end_to_end (path), B = ...``: what the letters in the table headers stand for."""
    return shown_text("; ".join(f"{run.tag} = {run.label} ({run.source})" for run in runs
                                if run.tag))


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; cells escaped (``shown``: control characters, 200 characters)."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(shown(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + " --- |" * len(header), *map(line, rows)])


def _block_rows(run: Inspection) -> dict[str, list[str]]:
    """Per block: weights, mean |w| (count-weighted), near-zero fractions, prunable/BN channels,
    zeros after ReLU and dead channels."""
    out: dict[str, list[str]] = {}
    acts = {s.block: s for s in merge_by_block(run.activations)}
    for block in dict.fromkeys(s.block for s in run.layers):
        group = [s for s in run.layers if s.block == block and s.kind != "bn"]
        bns = [s for s in run.layers if s.block == block and s.kind == "bn"]
        count = sum(s.count for s in group) or 1
        mean_abs = sum(s.mean_abs * s.count for s in group) / count
        near_abs = sum(s.near_zero_abs * s.count for s in group) / count
        near_rel = sum(s.near_zero_rel * s.count for s in group) / count
        pruned = sum(len(run.prunable.get(s.name, [])) for s in bns)
        act = acts.get(block)
        out[block] = [f"{count:,}", f"{mean_abs:.4g}", _pct(near_abs), _pct(near_rel),
                      f"{pruned}/{sum(s.count for s in bns)}" if bns else "-",
                      _pct(act.zero_fraction) if act else "-",
                      f"{len(act.dead_channels)}/{act.channels}" if act else "-"]
    return out


def _tag_runs(runs: list[Inspection]) -> None:
    for letter, run in zip("ABCDEFGHIJ", runs, strict=False):
        run.tag = letter if len(runs) > 1 else ""


def summary_table(runs: list[Inspection]) -> str:
    """Per block, each run's columns side by side (markdown; headers end in (A), (B), ...)."""
    _tag_runs(runs)
    names = ["weights", "mean abs w", "near 0 (abs)", "near 0 (rel)", "prunable BN ch.",
             "zeros after ReLU", "dead ch."]
    per_run = [_block_rows(run) for run in runs]
    blocks = list(dict.fromkeys(b for rows in per_run for b in rows))
    header = ["block"] + _headers(names, runs)
    rows = [[b] + [rows.get(b, ["-"] * len(names))[i] for i in range(len(names))
                   for rows in per_run] for b in blocks]
    return _table(header, rows)


def _layer_table(runs: list[Inspection]) -> str:
    by_run = [{s.name: s for s in run.layers} for run in runs]
    names = list(dict.fromkeys(s.name for run in runs for s in run.layers))
    cols = ["mean abs w", "std", "near 0 (abs)", "near 0 (rel)"]
    header = ["layer", "block", "kind", "count"] + _headers(cols, runs)
    rows = _side_by_side(
        by_run, names, width=len(cols),
        fixed=lambda s: [s.label, s.block, s.kind, f"{s.count:,}"],
        values=lambda s: [f"{s.mean_abs:.4g}", f"{s.std:.4g}", _pct(s.near_zero_abs),
                          _pct(s.near_zero_rel)])
    return _table(header, rows)


def _side_by_side(by_run: list[dict], names: list[str], *, width: int, fixed, values) -> list:
    """One row per name: ``fixed(stats)`` of the first run that has it, then ``width`` columns
    of ``values(stats)``, each with one cell per run ("-" where a run lacks the name)."""
    rows = []
    for name in names:
        present = [stats.get(name) for stats in by_run]
        first = next(s for s in present if s is not None)
        cells = [values(s) if s is not None else ["-"] * width for s in present]
        rows.append(fixed(first) + [run[c] for c in range(width) for run in cells])
    return rows


def _gamma_table(runs: list[Inspection], threshold: float) -> str:
    header = ["BN layer", "channels"] + _headers(
        ["min abs gamma", "median abs gamma", f"prunable (abs gamma < {threshold:g})"], runs)
    layers = list(dict.fromkeys(n for run in runs for n, (k, _) in run.weights.items()
                                if k == "bn"))
    rows = []
    for name in layers:
        stats = []
        for run in runs:
            gamma = run.weights[name][1].abs() if name in run.weights else None
            stats.append(gamma)
        channels = next(g for g in stats if g is not None).numel()
        mins = [f"{g.min():.3g}" if g is not None else "-" for g in stats]
        medians = [f"{g.median():.3g}" if g is not None else "-" for g in stats]
        pruned = [_channel_list(run.prunable.get(name, [])) for run in runs]
        rows.append([layer_label(name), str(channels)] + mins + medians + pruned)
    return _table(header, rows)


def _channel_list(channels: list[int], shown: int = 12) -> str:
    if not channels:
        return "0"
    listed = ", ".join(map(str, channels[:shown])) + (", ..." if len(channels) > shown else "")
    return f"{len(channels)} ({listed})"


def _activation_table(runs: list[Inspection]) -> str:
    measured = [r for r in runs if r.activations]
    by_run = [{s.name: s for s in r.activations} for r in measured]
    names = list(dict.fromkeys(s.name for r in measured for s in r.activations))
    cols = ["mean", "std", "zeros", "dead channels"]
    header = ["layer", "block", "channels"] + _headers(cols, measured)
    rows = _side_by_side(
        by_run, names, width=len(cols),
        fixed=lambda s: [s.label, s.block, str(s.channels)],
        values=lambda s: [f"{s.mean:.4g}", f"{s.std:.4g}", _pct(s.zero_fraction),
                          _channel_list(s.dead_channels)])
    return _table(header, rows)


def _block_figures(runs: list[Inspection], out_dir: Path, gamma_threshold: float) -> list[Path]:
    """One histogram grid per block (conv/linear weights and BN gammas, a column per run)."""
    names = list(dict.fromkeys(n for run in runs for n in run.weights))
    blocks = {s.name: s.block for run in runs for s in run.layers}
    paths = []
    for block in dict.fromkeys(blocks[n] for n in names):
        rows = []
        for name in (n for n in names if blocks[n] == block):
            kind = next(run.weights[name][0] for run in runs if name in run.weights)
            label = shown(layer_label(name), limit=80) + (" (gamma)" if kind == "bn" else "")
            rows.append((label, {run.label: run.weights[name][1] for run in runs
                                 if name in run.weights}))
        figure = out_dir / f"weights_{path_component(block, fallback='block')}.png"
        paths.append(plot_block_histograms(rows, writable_file(figure),
                                           title=f"{shown(block, limit=80)}: weight histograms",
                                           gamma_threshold=gamma_threshold))
    return paths


def write_report(runs: list[Inspection], out_dir: str | Path, *,
                 thresholds: Thresholds = Thresholds()) -> Path:
    """Write ``report.md`` and its PNGs into ``out_dir``; returns the report's path.

    Args:
        runs (list[Inspection]): one or more (typically two: e.g. CE vs focal), side by side.
    """
    out_dir = writable_dir(Path(out_dir))
    _tag_runs(runs)
    figures = _block_figures(runs, out_dir, thresholds.gamma)
    gammas = {run.label: {shown(layer_label(n), limit=80): w
                          for n, (kind, w) in run.weights.items() if kind == "bn"}
              for run in runs}
    parts = ["# Model inspection", ""]
    parts += [f"- {f'**{run.tag}** = ' if run.tag else ''}**{run.label}**: `{run.source}`"
              for run in runs]
    parts += ["", f"Near zero: **absolute** |w| < {thresholds.abs:g}; **relative** |w| < "
              f"{thresholds.rel:g} x the layer's max |w|. Prunable BN channel: |gamma| < "
              f"{thresholds.gamma:g}. Weight statistics are over conv/linear weights and BN "
              f"gammas (biases left out); the per-block summary counts conv/linear weights only.", ""]
    parts += ["## Summary per block", "", summary_table(runs), ""]
    parts += ["## Layers", "", _layer_table(runs), ""]
    if any(gammas.values()):
        plot_gamma_distribution(gammas, writable_file(out_dir / "bn_gamma.png"),
                                threshold=thresholds.gamma)
        parts += ["## BN gammas", "", _gamma_table(runs, thresholds.gamma), "",
                  "![BN gamma distribution](bn_gamma.png)", ""]
    if any(run.activations for run in runs):
        images = ", ".join(f"{run.label}: {run.images}" for run in runs if run.activations)
        plot_activations({r.label: r.activations for r in runs if r.activations},
                         writable_file(out_dir / "activations.png"))
        parts += ["## Activations after ReLU", "",
                  f"Validation images ({images}); a dead channel is never positive over all "
                  "of them.", "", _activation_table(runs), "",
                  "![activation statistics](activations.png)", ""]
    parts += ["## Weight histograms per block", ""]
    parts += [f"![{p.stem}]({p.name})" for p in figures]
    path = writable_file(out_dir / "report.md")
    path.write_text(shown_text("\n".join(parts)) + "\n", encoding="utf-8")
    return path
