"""Bad-input policy for datasets: raise a clear error, or warn and count.

A user's data is messy. Every dataset owns one `DataReport`; each problem it meets goes through
`report.bad(kind, message)` (a real problem: raises `DatasetError` under ``on_bad="error"``,
warns and counts under ``on_bad="skip"``) or `report.count(kind)` (a routine repair that is always
applied, e.g. a box clipped to the image, and only counted). `report.summary()` is the
human-readable account printed at the end of a run.
"""

from __future__ import annotations

import reprlib
import warnings
from collections import Counter
from typing import Any, Literal

from detector.errors import UserError

OnBad = Literal["error", "skip"]

# Human-readable descriptions of the counter names used across `detector.data`.
KIND_DESCRIPTIONS: dict[str, str] = {
    "missing_image": "images missing on disk (skipped)",
    "unreadable_image": "images that could not be decoded (skipped)",
    "size_mismatch": "images whose size disagrees with the annotation (skipped)",
    "unknown_category": "boxes with a category not in the class list (dropped)",
    "bad_annotation": "malformed annotations (dropped)",
    "bad_annotation_file": "annotation files that could not be parsed (skipped)",
    "clipped_box": "boxes partly outside the image (clipped)",
    "degenerate_box": "boxes with zero/negative area or under the minimum size (dropped)",
    "crowd_box": "crowd boxes (not training targets, ignored at eval)",
    "difficult_box": "difficult boxes (not training targets, ignored at eval)",
    "empty_image_filtered": "images without training boxes (filtered out)",
    "size_read_from_image": "images whose size came from the file, not the annotation",
}


class DatasetError(UserError, ValueError):
    """A problem with the user's data, naming the file or annotation at fault.

    `kind` is the counter name (see `KIND_DESCRIPTIONS`) under which it is counted when skipped.
    """

    def __init__(self, message: str, *, kind: str = "bad_input") -> None:
        super().__init__(message)
        self.kind = kind


def shown(value: Any) -> str:
    """``value`` for a one-line message, cut short (``reprlib``); an int past 4,300 digits, which
    ``repr`` refuses, by its length."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of ~{int(value.bit_length() * 0.30103) + 1} digits"
    try:
        return reprlib.repr(value).replace("\n", " ")
    except ValueError:  # such an int inside a list or dict
        return f"a {type(value).__name__} too large to show"


class DataReport:
    """Counters of skipped, dropped and repaired inputs, with the policy for real problems.

    Args:
        on_bad: ``"error"`` raises `DatasetError` on the first real problem; ``"skip"`` emits a
            warning, counts it and lets the caller skip the offending image or box.
        name: what the report is about (e.g. the annotation file), used in the summary.
    """

    def __init__(self, *, on_bad: OnBad = "error", name: str = "dataset") -> None:
        if not isinstance(on_bad, str) or on_bad not in ("error", "skip"):
            raise DatasetError(f"on_bad must be 'error' or 'skip', got {shown(on_bad)}")
        self.on_bad: OnBad = on_bad
        self.name = name
        self.counts: Counter[str] = Counter()

    def bad(self, kind: str, message: str) -> None:
        """Report a real problem: raise under ``on_bad="error"``, else warn and count it."""
        if self.on_bad == "error":
            raise DatasetError(f"{message} (set on_bad='skip' to skip such inputs)", kind=kind)
        warnings.warn(f"{message}; skipped", stacklevel=2)
        self.counts[kind] += 1

    def count(self, kind: str, n: int = 1) -> None:
        """Count a routine repair or filter (never raises)."""
        if n:
            self.counts[kind] += int(n)

    def __getitem__(self, kind: str) -> int:
        return self.counts[kind]

    def as_dict(self) -> dict[str, int]:
        """The non-zero counters as a plain dict."""
        return {k: v for k, v in sorted(self.counts.items()) if v}

    def summary(self) -> str:
        """One line per non-zero counter, e.g. for the end of a training log."""
        items = self.as_dict()
        if not items:
            return f"{self.name}: no data problems found"
        lines = [f"{self.name}: data problems and repairs"]
        lines += [f"  {n:6d}  {KIND_DESCRIPTIONS.get(k, k)}" for k, n in items.items()]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"DataReport(name={self.name!r}, on_bad={self.on_bad!r}, counts={self.as_dict()})"
