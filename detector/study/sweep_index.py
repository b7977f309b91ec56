"""The index of a sweep (a Hydra multirun): which job ran with which overrides, in which folder,
and how it ended. ``sweep.jsonl`` gets one line per job as the job ends; ``sweep.md`` is the same
as a table, rewritten each time.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector.run_files import parse_record
from detector.study.runs import Run, load_run
from detector.study.tables import markdown_table
from detector.untrusted import RunFileError, finite_number, read_bytes, shown

__all__ = ["INDEX_JSONL", "INDEX_MD", "index_markdown", "job_entry", "job_folder_name",
           "read_index", "record_job"]

INDEX_JSONL, INDEX_MD = "sweep.jsonl", "sweep.md"
NAME_LIMIT = 150  # characters; file systems allow 255 per path component


def job_folder_name(overrides: str, job: int, limit: int = NAME_LIMIT) -> str:
    """A sweep job's folder name from its overrides (``"experiment=ce,seed=0"``): ``/`` in
    values (paths) becomes ``_`` so each job is one folder; a name longer than ``limit`` is cut
    and ends with ``_etc_job<N>`` (the sweep index has the full list); no overrides: ``job<N>``."""
    name = overrides.replace("/", "_")
    if not name:
        return f"job{job}"
    return name if len(name) <= limit else f"{name[:limit]}_etc_job{job}"


def job_entry(*, job: int, overrides: Sequence[str], run_dir: str | os.PathLike,
              sweep_dir: str | os.PathLike, error: str | None = None) -> dict[str, Any]:
    """One job's line: ``job``, ``overrides``, ``dir`` (relative to the sweep), ``status``
    (finished | diverged | incomplete | failed), ``iterations``, ``AP``, ``AP50``, and for a
    diverged job ``diverged_at`` and ``lr``; ``error`` when the job raised (or its run folder
    cannot be read: status failed)."""
    try:
        run = load_run(run_dir)
    except RunFileError as unreadable:
        run, error = Run(path=Path(run_dir), name=Path(run_dir).name), error or str(unreadable)
    entry: dict[str, Any] = {
        "job": int(job), "overrides": list(overrides),
        "dir": os.path.relpath(run_dir, sweep_dir), "status": run.status,
        "iterations": run.iterations, "AP": run.metric("AP"), "AP50": run.metric("AP50")}
    if run.status == "diverged":
        entry.update(diverged_at=run.final.get("iteration"), lr=run.final.get("lr"))
    if error is not None:
        entry.update(status="failed", error=error)
    return entry


def _is_entry(entry: dict | None) -> bool:
    """A line as :func:`job_entry` writes it: an integer job, a list of string overrides,
    string dir/status/error, numbers (or null) for the rest."""
    if entry is None:
        return False
    job = entry.get("job")
    overrides = entry.get("overrides")
    return (isinstance(job, int) and not isinstance(job, bool)
            and isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)
            and all(isinstance(entry.get(k), str) for k in ("dir", "status"))
            and isinstance(entry.get("error", ""), str | None)
            and all(entry.get(k) is None or finite_number(entry[k]) is not None
                    for k in ("iterations", "AP", "AP50", "diverged_at", "lr")))


def read_index(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of ``sweep.jsonl`` (the newest per job number), in job order; lines that are
    not such entries (half-written, or not what :func:`job_entry` writes) are left out, and so is
    a file that is not a regular one, too large or not UTF-8."""
    try:
        data = read_bytes(Path(sweep_dir) / INDEX_JSONL)
    except RunFileError:
        data = None
    entries: dict[int, dict] = {}
    for line in (data or b"").decode("utf-8", errors="replace").splitlines():
        entry = parse_record(line)
        if _is_entry(entry):
            entries[entry["job"]] = entry
    return [entries[k] for k in sorted(entries)]


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _outcome(entry: dict) -> str:
    if entry["status"] == "diverged":
        lr = finite_number(entry.get("lr"))
        return (f"diverged at it {entry.get('diverged_at')} "
                f"(lr {'?' if lr is None else f'{lr:.1e}'})")
    return entry["status"] + (f": {entry['error']}" if entry.get("error") else "")


def index_markdown(sweep_dir: str | os.PathLike, entries: Sequence[dict[str, Any]]) -> str:
    """The index as markdown: the overrides every job shares once, then a row per job."""
    common = [o for o in entries[0]["overrides"]
              if all(o in e["overrides"] for e in entries)] if len(entries) > 1 else []
    rows = [["job", "overrides", "folder", "outcome", "iterations", "AP", "AP50"]]
    rows += [[str(e["job"]), " ".join(o for o in e["overrides"] if o not in common), e["dir"],
              _outcome(e), _cell(e.get("iterations")), _cell(e.get("AP")), _cell(e.get("AP50"))]
             for e in entries]
    shared = f"Overrides of every job: {shown(' '.join(common), limit=None)}\n\n" if common else ""
    return (f"# Sweep {shown(sweep_dir, limit=None)}\n\n{shared}{markdown_table(rows)}\n\n"
            f"Compare the runs: python tools/compare.py {shlex.quote(str(sweep_dir))}\n")


def record_job(sweep_dir: str | os.PathLike, entry: dict[str, Any]) -> Path:
    """Append ``entry`` to ``sweep.jsonl`` and rewrite ``sweep.md``; returns the markdown's path.
    (Lines are appended whole, so parallel jobs of one sweep do not interleave.)"""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with (sweep_dir / INDEX_JSONL).open("a") as f:
        f.write(json.dumps(entry, allow_nan=False) + "\n")
    path = sweep_dir / INDEX_MD
    path.write_text(index_markdown(sweep_dir, read_index(sweep_dir)))
    return path
