"""Run folders as a study sees them: what was asked (config, command-line overrides), how it
ended (``final_metrics.json``) and how it went (``metrics.jsonl``).

A run folder is one ``tools/train_net.py`` output directory: it holds ``config.json`` (the
resolved config), ``.hydra/overrides.yaml``, ``metrics.jsonl`` and, once the run has ended,
``final_metrics.json``. A sweep folder holds run folders (one per job) and a ``sweep.jsonl``.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detector.errors import UserError
from detector.study.curves import read_metrics_jsonl
from detector.study.outcome import DIVERGED, FINISHED, INCOMPLETE

__all__ = ["Run", "StudyError", "check_same_dataset", "find_runs", "flatten", "load_run",
           "report_dir"]

RUN_MARKERS = ("config.json", "metrics.jsonl", "final_metrics.json", ".hydra")
IGNORED_OVERRIDES = ("output_dir", "resume", "hydra")  # never what a comparison is about


class StudyError(UserError, ValueError):
    """Runs that cannot be compared, or no runs at all; the message is one sentence."""


@dataclass
class Run:
    """One run folder, read.

    Attributes:
        path: the folder; ``name`` its display name (relative to the folders compared).
        config: the resolved config flattened to dotted keys (``{}`` if ``config.json`` is absent).
        overrides: the command-line overrides, ``key -> value`` as typed (``+``/``~`` dropped).
        final: ``final_metrics.json`` (None while running, or when killed).
        records: the ``metrics.jsonl`` objects.
    """

    path: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    final: dict[str, Any] | None = None
    records: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``finished``, ``diverged`` or ``incomplete`` (no final metrics)."""
        if self.final is None:
            return INCOMPLETE
        return self.final.get("status", FINISHED)

    @property
    def iterations(self) -> int | None:
        if self.final is not None and "iterations" in self.final:
            return int(self.final["iterations"])
        iters = [r["iter"] for r in self.records if "loss" in r and "iter" in r]
        return max(iters) if iters else None

    @property
    def wall_time_s(self) -> float | None:
        return None if self.final is None else self.final.get("wall_time_s")

    def metric(self, key: str) -> float | None:
        """A final metric (``AP``, ``AP50``, ...) or None (not finished, or undefined)."""
        if self.status != FINISHED:
            return None
        value = self.final.get(key)
        return float(value) if isinstance(value, int | float) else None

    def class_ap(self) -> dict[str, float | None]:
        return dict((self.final or {}).get("per_class") or {})

    @property
    def label(self) -> str:
        """A short description of the outcome for tables: e.g. ``diverged at it 12 (lr 3e-02)``."""
        if self.status == DIVERGED:
            exploded = str(self.final.get("reason", "")).startswith("loss")
            return (f"diverged at it {self.final.get('iteration')} (lr "
                    f"{self.final.get('lr', 0):.1e})" + (", loss exploded" if exploded else ""))
        if self.status == INCOMPLETE:
            it = self.iterations
            return "no final metrics" + ("" if it is None else f" (last logged it {it})")
        return self.status


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": leaf}``; lists are leaves (written as JSON for comparing)."""
    if not isinstance(tree, dict):
        return {prefix: json.dumps(tree) if isinstance(tree, list) else tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _read_overrides(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    found: dict[str, str] = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).lstrip("+~").partition("=")
        if key.split(".")[0] not in IGNORED_OVERRIDES and not key.startswith("hydra/"):
            found[key] = value
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None  # a half-written file: as if absent


def load_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """Read one run folder; missing files leave their fields empty (never an error)."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    return Run(path=path, name=name or path.name,
               config=flatten(_read_json(path / "config.json") or {}),
               overrides=_read_overrides(path / ".hydra" / "overrides.yaml"),
               final=_read_json(path / "final_metrics.json"),
               records=read_metrics_jsonl(metrics) if metrics.is_file() else [])


def _is_run(path: Path) -> bool:
    return any((path / marker).exists() for marker in RUN_MARKERS)


def _run_folders(path: Path) -> list[Path]:
    """``path`` if it is a run folder, else the run folders below it (not inside runs)."""
    if _is_run(path):
        return [path]
    found: list[Path] = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        found.extend(_run_folders(child))
    return found


def _expand(arguments: Iterable[str | os.PathLike]) -> list[Path]:
    paths: list[Path] = []
    for arg in map(str, arguments):
        matches = sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
        if not matches or not all(Path(m).is_dir() for m in matches):
            raise StudyError(f"{arg} is not a run or sweep folder")
        paths.extend(Path(m) for m in matches)
    return paths


def find_runs(arguments: Sequence[str | os.PathLike]) -> list[Run]:
    """Every run folder named by ``arguments`` (run folders, sweep folders or globs), once each,
    named by its path relative to the deepest folder common to all of them."""
    folders: list[Path] = []
    for path in _expand(arguments):
        folders.extend(p for p in _run_folders(path) if p not in folders)
    if not folders:
        raise StudyError(f"no run folders (with {', '.join(RUN_MARKERS)}) under "
                         f"{', '.join(map(str, arguments))}")
    resolved = [p.resolve() for p in folders]
    common = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    return [load_run(p, str(r.relative_to(common))) for p, r in zip(folders, resolved, strict=True)]


def _dataset_of(run: Run) -> tuple[Any, tuple[str, ...]]:
    return run.config.get("dataset.name"), tuple(run.class_ap())


def check_same_dataset(runs: Sequence[Run]) -> None:
    """Raise StudyError when the runs were trained on different datasets or class lists (runs
    that do not say, e.g. still running, pass)."""
    seen: dict[tuple, str] = {}
    for run in runs:
        name, classes = _dataset_of(run)
        for (other_name, other_classes), other in seen.items():
            if (name and other_name and name != other_name) or (
                    classes and other_classes and classes != other_classes):
                raise StudyError(
                    f"{other} and {run.name} were evaluated on different datasets "
                    f"({other_name or '?'}: {', '.join(other_classes) or '?'} vs "
                    f"{name or '?'}: {', '.join(classes) or '?'}); compare runs of one dataset")
        seen.setdefault((name, classes), run.name)


def report_dir(arguments: Sequence[str | os.PathLike], kind: str) -> Path:
    """Where a report of ``kind`` ("compare", "analysis") on ``arguments`` goes by default:
    ``<folder>/<kind>`` for one folder (a sweep), else ``outputs/<kind>/<date_time>``."""
    if len(arguments) == 1 and Path(arguments[0]).is_dir():
        return Path(arguments[0]) / kind
    return Path("outputs") / kind / time.strftime("%Y-%m-%d_%H-%M-%S")
