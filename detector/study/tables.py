"""Markdown tables of the study reports (``summary.md``, ``analysis.md``, a sweep's index)."""

from __future__ import annotations

from collections.abc import Sequence

from detector.untrusted import shown

__all__ = ["markdown_table"]


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
    """Header row + data rows as a GitHub markdown table (``|`` in cells escaped; control
    characters escaped and cells cut to 500 characters, see ``untrusted.shown``)."""
    cells = [[shown(c, limit=500).replace("|", "\\|") for c in row] for row in rows]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)
