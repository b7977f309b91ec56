"""tools/bench_model.py at tiny sizes: it runs end to end (in a new interpreter) and its last two
lines are the machine-readable speedups; its loader mode (in process) times a tiny generated
shapes set; its --flops mode (in process) prints the cost table and the training step's rate."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.run_tool import run_tool

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY = ["--height", "64", "--width", "96", "--batch", "1", "--steps", "1", "--warmup", "0",
        "--num-classes", "2", "--threads", "1"]


def _run(args: list[str], workdir: Path, *, in_process: bool = False) -> list[str]:
    """The tool's output lines: in a new interpreter, or ``in_process`` (helpers/run_tool.py)."""
    if in_process:
        result = run_tool("bench_model.py", args, cwd=workdir)
    else:
        result = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "tools" / "bench_model.py"), *args],
            cwd=workdir, env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"), capture_output=True,
            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()


@pytest.mark.slow
def test_bench_model_prints_a_table_and_two_speedup_lines(tmp_path):
    lines = _run([*TINY, "--device", "cpu"], tmp_path)
    assert re.fullmatch(r"train_speedup_vs_torchvision: \d+\.\d\d", lines[-2])
    assert re.fullmatch(r"infer_speedup_vs_torchvision: \d+\.\d\d", lines[-1])
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("train", "infer"))}
    for kind in ("train", "infer"):  # the speedup column is torchvision's time over ours
        ours, theirs, speedup = (float(v.rstrip("x")) for v in rows[kind][1:4])
        assert ours > 0 and theirs > 0
        assert speedup == pytest.approx(theirs / ours, rel=0.01, abs=0.01)


@pytest.mark.slow
def test_bench_model_loader_mode_reports_images_per_second(tmp_path):
    lines = _run(["--loader", "2", "--batch", "2", "dataset.num_train=4", "dataset.num_val=2",
                  "dataset.image_size=64", "num_workers=0", f"dataset.root={tmp_path / 'shapes'}"],
                 tmp_path, in_process=True)
    assert len(lines) == 1
    assert re.match(r"loader: \d+\.\d images/s \(dataset shapes, batch 2, 0 workers", lines[0])


def test_bench_model_flops_prints_the_cost_table_and_the_achieved_rate(tmp_path):
    lines = _run(["--flops", "--height", "64", "--width", "64", "--batch", "1", "--num-classes",
                  "2", "--steps", "1", "--warmup", "0", "--threads", "1"], tmp_path,
                 in_process=True)
    assert "RoI head at 1000 RoIs/image" in lines[0] and "multiply-add = 2" in lines[0]
    assert lines[1].split() == ["part", "GFLOPs", "params", "(M)"]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines[2:7]}
    assert list(rows) == ["backbone", "rpn", "roi_head", "other", "total"]
    # 64x64: the backbone's convs by formula; 1000 RoIs through fc6, fc7 and the predictors (K = 2)
    assert rows["backbone"][0] == pytest.approx(2.51, abs=0.01)
    roi_head = 2 * 1000 * (25088 * 1024 + 1024 * 1024 + 1024 * 3 + 1024 * 8)
    assert rows["roi_head"][0] == pytest.approx(roi_head / 1e9, abs=0.01)
    for column in (0, 1):  # the parts add up to the whole (to the printed rounding)
        parts = sum(rows[part][column] for part in ("backbone", "rpn", "roi_head", "other"))
        assert parts == pytest.approx(rows["total"][column], abs=0.02)
    assert re.fullmatch(r"train step: \d+\.\d\d GFLOP, \d+\.\d{4} s \(median of 1\), "
                        r"\d+\.\d GFLOP/s achieved \(cpu, 1 threads\)", lines[7])
    assert re.fullmatch(r"peak: (unknown .*|\d+\.\d GFLOP/s fp32 = 1 cores x .*% of it)", lines[8])
    assert len(lines) == 9
