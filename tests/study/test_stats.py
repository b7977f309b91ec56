"""Seed statistics against values worked out by hand."""
from __future__ import annotations

import math

import pytest

from detector.study.stats import difference, mean_std, t_quantile_975


def test_mean_and_sample_std():
    assert mean_std([0.30, 0.34, 0.32]) == pytest.approx((0.32, 0.02))
    assert mean_std([0.5]) == (0.5, None)
    with pytest.raises(ValueError):
        mean_std([])


def test_t_quantiles_from_the_table_round_the_df_down():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(2) == 4.303
    assert t_quantile_975(2.9) == 4.303  # fractional Welch df: the wider value below
    assert t_quantile_975(30) == 2.042 and t_quantile_975(35) == 2.042
    assert t_quantile_975(45) == 2.021 and t_quantile_975(1000) == 1.980
    with pytest.raises(ValueError):
        t_quantile_975(0.5)


def test_paired_difference_over_common_seeds():
    a = {0: 0.30, 1: 0.34, 2: 0.32}
    b = {0: 0.40, 1: 0.41, 2: 0.45, 7: 0.9}  # seed 7 has no partner: left out
    d = difference(a, b)
    # per-seed differences 0.10, 0.07, 0.13: mean 0.10, sd 0.03, t(2) = 4.303
    assert d.paired and d.n == 3 and d.df == 2
    assert d.mean == pytest.approx(0.10)
    assert d.half_width == pytest.approx(4.303 * 0.03 / math.sqrt(3))
    assert "+0.1000 +- 0.0745" in str(d) and "paired over 3 seeds" in str(d)


def test_welch_difference_without_matching_seeds():
    d = difference({0: 1.0, 1: 3.0}, {5: 4.0, 6: 8.0})
    # means 2 and 6, variances 2 and 8: se^2 = 2/2 + 8/2 = 5, df = 25 / (1 + 16) = 1.47 -> 1
    assert not d.paired and d.mean == pytest.approx(4.0)
    assert d.df == pytest.approx(25 / 17)
    assert d.half_width == pytest.approx(12.706 * math.sqrt(5))


def test_one_run_per_group_has_no_interval_and_empty_has_no_difference():
    d = difference({0: 0.2}, {1: 0.5})
    assert d.mean == pytest.approx(0.3) and d.half_width is None
    assert "no interval" in str(d)
    assert difference({}, {0: 1.0}) is None

