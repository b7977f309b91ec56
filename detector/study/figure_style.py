"""What every study figure shares so that it reads at a glance: plain decimal tick labels on log
axes, markers on series with few points, notes on empty axes and titles wrapped to the width
they have (measured with the renderer, not guessed)."""

from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import Formatter, LogLocator, MaxNLocator, NullFormatter

__all__ = ["FEW_POINTS", "fit_title", "line_style", "note", "plain_log_axis", "tick_text"]

FEW_POINTS = 20  # a series with at most this many points gets a marker on each
_DECADES_TO_LABEL_2_5 = 3  # views spanning fewer decades also get ticks at 2 and 5 x 10^k


def line_style(points: int) -> dict:
    """``marker`` (and its size) for a line of ``points`` points: dots when there are few, so
    that one point (a run of 20 iterations logs one) is seen, not an invisible line."""
    return {"marker": "o", "markersize": 4} if points <= FEW_POINTS else {"marker": None}


def tick_text(value: float, digits: int = 3) -> str:
    """A tick value as plain decimal with at most ``digits`` significant digits: ``0.002``,
    ``1``, ``1.05``, ``50``; ``1e-07`` beyond [1e-4, 1e6)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else ""
    if 1e-4 <= abs(value) < 1e6:
        return np.format_float_positional(value, precision=digits, unique=True,
                                          fractional=False, trim="-")
    return f"{value:.{max(0, digits - 3)}e}"


class _PlainFormatter(Formatter):
    """:func:`tick_text`, with as many digits as it takes for the ticks to read differently."""

    def __call__(self, value: float, pos: int | None = None) -> str:
        return tick_text(value)

    def format_ticks(self, values) -> list[str]:
        for digits in range(3, 10):
            labels = [tick_text(v, digits) for v in values]
            if len(set(labels)) == len(labels):
                return labels
        return labels


class _PlainLogLocator(LogLocator):
    """Powers of ten (every k-th when the view spans many decades), with 2 and 5 x 10^k when it
    spans under a few; linear 1-2-5 steps (``MaxNLocator``) when even those put fewer than two
    ticks in view."""

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        low, high = sorted((vmin, vmax))
        if not (low > 0 and math.isfinite(high)):
            return super().tick_values(vmin, vmax)
        powers = np.arange(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 2)
        if math.log10(high / low) < _DECADES_TO_LABEL_2_5:
            ticks = np.asarray([s * 10.0 ** int(p) for p in powers for s in (1, 2, 5)])
        else:
            ticks = 10.0 ** powers[::max(1, math.ceil(len(powers) / 9))]
        if np.sum((ticks >= low * (1 - 1e-9)) & (ticks <= high * (1 + 1e-9))) >= 2:
            return ticks
        linear = MaxNLocator(nbins=5, steps=[1, 2, 5, 10]).tick_values(low, high)
        return linear[linear > 0]


def plain_log_axis(axis: Axis) -> None:
    """Label a log-scaled ``axis`` in plain decimals (``0.5``, ``1``, ``2``) instead of matplotlib's
    ``10^k`` mathtext (drawn raw, since study figures never parse mathtext) or its labelled
    minor ticks (``1.046x10^0``); unlabelled minor ticks stay."""
    axis.set_major_locator(_PlainLogLocator())
    axis.set_major_formatter(_PlainFormatter())
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10), numticks=12))
    axis.set_minor_formatter(NullFormatter())


def note(ax: Axes, text: str, *, y: float = 0.5, width: int = 60) -> Text:
    """Grey text on a white box in the middle of ``ax`` saying why it is (partly) empty; each
    line of ``text`` wrapped at ``width`` characters."""
    lines = [textwrap.fill(line, width) for line in text.splitlines()]
    return ax.text(0.5, y, "\n".join(lines), transform=ax.transAxes, ha="center", va="center",
                   color="0.3", fontsize="small", zorder=5,
                   bbox={"facecolor": "white", "edgecolor": "0.8", "alpha": 0.9})


def fit_title(fig: Figure, ax: Axes, title: str, *, fontsize: float = 9) -> Text:
    """``ax``'s title, wrapped so that each line is no wider than the axes (nor the figure):
    the figure is laid out and the title measured with the renderer, narrower each round."""
    renderer = fig.canvas.get_renderer()
    text = ax.set_title(title, fontsize=fontsize)
    width = len(title)
    for _ in range(12):
        fig.canvas.draw()  # the layout (constrained or not) places the axes and the title
        limit = min(ax.get_window_extent(renderer).width, fig.bbox.width)
        have = text.get_window_extent(renderer)
        if have.width <= limit and have.x0 >= fig.bbox.x0 and have.x1 <= fig.bbox.x1:
            break
        longest = max(len(line) for line in text.get_text().splitlines())
        width = max(8, min(width - 1, int(longest * limit / have.width * 0.95)))
        text.set_text(textwrap.fill(title, width, break_long_words=True,
                                    break_on_hyphens=False))
    return text
