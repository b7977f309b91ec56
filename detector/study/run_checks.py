"""What the files of a run folder must hold for a study to use them, checked once as they are
read (:func:`detector.study.runs.load_run`), so that tables, statistics and figures see only
well-typed values. Each check returns the value (the config flattened) or raises
:class:`~detector.untrusted.RunFileError` naming the file and the key: the run is then
skipped with that reason.

- ``config.json``: an object, nested at most ``MAX_DEPTH`` levels, keys printable and short.
- ``.hydra/overrides.yaml``: a list of ``key=value`` strings (scalars), keys printable and short.
- ``final_metrics.json``: an object; ``status`` finished or diverged; iteration counts integers;
  the metrics (``AP*``, ``AR*``), ``wall_time_s`` and ``lr`` finite numbers or null;
  ``per_class`` class name -> finite number or null; ``pr_iou50`` recall thresholds and, per
  class, as many precisions (or null).
- ``metrics.jsonl`` records: ``iter``/``phase_iter`` finite numbers; losses, ``lr``,
  ``grad_norm``, ``AP*``/``AR*`` numbers (NaN and infinity allowed: a diverging loss) or null;
  ``step``/``phase`` short printable strings or integers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from detector.run_files import COMPLETED, DIVERGED, FINISHED
from detector.untrusted import RunFileError, finite_number, shown

__all__ = ["MAX_DEPTH", "NAME_LIMIT", "check_config", "check_final", "check_name",
           "check_overrides", "check_records", "flatten"]

MAX_DEPTH = 64  # config nesting
NAME_LIMIT = 200  # characters of a key, class name or phase name
MAX_INT = 10 ** 15
IGNORED_OVERRIDES = ("output_dir", "resume", "hydra")  # never what a comparison is about


def check_name(value: Any, what: str, source: str) -> str:
    """``value`` if it is a printable string of at most ``NAME_LIMIT`` characters."""
    if not isinstance(value, str) or len(value) > NAME_LIMIT or not value.isprintable():
        raise RunFileError(f"{source}: {what} {shown(value, limit=40)} is not a printable "
                           f"name of at most {NAME_LIMIT} characters")
    return value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b.c": leaf}``; lists are leaves (written as JSON for comparing).
    Raises RunFileError when nested deeper than ``MAX_DEPTH``."""
    flat: dict[str, Any] = {}
    stack = [(prefix, tree, 0)]
    while stack:
        key, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RunFileError(f"nested more than {MAX_DEPTH} levels (at {shown(key, limit=80)})")
        if isinstance(value, dict):
            stack.extend((f"{key}.{k}" if key else str(k), v, depth + 1)
                         for k, v in reversed(value.items()))
        else:
            flat[key] = _leaf(value)
    return flat


def _leaf(value: Any) -> Any:
    if not isinstance(value, list):
        return value
    try:
        return json.dumps(value)
    except (RecursionError, ValueError):
        raise RunFileError("a list is nested too deeply") from None


def check_config(value: Any, source: str) -> dict[str, Any]:
    """``config.json`` flattened to dotted keys (``{}`` when absent)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RunFileError(f"{source}: not a JSON object")
    try:
        flat = flatten(value)
    except RunFileError as error:
        raise RunFileError(f"{source}: {error}") from None
    for key in flat:
        check_name(key, "key", source)
    return flat


def check_overrides(value: Any, source: str) -> dict[str, str]:
    """The overrides as ``key -> value`` as typed (``+``/``~`` dropped, Hydra's own and
    ``output_dir``/``resume`` left out)."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise RunFileError(f"{source}: not a list of overrides")
    found: dict[str, str] = {}
    for item in value:
        if isinstance(item, dict | list):
            raise RunFileError(f"{source}: an override is not a key=value string")
        key, _, typed = str(item).lstrip("+~").partition("=")
        check_name(key, "override key", source)
        if key.split(".")[0] not in IGNORED_OVERRIDES and not key.startswith("hydra/"):
            found[key] = typed
    return found


def _optional(final: dict, key: str, source: str, *, integer: bool = False) -> None:
    value = final.get(key)
    if value is None:
        return
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_INT:
            raise RunFileError(f"{source}: {key!r} is not an integer")
    elif finite_number(value) is None:
        raise RunFileError(f"{source}: {key!r} is not a finite number")


def _numbers(values: Any, what: str, source: str) -> list[float]:
    if not isinstance(values, list) or not values or any(
            finite_number(v) is None for v in values):
        raise RunFileError(f"{source}: {what} is not a list of finite numbers")
    return values


def _check_pr(pr: Any, source: str) -> None:
    if not isinstance(pr, dict) or not isinstance(pr.get("precision") or {}, dict):
        raise RunFileError(f"{source}: 'pr_iou50' is not an object of recall and precision")
    recall = _numbers(pr.get("recall"), "'pr_iou50.recall'", source)
    for name, values in (pr.get("precision") or {}).items():
        check_name(name, "class name", source)
        if values is not None and len(_numbers(values, f"'pr_iou50' of {name}",
                                                source)) != len(recall):
            raise RunFileError(f"{source}: 'pr_iou50' of {name} is not as long as its recall")


def check_final(value: Any, source: str) -> dict | None:
    """``final_metrics.json`` (None when absent: running, or killed)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RunFileError(f"{source}: not a JSON object")
    if value.get("status", FINISHED) not in (*COMPLETED, DIVERGED):
        raise RunFileError(f"{source}: 'status' is none of {', '.join((*COMPLETED, DIVERGED))}")
    for key in ("iterations", "iteration", "skipped_steps"):
        _optional(value, key, source, integer=True)
    for key in value:
        if key.startswith(("AP", "AR")) or key in ("wall_time_s", "lr"):
            _optional(value, key, source)
    per_class = value.get("per_class")
    if per_class is not None:
        if not isinstance(per_class, dict):
            raise RunFileError(f"{source}: 'per_class' is not an object")
        for name, ap in per_class.items():
            check_name(name, "class name", source)
            if ap is not None and finite_number(ap) is None:
                raise RunFileError(f"{source}: 'per_class' of {name} is not a finite number")
    if value.get("pr_iou50") is not None:
        _check_pr(value["pr_iou50"], source)
    return value


def _is_number(value: Any) -> bool:
    """A JSON number a float can hold (NaN and infinity included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _check_record(record: dict, where: str) -> None:
    for key in ("iter", "phase_iter"):
        if key in record and not (_is_number(record[key]) and math.isfinite(record[key])):
            raise RunFileError(f"{where}: {key!r} is not a finite number")
    for key, value in record.items():
        numeric = key.startswith(("loss", "AP", "AR")) or key in ("lr", "grad_norm")
        if numeric and value is not None and not _is_number(value):
            raise RunFileError(f"{where}: {shown(key, limit=40)!r} is not a number")
    for key in ("step", "phase"):
        value = record.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                      and abs(value) <= MAX_INT):
            check_name(value, key, where)


def check_records(records: Sequence[dict], source: str) -> list[dict]:
    """The ``metrics.jsonl`` objects, each checked (see the module docstring)."""
    for n, record in enumerate(records, start=1):
        _check_record(record, f"{source}: record {n}")
    return list(records)
