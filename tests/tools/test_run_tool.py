"""helpers/run_tool.py: a tool's command line in this process gives what a new interpreter would
(exit code, stdout, stderr) and leaves the process as it found it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from helpers.run_tool import run_tool
from hydra import compose, initialize_config_dir

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_a_hydra_tool_inside_an_open_config_dir_leaves_the_process_as_it_was(tmp_path):
    root = logging.getLogger()
    before = (sys.argv[:], sys.path[:], Path.cwd(), dict(os.environ), root.handlers[:],
              root.level, torch.get_num_threads(), torch.get_float32_matmul_precision())
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        done = run_tool("train_net.py", ["trian.log_period=5"], cwd=tmp_path)
        assert compose("train").batch_size > 0  # the test's own Hydra still works
        # through Hydra's run: its log handlers (console, the run's train_net.log) come and go
        bad = run_tool("train_net.py", ["batch_size=0", f"output_dir={tmp_path / 'run'}"])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("error: Could not override 'trian.log_period': no such key in the "
                           "config (to append to your config use +trian.log_period=5 if it is "
                           "not a typo)\n")
    assert bad.returncode == 2 and bad.stderr.startswith("error: batch_size must be")
    # a start that failed leaves no run folder behind (its log went with it)
    assert list(tmp_path.iterdir()) == []
    assert (sys.argv, sys.path, Path.cwd(), dict(os.environ), root.handlers, root.level,
            torch.get_num_threads(), torch.get_float32_matmul_precision()) == before


def test_exit_codes_output_and_tracebacks_as_the_interpreter_gives_them(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text("import os, sys\nprint('out', os.getcwd(), sys.argv[1:])\n"
                      "print('err', file=sys.stderr)\nif sys.argv[1] == 'raise':\n"
                      "    raise RuntimeError('a bug')\nsys.exit(None if sys.argv[1] == 'ok' else "
                      "sys.argv[1])\n")
    ok = run_tool(str(script), ["ok"], cwd=tmp_path)  # an absolute path: any script
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"out {tmp_path} ['ok']\n", "err\n")
    message = run_tool(str(script), ["bad value"])
    assert (message.returncode, message.stderr) == (1, "err\nbad value\n")
    crash = run_tool(str(script), ["raise"])
    assert crash.returncode == 1 and crash.stderr.startswith("err\nTraceback (most recent call")
    assert crash.stderr.endswith("RuntimeError: a bug\n")
