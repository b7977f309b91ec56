"""The best checkpoint and the early stop from the command line (issue #28, part 2): the
``train.best_metric`` / ``train.best_mode`` / ``train.early_stop_patience`` checks (one line
naming the key), ``checkpoint=best`` in eval, predict, export and serve, what
``final_metrics.json`` and the end of the log say, and the studies treating an early-stopped run
as a finished one. One tiny real training run (marked slow) goes through all of it."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_training as tiny
from helpers.run_tool import run_tool
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from detector import run_files
from detector.checkpoint import load_checkpoint
from detector.study.run_checks import check_final
from detector.study.runs import load_run
from detector.study.sweep_index import job_entry
from detector_cli import checks as config_checks
from detector_cli.cli import resolve_checkpoint
from detector_cli.train import build_options, report

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _train_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[*tiny.CLI_OVERRIDES, f"dataset.root={tmp_path / 's'}",
                                           f"output_dir={tmp_path / 'run'}", *overrides])


# ---------------------------------------------------------------------------- the options
@pytest.mark.parametrize(("overrides", "metric"), [
    ([], None),  # auto without periodic evaluation: off
    (["train.eval_period=5"], "AP50"),  # auto with it: AP50
    (["train.eval_period=5", "train.best_metric=AR100", "train.best_mode=min"], "AR100"),
    (["train.eval_period=5", "train.best_metric=null"], None),
])
def test_the_default_is_ap50_when_evaluation_is_on(overrides, metric, tmp_path):
    cfg = _train_cfg(tmp_path, *overrides)
    config_checks.check_train_config(cfg)
    assert build_options(cfg, torch.device("cpu")).best.metric == metric


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.best_metric=AP50"], "train.best_metric=AP50 needs periodic evaluation: set "
                                 "train.eval_period=N (> 0), or train.best_metric=null"),
    (["train.early_stop_patience=3"], "train.early_stop_patience=3 needs periodic evaluation"),
])
def test_best_without_periodic_evaluation_is_one_line(overrides, message, tmp_path):
    cfg = _train_cfg(tmp_path, *overrides)
    with pytest.raises(config_checks.ConfigError, match=f"^{re.escape(message)}") as caught:
        config_checks.check_train_config(cfg)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("override", "message"), [
    ("train.best_mode=biggest", "train.best_mode must be 'max' or 'min', got 'biggest'"),
    ("train.early_stop_patience=-1", "train.early_stop_patience must be null or an integer >= 1, "
                                     "got -1"),
    ("train.early_stop_patience=0", "train.early_stop_patience must be null or an integer >= 1"),
    ("train.best_metric=''", "train.best_metric must be a metric name or null"),
])
def test_bad_values_are_one_line_naming_the_key(override, message, tmp_path, capsys):
    """Refused by BestRule's constructor, named by build_options, before any data is read."""
    cfg = _train_cfg(tmp_path, "train.eval_period=2", override)
    from detector_cli.train import run

    assert run(cfg) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_patience_without_a_metric_is_one_line(tmp_path):
    cfg = _train_cfg(tmp_path, "train.eval_period=2", "train.best_metric=null",
                     "train.early_stop_patience=2")
    with pytest.raises(config_checks.ConfigError,
                       match="^train.early_stop_patience needs a metric to watch"):
        build_options(cfg, torch.device("cpu"))


# ---------------------------------------------------------------------------- checkpoint=best
def _runs(tmp_path, tiny_checkpoint, *, best: bool) -> Path:
    checkpoints = tmp_path / "outputs" / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, checkpoints / "final.pth")
    if best:
        shutil.copy(tiny_checkpoint, checkpoints / "best.pth")
    return checkpoints


def test_best_resolves_beside_the_newest_final(tmp_path, tiny_checkpoint):
    checkpoints = _runs(tmp_path, tiny_checkpoint, best=True)
    cfg = OmegaConf.create({"checkpoint": "best", "outputs_root": str(tmp_path / "outputs")})
    assert resolve_checkpoint(cfg) == checkpoints / "best.pth"
    cfg.checkpoint = None
    assert resolve_checkpoint(cfg) == checkpoints / "final.pth"
    (checkpoints / "best.pth").unlink()
    cfg.checkpoint = "best"
    with pytest.raises(config_checks.ConfigError, match=r"^checkpoint=best: the chosen run's "
                                                        r".*holds no best\.pth"):
        resolve_checkpoint(cfg)
    cfg.outputs_root = str(tmp_path / "nowhere")
    with pytest.raises(config_checks.ConfigError, match="^no checkpoint found under"):
        resolve_checkpoint(cfg)


@pytest.mark.parametrize(("tool", "extra"), [
    ("eval.py", []), ("export.py", []), ("serve.py", []), ("predict.py", ["input={image}"]),
])
def test_every_tool_takes_best_and_says_when_there_is_none(tool, extra, tmp_path,
                                                           tiny_checkpoint):
    _runs(tmp_path, tiny_checkpoint, best=False)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    args = ["checkpoint=best", f"outputs_root={tmp_path / 'outputs'}",
            *(a.format(image=image) for a in extra)]
    done = run_tool(tool, args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: checkpoint=best: the chosen run's ")
    assert done.stderr.count("\n") == 1


def test_predict_with_best(tmp_path, tiny_checkpoint):
    _runs(tmp_path, tiny_checkpoint, best=True)
    image = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(image)
    done = run_tool("predict.py", ["checkpoint=best", f"outputs_root={tmp_path / 'outputs'}",
                                   f"input={image}", f"output={tmp_path / 'out'}",
                                   "progress=false", "device=cpu"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best.pth" in done.stdout


# ---------------------------------------------------------------------------- the run's files
def _summary(**changes) -> dict:
    return {"metrics": {"AP": 0.2, "AP50": 0.4}, "wall_time": 6.0, "iterations": 8,
            "skipped_steps": 0, "best": {"metric": "AP50", "value": 0.5, "iteration": 4},
            "early_stopped": True, **changes}


def test_final_metrics_and_the_log_name_the_best(tmp_path, caplog):
    (tmp_path / "checkpoints").mkdir()
    with caplog.at_level(logging.INFO):
        report(_summary(), tmp_path / "checkpoints" / "final.pth", tmp_path)
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["status"] == run_files.EARLY_STOPPED == "early_stopped"
    assert final["best"] == {"metric": "AP50", "value": 0.5, "iteration": 4}
    assert final["AP50"] == 0.4 and final["iterations"] == 8
    assert "stopped early at iteration 8" in caplog.text
    assert (f"best: AP50 0.5000 at iteration 4 ({tmp_path / 'checkpoints' / 'best.pth'}); "
            f"evaluate it with: python tools/eval.py checkpoint="
            f"{tmp_path / 'checkpoints' / 'best.pth'}") in caplog.text
    report(_summary(best=None, early_stopped=False), tmp_path / "final.pth", tmp_path)
    final = json.loads((tmp_path / "final_metrics.json").read_text())
    assert final["status"] == "finished" and "best" not in final  # as before


def test_studies_treat_an_early_stopped_run_as_finished(tmp_path):
    run = tmp_path / "job"
    run.mkdir()
    run_files.write_config(run, {"seed": 0})
    report(_summary(), run / "checkpoints" / "final.pth", run)
    assert check_final(json.loads((run / "final_metrics.json").read_text()), "x")["best"]
    loaded = load_run(run)
    assert loaded.status == "early_stopped" and loaded.metric("AP50") == 0.4
    entry = job_entry(job=0, overrides=["seed=0"], run_dir=run, sweep_dir=tmp_path)
    assert entry["status"] == "early_stopped" and entry["AP50"] == 0.4


# ---------------------------------------------------------------------------- a real run
@pytest.mark.slow
def test_a_tiny_run_keeps_best_and_eval_takes_it(tmp_path):
    run = tmp_path / "outputs" / "run"
    done = run_tool("train_net.py", [*tiny.CLI_OVERRIDES, f"dataset.root={tmp_path / 's'}",
                                     "schedule.iterations=4", "train.eval_period=2",
                                     "train.best_metric=AR100", f"output_dir={run}"],
                    cwd=tmp_path, env={"PYTHONPATH": str(tiny.TESTS)})
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["status"] == "finished" and final["best"]["metric"] == "AR100"
    best = load_checkpoint(run / "checkpoints" / "best.pth")
    final_pth = load_checkpoint(run / "checkpoints" / "final.pth")
    assert best.keys() == final_pth.keys() and best["iteration"] == final["best"]["iteration"]
    log = (run / "train_net.log").read_text()
    assert f"evaluate it with: python tools/eval.py checkpoint={run}/checkpoints/best.pth" in log


@pytest.mark.slow
def test_a_metric_the_evaluation_lacks_stops_at_the_first_evaluation_in_one_line(tmp_path):
    done = run_tool("train_net.py", [*tiny.CLI_OVERRIDES, f"dataset.root={tmp_path / 's'}",
                                     "schedule.iterations=2", "train.eval_period=1",
                                     "train.best_metric=AP5O", f"output_dir={tmp_path / 'run'}"],
                    cwd=tmp_path, env={"PYTHONPATH": str(tiny.TESTS)})
    assert done.returncode == 2
    assert done.stderr.startswith("error: train.best_metric 'AP5O' is not one the evaluation "
                                  "reports (AP, AP50, ")
    assert done.stderr.count("\n") == 1
