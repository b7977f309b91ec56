"""Run folders as a study sees them: what was asked (config, command-line overrides), how it
ended (``final_metrics.json``) and how it went (``metrics.jsonl``).

A run folder is one training run's output directory (its files: :mod:`detector.run_files`): it
holds ``config.json`` (the resolved config), ``.hydra/overrides.yaml``, ``metrics.jsonl`` and,
once the run has ended, ``final_metrics.json``. A sweep folder holds run folders (one per job)
and a ``sweep.jsonl``.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.errors import UserError
from detector.run_files import (
    COMPLETED,
    CONFIG,
    DIVERGED,
    FINAL_METRICS,
    FINISHED,
    INCOMPLETE,
    METRICS,
    OVERRIDES,
    RUN_MARKERS,
    read_config,
    read_final_metrics,
    read_metrics_jsonl,
)
from detector.study.run_checks import (
    check_config,
    check_final,
    check_overrides,
    check_records,
    flatten,
)
from detector.untrusted import RunFileError, finite_number, read_plain_yaml, shown

__all__ = ["Run", "RunFileError", "StudyError", "check_same_dataset", "find_runs", "flatten",
           "load_run", "report_dir", "skipped_line"]

MAX_DEPTH = 32  # folders below an argument searched for runs
MAX_METRICS_BYTES = 512 << 20
MAX_OVERRIDES_BYTES = 256 << 10  # YAML is parsed in Python: ~6 s per MiB of short items


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
        """``finished``, ``early_stopped``, ``diverged`` or ``incomplete`` (no final metrics)."""
        if self.final is None:
            return INCOMPLETE
        return self.final.get("status", FINISHED)

    @property
    def iterations(self) -> int | None:
        if self.final is not None and isinstance(self.final.get("iterations"), int):
            return int(self.final["iterations"])
        iters = [int(r["iter"]) for r in self.records if "loss" in r and "iter" in r]
        return max(iters) if iters else None

    @property
    def wall_time_s(self) -> float | None:
        return None if self.final is None else finite_number(self.final.get("wall_time_s"))

    def metric(self, key: str) -> float | None:
        """A final metric (``AP``, ``AP50``, ...) or None (not finished, or undefined)."""
        if self.status not in COMPLETED:
            return None
        return finite_number(self.final.get(key))

    def class_ap(self) -> dict[str, float | None]:
        return dict((self.final or {}).get("per_class") or {})

    @property
    def label(self) -> str:
        """A short description of the outcome for tables: e.g. ``diverged at it 12 (lr 3e-02)``."""
        if self.status == DIVERGED:
            exploded = str(self.final.get("reason", "")).startswith("loss")
            lr = finite_number(self.final.get("lr"))
            return (f"diverged at it {self.final.get('iteration')} (lr "
                    f"{'?' if lr is None else f'{lr:.1e}'})" + (", loss exploded" if exploded else ""))
        if self.status == INCOMPLETE:
            it = self.iterations
            return "no final metrics" + ("" if it is None else f" (last logged it {it})")
        return self.status


def _read_overrides(path: Path) -> dict[str, str]:
    return check_overrides(read_plain_yaml(path, limit=MAX_OVERRIDES_BYTES), str(path))


def _read_records(path: Path) -> list[dict]:
    # a line that is not UTF-8 is skipped (with a warning) like a half-written one
    return check_records(read_metrics_jsonl(path, limit=MAX_METRICS_BYTES), str(path))


def load_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """Read one run folder; missing files leave their fields empty.

    Raises:
        RunFileError: a file that is there but is not what the tools write (not a regular
            file, too large, not UTF-8, invalid JSON/YAML, wrong types: see
            :mod:`detector.study.run_checks`); a study skips the run with it as the reason.
    """
    path = Path(path)
    return Run(path=path, name=name or shown(path.name, limit=None),
               config=check_config(read_config(path), str(path / CONFIG)),
               overrides=_read_overrides(path / OVERRIDES),
               final=check_final(read_final_metrics(path), str(path / FINAL_METRICS)),
               records=_read_records(path / METRICS))


def _is_run(path: Path) -> bool:
    return any(os.path.lexists(path / marker) for marker in RUN_MARKERS)


def _subfolders(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            return sorted(Path(e.path) for e in entries if _is_dir(e))
    except OSError:
        return []  # unreadable: nothing found below it


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _run_folders(path: Path) -> list[Path]:
    """``path`` if it is a run folder, else the run folders below it (not inside runs), each
    real folder once: symbolic links are followed to folders not seen yet (a link to ``.`` or
    ``..`` ends there), at most ``MAX_DEPTH`` levels down."""
    found: list[Path] = []
    seen: set[str] = set()
    stack = [(path, 0)]
    while stack:
        folder, depth = stack.pop()
        real = os.path.realpath(folder)
        if real in seen or depth > MAX_DEPTH:
            continue
        seen.add(real)
        if _is_run(folder):
            found.append(folder)
        else:
            stack.extend((child, depth + 1) for child in reversed(_subfolders(folder)))
    return found


def _expand(arguments: Iterable[str | os.PathLike]) -> list[Path]:
    paths: list[Path] = []
    for arg in map(str, arguments):
        matches = sorted(glob.glob(arg)) if glob.has_magic(arg) else [arg]
        if not matches or not all(Path(m).is_dir() for m in matches):
            raise StudyError(f"{shown(arg)} is not a run or sweep folder")
        paths.extend(Path(m) for m in matches)
    return paths


def skipped_line(skipped: Sequence[tuple[str, str]], shown_at_most: int = 10) -> str:
    listed = "; ".join(f"{name} ({reason})" for name, reason in skipped[:shown_at_most])
    more = f"; and {len(skipped) - shown_at_most} more" if len(skipped) > shown_at_most else ""
    return f"skipped {len(skipped)} run{'s' if len(skipped) != 1 else ''}: {listed}{more}"


def find_runs(arguments: Sequence[str | os.PathLike],
              skipped: list[tuple[str, str]] | None = None) -> list[Run]:
    """Every run folder named by ``arguments`` (run folders, sweep folders or globs), once each
    (by its real path: a sweep and one of its runs, or two spellings of a folder, count it
    once), named by its path relative to the deepest folder common to all of them.

    Args:
        skipped: gets ``(name, reason)`` of each run folder whose files are malformed (see
            :func:`load_run`); such runs are left out.

    Raises:
        StudyError: no run folders, or none that could be read (one sentence).
    """
    folders: dict[str, Path] = {}
    for path in _expand(arguments):
        for folder in _run_folders(path):
            folders.setdefault(os.path.realpath(folder), folder)
    if not folders:
        raise StudyError(f"no run folders (with {', '.join(RUN_MARKERS)}) under "
                         f"{shown(', '.join(map(str, arguments)))}")
    resolved = [Path(real) for real in folders]
    common = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    runs, failed, names = [], [], set()
    for n, (folder, real) in enumerate(zip(folders.values(), resolved, strict=True)):
        name = shown(real.relative_to(common).as_posix(), limit=None)
        name = name if name not in names else f"{name} ({n})"  # escapes that coincide
        names.add(name)
        try:
            runs.append(load_run(folder, name))
        except RunFileError as error:
            failed.append((name, str(error)))
    if skipped is not None:
        skipped.extend(failed)
    if not runs:
        raise StudyError(f"no run could be read: {skipped_line(failed, 3)}")
    return runs


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
    ``<folder>/<kind>`` for one folder (a sweep), else ``outputs/<kind>/<date_time>``.

    Raises:
        StudyError: ``<folder>/<kind>`` is a symbolic link or a file (a copied folder's: it
            would choose where the report goes).
    """
    if len(arguments) == 1 and Path(arguments[0]).is_dir():
        out = Path(arguments[0]) / kind
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise StudyError(f"{shown(out)} is a symbolic link or a file, not a report folder; "
                             f"pass --out DIR")
        return out
    return Path("outputs") / kind / time.strftime("%Y-%m-%d_%H-%M-%S")
