"""tools/gpu_checks.sh, the one script a short GPU loan runs: every step runs in order with its
command line, every benchmark is summarised, a failing step is counted, not fatal, and without
CUDA the real run refuses in one line.

The script's flow is checked with a stand-in for python (a few lines of shell that print what
the tools print), in both modes (the GPU mode believing it has CUDA); then each distinct command
line of the smoke mode runs for real, once, in this process (helpers/run_tool.py): seven
interpreters and bf16 emulated on a CPU without it cost minutes, which checked no more.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.load_file import load_tool
from helpers.run_tool import run_tool

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_checks.sh"
BENCHES = ("bf16 b8", "bf16 b8 channels-last", "bf16 b8 sparse roi_align", "bf16 b2", "fp32 b2")
STEPS = ("target assignment", *BENCHES, "loader")
FAKE_PYTHON = """#!/usr/bin/env bash
# python's stand-in: the two last lines of tools/bench_model.py, a yes to the CUDA probe (exit 0)
case "$*" in
    *bench_model.py*--loader*) echo "loader: 1.0 images/s" ;;
    *bench_model.py*) printf 'train_speedup_vs_torchvision: 1.50\\ninfer_speedup_vs_torchvision: 2.00\\n' ;;
esac
"""


def _run(out: Path, python: str, smoke: str = "1", **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOKE": smoke, "OUT": str(out), "PY": python, **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _stand_in(folder: Path, name: str, text: str) -> str:
    (folder / "bin").mkdir(exist_ok=True)
    path = folder / "bin" / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def _steps(log: str) -> dict[str, list[str]]:
    """Each step's name and command line (python's path first), in the order they ran."""
    steps, lines = {}, log.splitlines()
    for line, command in itertools.pairwise(lines):
        if line.startswith("### "):
            assert command.startswith("=== "), command
            steps[line.removeprefix("### ")] = shlex.split(command.removeprefix("=== "))
    return steps


def _flags(command: list[str]) -> dict[str, str | bool]:
    """``--name value`` and bare ``--switch`` arguments of ``command`` (the last one wins)."""
    return {word[2:]: True if following.startswith("-") else following
            for word, following in zip(command, [*command[1:], "-"], strict=True) if word.startswith("--")}


def _check_summary(done: subprocess.CompletedProcess, out: Path, benches) -> None:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (out / "gpu_checks.log").read_text()
    summary = log.split("=== summary (ours vs torchvision)\n")[1].splitlines()
    assert summary == [f"{name}: {kind}_speedup_vs_torchvision: {value}" for name in benches
                       for kind, value in (("train", "1.50"), ("infer", "2.00"))]
    assert done.stdout.rstrip().endswith(f"=== 0 step(s) failed; log: {out / 'gpu_checks.log'}")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """SMOKE=1 with python's stand-in: the process and its output folder."""
    out = tmp_path_factory.mktemp("smoke")
    return _run(out, _stand_in(out, "python", FAKE_PYTHON)), out


def test_smoke_mode_runs_every_step_tiny_in_fp32_and_summarises_each_benchmark(smoke):
    done, out = smoke
    _check_summary(done, out, BENCHES)
    steps = _steps((out / "gpu_checks.log").read_text())
    assert list(steps) == list(STEPS)
    assert steps["target assignment"][1] == "tools/bench_ops.py"
    assert _flags(steps["target assignment"])["cpu-only"] is True
    for name in BENCHES:  # bf16 is emulated, minutes long, on a CPU without it
        assert steps[name][1] == "tools/bench_model.py"
        assert {key: value for key, value in _flags(steps[name]).items() if key in (
            "device", "precision", "batch", "height", "width", "steps", "warmup", "threads")} == {
            "device": "cpu", "precision": "fp32", "batch": "1", "height": "64", "width": "96",
            "steps": "1", "warmup": "0", "threads": "1"}
    assert _flags(steps["bf16 b8 channels-last"])["channels-last"] is True
    assert _flags(steps["bf16 b8 sparse roi_align"])["roi-align"] == "sparse"
    loader = steps["loader"]
    assert _flags(loader)["loader"] == "2" and f"dataset.root={out / 'shapes'}" in loader


def test_the_gpu_run_adds_the_gpu_tests_and_benchmarks_at_full_size(tmp_path):
    python = _stand_in(tmp_path, "python", FAKE_PYTHON)
    _stand_in(tmp_path, "nvidia-smi", "#!/bin/sh\necho 'name, memory.total [MiB]'\n")
    done = _run(tmp_path, python, smoke="0", COMPILE="1",
                PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    benches = (*BENCHES, "bf16 b8 compile")
    _check_summary(done, tmp_path, benches)
    steps = _steps((tmp_path / "gpu_checks.log").read_text())
    assert list(steps) == ["gpu tests", *STEPS[:-1], "bf16 b8 compile", "loader"]
    assert steps["gpu tests"][1:] == ["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    assert "cpu-only" not in _flags(steps["target assignment"])
    bench_model = load_tool("bench_model.py")
    for name in benches:
        flags = _flags(steps[name])
        assert (flags["device"], flags["precision"], flags["batch"]) == (
            "cuda", name.split()[0], name.split()[1][1:])
        assert (flags["height"], flags["width"], flags["steps"]) == ("600", "1000", "20")
        sys_argv, sys.argv = sys.argv, steps[name][1:]
        try:  # the tool takes the command line
            bench_model.parse_args()
        finally:
            sys.argv = sys_argv
    assert _flags(steps["bf16 b8 compile"])["compile"] is True
    assert _flags(steps["loader"]) == {"loader": "20", "batch": "8"}


@pytest.mark.slow
def test_every_smoke_command_line_runs(smoke):
    """Each distinct command line of the smoke mode, once, for real (in this process)."""
    _, out = smoke
    commands = []
    for command in _steps((out / "gpu_checks.log").read_text()).values():
        if command[1:] not in commands:
            commands.append(command[1:])
    assert len(commands) == 5  # bench_ops; bench_model plain, channels-last, sparse; loader
    for script, *args in commands:
        done = run_tool(Path(script).name, args, cwd=ROOT)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        last = done.stdout.strip().splitlines()[-1]
        if script.endswith("bench_ops.py"):
            assert re.fullmatch(r"speedup_vs_torchvision: \d+\.\d\d", last), last
        elif "--loader" in args:
            assert re.match(r"loader: \d+\.\d images/s \(dataset shapes, batch 2", last), last
        else:
            assert re.fullmatch(r"infer_speedup_vs_torchvision: \d+\.\d\d", last), last


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
