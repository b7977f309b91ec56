"""tools/gpu_checks.sh, the one script a short GPU loan runs: its CPU-sized smoke mode goes
through every step and summarises every benchmark, and a failing step is counted, not fatal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_checks.sh"
BENCHES = ("bf16 b8", "bf16 b8 channels-last", "bf16 b8 sparse roi_align", "bf16 b2", "fp32 b2")


def _run(tmp_path: Path, python: str, smoke: str = "1") -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOKE": smoke, "OUT": str(tmp_path), "PY": python}
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_smoke_mode_runs_every_step_and_summarises_each_benchmark(tmp_path):
    done = _run(tmp_path, sys.executable)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (tmp_path / "gpu_checks.log").read_text()
    summary = log.split("=== summary (ours vs torchvision)")[1].splitlines()
    for name in BENCHES:
        for kind in ("train", "infer"):
            assert sum(line.startswith(f"{name}: {kind}_speedup_vs_torchvision: ")
                       for line in summary) == 1, (name, kind)
    assert "loader: " in log and "images/s" in log
    assert "target assignment" in log
    assert done.stdout.rstrip().endswith(f"0 step(s) failed; log: {tmp_path / 'gpu_checks.log'}")


def test_failing_steps_are_counted_and_the_exit_code_says_so(tmp_path):
    done = _run(tmp_path, "false")  # every python step fails at once
    assert done.returncode == 1
    assert "7 step(s) failed" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_without_cuda_the_real_run_refuses_in_one_line(tmp_path):
    done = _run(tmp_path, sys.executable, smoke="0")
    assert done.returncode == 2
    assert done.stderr.strip() == ("gpu_checks: no CUDA device here (SMOKE=1 bash "
                                   "tools/gpu_checks.sh tries the steps on the CPU)")
