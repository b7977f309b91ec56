"""Seed-noise statistics for a handful of runs: mean and sample standard deviation, and the
difference of two groups with a 95 % Student-t interval (paired by seed when the seeds match,
Welch's unequal-variance interval otherwise)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Difference", "difference", "mean_std", "t_quantile_975"]

# two-sided 95 %: the 0.975 quantile of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_T975_LARGE = ((120, 1.980), (60, 2.000), (40, 2.021))  # (at least this df, quantile)


def t_quantile_975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom. Between table entries
    (a fractional Welch df, or df > 30) it takes the entry below: slightly wider, never narrower,
    than the exact value."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    whole = int(math.floor(df))
    for limit, value in _T975_LARGE:
        if whole >= limit:
            return value
    return _T975[min(whole, len(_T975)) - 1]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with n - 1; None for a single value)."""
    if not values:
        raise ValueError("mean_std of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class Difference:
    """``mean`` of B - A with a 95 % interval ``mean +- half_width`` (None: too few runs)."""

    mean: float
    half_width: float | None
    n: int
    paired: bool
    df: float | None

    def __str__(self) -> str:
        spread = "" if self.half_width is None else f" +- {self.half_width:.4f}"
        how = (f"paired over {self.n} seeds" if self.paired
               else f"unpaired, {self.n} runs" if self.half_width is not None
               else "no interval: needs 2 runs per group")
        return f"{self.mean:+.4f}{spread} (95% t-interval, {how})"


def difference(a: Mapping[int, float], b: Mapping[int, float]) -> Difference | None:
    """B - A from per-seed values (seed -> metric) of two groups; None if either is empty.

    Paired (mean of the per-seed differences, t with n - 1 df) over the seeds both groups have
    when there are at least two; otherwise Welch's interval on the group means.
    """
    if not a or not b:
        return None
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        diffs = [b[s] - a[s] for s in common]
        mean, sd = mean_std(diffs)
        n = len(diffs)
        return Difference(mean, t_quantile_975(n - 1) * sd / math.sqrt(n), n, True, n - 1)
    (ma, sa), (mb, sb) = mean_std(list(a.values())), mean_std(list(b.values()))
    n = len(a) + len(b)
    if sa is None or sb is None:
        return Difference(mb - ma, None, n, False, None)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(mb - ma, 0.0, n, False, float(n - 2))
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return Difference(mb - ma, t_quantile_975(df) * se, n, False, df)
