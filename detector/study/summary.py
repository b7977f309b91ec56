"""Runs side by side: the config keys that tell them apart, groups of runs that differ only by
seed (mean +- std, n), and for exactly two groups their difference with a 95 % interval.

Tables come out as rows of strings (console, markdown) and of raw values (CSV).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from detector.run_files import COMPLETED
from detector.study.runs import Run
from detector.study.stats import Difference, difference, mean_std
from detector.untrusted import shown

__all__ = ["METRICS", "SEED_KEY", "Group", "Study", "build_study", "difference_lines", "differing_keys",
           "group_runs", "group_table", "run_table", "seed_of", "value_of"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SEED_KEY = "seed"
NOISE_KEYS = ("output_dir", "name")  # differ between any two runs, or follow from other keys
MISSING = "-"


def value_of(run: Run, key: str) -> Any:
    """A key's value for one run: the resolved config's when it has it, else the override typed
    (``experiment=...`` is not a config key), else ``-``."""
    if key in run.config:
        return run.config[key]
    return run.overrides.get(key, MISSING)


def seed_of(run: Run) -> int | None:
    """The run's integer ``seed`` (None when unknown or not an integer: nothing pairs by it)."""
    seed = run.config.get(SEED_KEY)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """The keys whose values differ between runs: first among the command-line overrides (what
    the user varied, e.g. ``experiment``); when those do not tell the runs apart, among the whole
    resolved config (``output_dir`` and ``name`` never count)."""
    def differs(key: str) -> bool:
        return len({_hashable(value_of(r, key)) for r in runs}) > 1

    typed = sorted({k for r in runs for k in r.overrides})
    keys = [k for k in typed if differs(k)]
    if keys or len(runs) < 2:
        return keys
    flat = sorted({k for r in runs for k in r.config} - set(NOISE_KEYS))
    return [k for k in flat if differs(k)]


@dataclass
class Group:
    """Runs with the same values of every differing key but the seed."""

    label: str
    runs: list[Run]

    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status in COMPLETED]

    def values(self, metric: str) -> list[tuple[Any, float]]:
        """(seed, final metric) of each finished run that has it (seed None when unknown)."""
        found = [(seed_of(r), r.metric(metric)) for r in self.finished()]
        return [(seed, v) for seed, v in found if v is not None]

    def by_seed(self, metric: str) -> dict[Any, float]:
        """seed -> final metric, for pairing: each run keyed by its own position (no pairs)
        when a seed is unknown or repeated within the group."""
        values = self.values(metric)
        seeds = [seed for seed, _ in values]
        if None in seeds or len(set(seeds)) < len(seeds):
            return {(self.label, i): v for i, (_, v) in enumerate(values)}
        return dict(values)

    def stat(self, metric: str) -> tuple[float, float | None, int] | None:
        """(mean, std or None, n) over finished runs, or None if none has the metric."""
        values = [v for _, v in self.values(metric)]
        return None if not values else (*mean_std(values), len(values))

    def class_stat(self, name: str) -> tuple[float, float | None, int] | None:
        values = [r.class_ap().get(name) for r in self.finished()]
        values = [v for v in values if v is not None]
        return None if not values else (*mean_std(values), len(values))


@dataclass
class Study:
    """Runs, the keys that differ, their groups and (two groups) the differences B - A."""

    runs: list[Run]
    keys: list[str]
    groups: list[Group]
    classes: list[str]
    differences: dict[str, Difference]


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Groups by every key of ``keys`` but ``seed``, in order of first appearance."""
    group_keys = [k for k in keys if k != SEED_KEY]
    groups: dict[tuple, Group] = {}
    for run in runs:
        values = tuple(_hashable(value_of(run, k)) for k in group_keys)
        label = shown(", ".join(f"{k}={v}" for k, v in zip(group_keys, values, strict=True)),
                      limit=200) or "all runs"
        groups.setdefault(values, Group(label, [])).runs.append(run)
    return list(groups.values())


def build_study(runs: Sequence[Run]) -> Study:
    keys = differing_keys(runs)
    groups = group_runs(runs, keys)
    classes = list(dict.fromkeys(c for r in runs for c in r.class_ap()))
    differences: dict[str, Difference] = {}
    if len(groups) == 2:
        a, b = groups
        for metric in ("AP", "AP50"):
            found = difference(a.by_seed(metric), b.by_seed(metric))
            if found is not None:
                differences[metric] = found
    return Study(list(runs), keys, groups, classes, differences)


def _number(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _minutes(seconds: float | None) -> str:
    return MISSING if seconds is None else f"{seconds / 60:.1f}"


def run_table(study: Study, *, raw: bool = False) -> list[list[Any]]:
    """Header + one row per run: run, differing keys, status, iterations, wall time (min),
    AP..APl, per-class AP. ``raw``: numbers as numbers (for CSV), None where undefined."""
    header = ["run", *study.keys, "status", "iterations", "wall_min", *METRICS,
              *(f"AP[{c}]" for c in study.classes)]
    rows: list[list[Any]] = [header]
    for run in study.runs:
        metrics = [run.metric(m) for m in METRICS]
        per_class = [run.class_ap().get(c) if run.status in COMPLETED else None
                     for c in study.classes]
        minutes = None if run.wall_time_s is None else run.wall_time_s / 60
        values = [*metrics, *per_class]
        if raw:
            rows.append([run.name, *(value_of(run, k) for k in study.keys), run.status,
                         run.iterations, minutes, *values])
        else:
            rows.append([run.name, *(str(value_of(run, k)) for k in study.keys), run.label,
                         MISSING if run.iterations is None else str(run.iterations),
                         _minutes(run.wall_time_s), *(_number(v) for v in values)])
    return rows


def _mean_pm(stat: tuple[float, float | None, int] | None) -> str:
    if stat is None:
        return MISSING
    mean, std, _ = stat
    return f"{mean:.4f}" if std is None else f"{mean:.4f} +- {std:.4f}"


def group_table(study: Study) -> list[list[str]]:
    """Header + one row per group: label, n (finished / all), mean +- std of each metric."""
    header = ["group", "n", *METRICS, *(f"AP[{c}]" for c in study.classes)]
    rows = [header]
    for g in study.groups:
        cells = [_mean_pm(g.stat(m)) for m in METRICS]
        cells += [_mean_pm(g.class_stat(c)) for c in study.classes]
        rows.append([g.label, f"{len(g.finished())}/{len(g.runs)}", *cells])
    return rows


def difference_lines(study: Study) -> list[str]:
    """One sentence per metric for exactly two groups: ``B - A: ... AP``."""
    if len(study.groups) != 2:
        return []
    a, b = study.groups
    return [f"{metric}: [{b.label}] - [{a.label}] = {diff}"
            for metric, diff in study.differences.items() if math.isfinite(diff.mean)]
