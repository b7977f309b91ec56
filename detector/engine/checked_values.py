"""Values read from a training checkpoint, checked one key at a time: ``Where`` names the file
and the key in a one-line refusal; ``show`` and ``part`` describe a value or a key without a huge
repr; ``plain_data`` bounds JSON-like data (``resume_checks`` and ``optim`` use them)."""

from __future__ import annotations

import math

import torch

from detector.checkpoint import CheckpointError

__all__ = ["Where", "is_number", "part", "plain_data", "short_names", "show"]


def show(value) -> str:
    """A short description of ``value`` for a one-line message (never a huge repr)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    return f"a {type(value).__name__}"


def part(name) -> str:
    """A dict key as part of a dotted key in a message: a short identifier as it is, anything
    else as ``show`` describes it."""
    return name if isinstance(name, str) and len(name) <= 60 and name.isidentifier() else \
        show(name)


def short_names(names: list[str]) -> str:
    shown = [name[:40] for name in names[:8]]
    return str(shown)[:-1] + (f", ... ({len(names)} in all)]" if len(names) > 8 else "]")


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and (
        isinstance(value, int) or math.isfinite(value))


def plain_data(value, *, budget: int = 1_000_000, depth: int = 4, strings: bool = True) -> bool:
    """Whether ``value`` is JSON-like data (dicts with string keys, lists; None, bools, finite
    numbers and, with ``strings``, strings as leaves) of at most ``depth`` levels and ``budget``
    items in all (a pickle may share one list many times over)."""
    todo, seen = [(value, 0)], 0
    while todo:
        item, level = todo.pop()
        seen += 1
        if seen > budget or level > depth:
            return False
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            todo += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list | tuple):
            todo += [(v, level + 1) for v in item]
        elif not (item is None or isinstance(item, bool) or is_number(item)
                  or (strings and isinstance(item, str))):
            return False
    return True


class Where:
    """Where a value comes from (``source``: "checkpoint PATH"), and the one-line refusals
    naming its key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, what: str, kind: type[CheckpointError] = CheckpointError):
        return kind(f"{self.source}: {key} {what}")

    def integer(self, value, key: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.error(key, f"is {show(value)}, not an integer in [{low}, {high}]")
        return value

    def number(self, value, key: str, *, low: float = -math.inf) -> float:
        if not is_number(value) or value < low:
            raise self.error(key, f"is {show(value)}, not a finite number >= {low:g}")
        return value

    def mapping(self, value, key: str) -> dict:
        if not isinstance(value, dict):
            raise self.error(key, f"is {show(value)}, not a dict")
        return value

    def sequence(self, value, key: str, length: int | None = None, *, most: int = 10**6) -> list:
        if not isinstance(value, list | tuple) or len(value) > most or (
                length is not None and len(value) != length):
            size = f" of {length} entries" if length is not None else ""
            raise self.error(key, f"is {show(value)}, not a list{size}")
        return list(value)
