"""tools/soak.py's measuring parts (detector_cli.soak): the RSS readers on Linux and the summary it prints (the
2,000-iteration run itself is a benchmark, not a test)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector_cli import soak

linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads /proc (Linux only)")


@linux_only
def test_rss_of_this_process_and_private_memory_of_a_child():
    assert 10 < soak.rss_mib() < 1e6  # a Python with torch loaded holds tens of MiB at least
    assert 0 < soak.private_mib() <= soak.rss_mib()
    before = soak.workers_private_mib()
    holder = "x = bytearray(64 * 2**20); x[::4096] = b'1' * len(x[::4096]); input()"
    child = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE)
    try:
        for _ in range(200):  # wait until the child has written its 64 MiB
            grown = soak.workers_private_mib() - before
            if grown >= 64:
                break
            time.sleep(0.05)
        assert 64 <= grown < 64 + 200  # its buffer plus one small interpreter
        assert soak.rss_mib(child.pid) >= 64
    finally:
        child.communicate(b"\n", timeout=30)
    assert soak.rss_mib(child.pid) != soak.rss_mib(child.pid)  # gone: NaN, not an error


def test_report_measures_from_the_first_log_point_at_the_mark():
    samples = {100: 900.0, 200: 1000.0, 300: 1010.0, 2000: 1020.0}
    workers = {100: 500.0, 200: 600.0, 300: 600.0, 2000: 630.0}
    lines = soak.report(samples, 1030.0, workers, mark=150, iterations=2000, minutes=80.0,
                        out=Path("o"))
    assert lines[1:] == ["rss_after_iter_200_mib: 1000.0",
                         "rss_end_mib: 1030.0 (after iteration 2000)",
                         "rss_growth_pct: +3.00",
                         "workers_private_mib: 600.0 at iteration 200, 630.0 at iteration 2000 "
                         "(+5.00 %)"]


def test_report_of_a_run_stopped_before_the_mark():
    lines = soak.report({20: 900.0}, 950.0, {20: 0.0}, mark=200, iterations=30, minutes=1.0,
                        out=Path("o"))
    assert lines[-1] == "soak: the run never reached iteration 200"
    assert soak.report({200: 900.0}, 900.0, {200: 0.0}, mark=200, iterations=200, minutes=1.0,
                       out=Path("o"))[-1] == "rss_growth_pct: +0.00"  # no workers: no line
