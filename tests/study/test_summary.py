"""Seed groups of runs that were repeated with one seed."""
from __future__ import annotations

import math

import pytest

from detector.study.runs import Run
from detector.study.summary import Group, build_study


def test_repeated_seeds_are_not_paired_and_all_count():
    def run(name, exp, seed, ap):
        return Run(path=None, name=name, config={"seed": seed}, overrides={"experiment": exp},
                   final={"status": "finished", "AP": ap})

    a = [run("a1", "ce", 0, 0.2), run("a2", "ce", 0, 0.4)]  # the same seed twice
    b = [run("b1", "focal", 0, 0.5), run("b2", "focal", 1, 0.7)]
    study = build_study([*a, *b])
    ce = study.groups[0]
    assert isinstance(ce, Group) and ce.stat("AP") == pytest.approx((0.3, math.sqrt(0.02), 2))
    diff = study.differences["AP"]
    assert not diff.paired and diff.mean == pytest.approx(0.3)  # Welch on the means
