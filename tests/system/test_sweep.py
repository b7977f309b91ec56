"""Sweeps (python tools/train_net.py -m ...) for real, on the tiny model of helpers.tiny_training: one
folder per job named by its overrides, a diverged job is an outcome (status diverged) and the
sweep goes on, the sweep index lists every job; a bad config stops the sweep at once (that one
in process, helpers/run_tool.py: the first job stops before any training)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_training as tiny
from helpers.run_tool import run_tool

from detector.study import compare
from detector.study.sweep_index import read_index

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLS = PROJECT_ROOT / "tools"

TINY_KEYS = [o.partition("=")[0] for o in tiny.CLI_OVERRIDES]


def _sweep(tmp_path: Path, *args: str, in_process: bool = False) -> subprocess.CompletedProcess:
    """A multirun whose job folders are named by the swept keys only (the tiny set-up's keys
    would make names longer than a file system allows): in a new interpreter, or ``in_process``
    (helpers/run_tool.py)."""
    excluded = ",".join([*TINY_KEYS, "dataset.root", "schedule.iterations",
                         "train.clip_grad_norm", "train.checkpoint_period"])
    command = [sys.executable, str(TOOLS / "train_net.py"), "-m", *tiny.CLI_OVERRIDES,
               f"dataset.root={tmp_path / 'shapes'}", "schedule.iterations=4",
               "train.checkpoint_period=0", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               f"hydra.job.config.override_dirname.exclude_keys=[{excluded}]", *args]
    if in_process:
        return run_tool("train_net.py", command[2:], cwd=tmp_path)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(tiny.TESTS),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_diverged_job_is_an_outcome_and_the_sweep_goes_on(tmp_path):
    done = _sweep(tmp_path, "optimizer.lr=1e10,1e-3", "seed=0", "train.clip_grad_norm=null")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    sweep = tmp_path / "sweep"
    # one folder per job, named by its overrides (as Hydra normalises the swept values)
    diverged_dir = sweep / "optimizer.lr=10000000000.0,seed=0"
    finished_dir = sweep / "optimizer.lr=0.001,seed=0"
    assert {p.name for p in sweep.iterdir() if p.is_dir()} == {diverged_dir.name,
                                                               finished_dir.name}

    diverged = json.loads((diverged_dir / "final_metrics.json").read_text())
    assert diverged["status"] == "diverged" and diverged["lr"] > 1e6
    assert 1 <= diverged["iteration"] <= 4 and diverged["nonfinite"] and "AP" not in diverged
    last = diverged["last_finite"]  # the last log point before it (log_period 1), if any
    assert last is None if diverged["iteration"] == 1 else last["iter"] == diverged["iteration"] - 1
    assert not (diverged_dir / "checkpoints" / "final.pth").exists()

    finished = json.loads((finished_dir / "final_metrics.json").read_text())
    assert finished["status"] == "finished" and finished["iterations"] == 4
    assert 0.0 <= finished["AP50"] <= 1.0 and len(finished["pr_iou50"]["recall"]) == 101
    for name in ("metrics.jsonl", "train_net.log", "config.json", "loss_curves.png",
                 "checkpoints/final.pth", ".hydra/overrides.yaml"):
        assert (finished_dir / name).exists(), name
    config = json.loads((finished_dir / "config.json").read_text())
    assert (tmp_path / config["output_dir"]).resolve() == finished_dir.resolve()  # not outputs/<time>
    assert not (tmp_path / "outputs").exists()

    index = read_index(sweep)
    assert [(e["job"], e["dir"], e["status"]) for e in index] == [
        (0, diverged_dir.name, "diverged"), (1, finished_dir.name, "finished")]
    assert index[0]["diverged_at"] == diverged["iteration"] and index[1]["AP50"] == finished["AP50"]
    assert "optimizer.lr=10000000000.0" in index[0]["overrides"]
    table = (sweep / "sweep.md").read_text()
    assert "| 0 | optimizer.lr=10000000000.0 | optimizer.lr=10000000000.0,seed=0 | diverged at it" in table
    assert f"python tools/compare.py {sweep}" in output

    report = compare([sweep], tmp_path / "report")  # the study reads what the sweep wrote
    assert report.study.keys == ["optimizer.lr"]
    assert (tmp_path / "report" / "lr_sweep.png").is_file()


def test_a_bad_config_stops_the_sweep_at_once_with_one_line(tmp_path):
    done = _sweep(tmp_path, "optimizer.lr=-1,1e-3", in_process=True)
    assert done.returncode == 2
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line
              or line.startswith("error")]
    assert len(errors) == 1 and "optimizer.lr must be positive" in errors[0], errors
    assert not (tmp_path / "sweep" / "optimizer.lr=1e-3").exists()  # the next job never ran


def test_the_sweep_callback_and_resolver_come_from_the_installed_package(tmp_path):
    """What a launcher that starts each job in a fresh interpreter elsewhere (joblib, submitit)
    does: configs/train.yaml's callback target imports from the installed ``detector_cli`` (no
    PYTHONPATH=tools), and importing it registers the ``${job_folder:...}`` resolver."""
    code = ("import yaml; from hydra.utils import get_class; from omegaconf import OmegaConf; "
            f"cfg = yaml.safe_load(open({str(PROJECT_ROOT / 'configs' / 'train.yaml')!r})); "
            "target = cfg['hydra']['callbacks']['sweep_index']['_target_']; "
            "print(target, get_class(target).__name__, "
            "OmegaConf.create({'d': '${job_folder:x/y,3}'}).d)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["detector_cli.sweep.SweepIndex", "SweepIndex", "x_y"]
