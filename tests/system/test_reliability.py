"""tools/train_net.py's reliability guarantees, end to end on a tiny model (tests/helpers/
tiny_training.py): SIGTERM then kill -9 of a real training process, each resumed, finishing with
the weights of an uninterrupted run; a NaN run exits non-zero with one line after saving; bad
configs are one line; two gloo processes under torchrun train and evaluate like one process.

The subprocess tests (marked slow) mostly wait for torch to import; the rest runs in-process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_training as tiny
from hydra import compose, initialize_config_dir

from detector.checkpoint import find_resume_checkpoint, load_checkpoint
from detector.data import SHAPES_CLASS_NAMES
from detector.modeling.spec import MODEL_CONSTRUCTORS
from detector_cli import checks as config_checks
from detector_cli import evaluate as eval_tool
from detector_cli import train as train_net

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOOLS = PROJECT_ROOT / "tools"


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("data") / "shapes"
    return [*tiny.CLI_OVERRIDES, f"dataset.root={root}"]


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        return compose(name, overrides=overrides)


def _env() -> dict:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(tiny.TESTS),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture
def one_thread():
    """The subprocesses run single-threaded; so do in-process runs compared with them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


# ---------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(("override", "message"), [
    ("foo=1", "Could not override 'foo': no such key in the config"),
    ("train.checkpoint_periode=5", "Could not override 'train.checkpoint_periode'"),
    ("dataset=nope", "Could not find 'dataset/nope' (available: coco, shapes, voc)"),
    ("batch_size=[", "could not parse the command line"),
])
def test_hydra_rejections_become_one_line(override, message):
    with pytest.raises(config_checks.ConfigError) as info:
        config_checks.check_overrides([override], config_name="train")
    assert message in str(info.value) and "\n" not in str(info.value)
    config_checks.check_overrides(["batch_size=3", "hydra.run.dir=x"], config_name="train")
    config_checks.check_overrides(["--help"], config_name="train")  # Hydra flags: Hydra's job


@pytest.mark.parametrize(("override", "message"), [
    ("train.checkpoint_period=-1", "train.checkpoint_period must be an integer >= 0"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be a positive integer"),
    ("train.eval_period=-5", "train.eval_period must be an integer >= 0"),
    ("resume=/nowhere/iter_0000010.pth", "resume=/nowhere/iter_0000010.pth: no such checkpoint"),
])
def test_bad_reliability_values_are_one_line(override, message, overrides, tmp_path):
    cfg = _compose("train", [*overrides, f"output_dir={tmp_path}", override])
    with pytest.raises(config_checks.ConfigError, match=re.escape(message)) as info:
        config_checks.check_train_config(cfg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("override", "message"), [
    ("train.on_nonfinite=ignore", "train.on_nonfinite must be 'stop' or 'skip', got 'ignore'"),
    ("train.channels_last=maybe", "train.channels_last must be true, false or auto, got 'maybe'"),
    ("train.divergence_factor=true", "train.divergence_factor must be a number > 1 (or None: "
                                     "off), got True"),
    ("precision=fp8", "precision must be auto, fp32, bf16 or fp16, got 'fp8'"),
])
def test_values_the_library_refuses_are_one_line_before_any_data(override, message, tmp_path,
                                                                  capsys):
    """The rule lives in the constructor (StepOptions, DivergenceGuard, resolve_precision), not
    in detector_cli.checks: the run still stops with one line naming the config key, before the
    generated shapes set (made on first use) is written."""
    root = tmp_path / "shapes"
    cfg = _compose("train", [*tiny.CLI_OVERRIDES, f"dataset.root={root}",
                             f"output_dir={tmp_path / 'run'}", override])
    assert train_net.run(cfg) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not root.exists()


def test_resume_true_without_checkpoints_names_the_fix(overrides, tmp_path, capsys):
    cfg = _compose("train", [*overrides, f"output_dir={tmp_path}", "resume=true"])
    assert train_net.run(cfg) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line on stderr
    assert "holds no iter_*.pth: pass output_dir=<the run to resume>" in line


def test_missing_dataset_root_exits_2_with_one_line(tmp_path, capsys):
    cfg = _compose("train", ["dataset=coco", f"dataset.root={tmp_path / 'nope'}", "device=cpu",
                             f"output_dir={tmp_path / 'run'}"])
    assert train_net.run(cfg) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: dataset.root=") and "nope does not exist" in line


@pytest.mark.slow
def test_unknown_key_on_the_command_line_is_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, str(TOOLS / "train_net.py"), "trian.log_period=5"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 2, output
    assert output == ("error: Could not override 'trian.log_period': no such key in the config "
                      "(to append to your config use +trian.log_period=5 if it is not a typo)")
    assert not list(tmp_path.iterdir())  # nothing started: no run directory


# ---------------------------------------------------------------------------- NaN guard
def test_absurd_learning_rate_exits_3_with_one_line_after_saving(overrides, tmp_path, caplog):
    cfg = _compose("train", [*overrides, f"output_dir={tmp_path}", "optimizer.lr=1e10",
                             "train.clip_grad_norm=null", "schedule.iterations=20",
                             "train.checkpoint_period=0"])
    with caplog.at_level(logging.ERROR):
        assert train_net.run(cfg) == 3
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    match = re.search(r"non-finite (.+) at iteration (\d+) .* learning rate ([\d.e+]+); the last "
                      r"good state \(iteration (\d+)\) is in (\S+)\. Hints", line)
    assert match and "\n" not in line, line
    assert "loss_" in match.group(1) or "grad_norm" in match.group(1)
    assert float(match.group(3)) > 1e6 and int(match.group(4)) == int(match.group(2)) - 1
    assert "train.on_nonfinite=skip" in line and "optimizer.lr" in line
    saved = load_checkpoint(match.group(5))
    assert saved["iteration"] == int(match.group(4)) and not (tmp_path / "checkpoints" /
                                                              "final.pth").exists()


# ---------------------------------------------------------------------------- signals, kill -9
def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the training process ended (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _newest_iteration(run: Path) -> int:
    path = find_resume_checkpoint(run)
    return int(path.stem.split("_")[1]) if path else 0


def _last_logged_iteration(run: Path) -> int:
    found = re.findall(r"\[end_to_end\] iter (\d+)/", (run / "train_net.log").read_text())
    return int(found[-1]) if found else 0


@pytest.mark.slow
def test_sigterm_then_kill_9_then_resume_ends_like_an_uninterrupted_run(overrides, tmp_path,
                                                                       one_thread):
    run, period, total = tmp_path / "run", 2, 30
    args = [*overrides, f"schedule.iterations={total}", f"train.checkpoint_period={period}",
            f"output_dir={run}"]
    command = [sys.executable, str(TOOLS / "train_net.py"), *args]
    popen = dict(cwd=PROJECT_ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                 text=True)

    # 1. SIGTERM: the current step finishes, a checkpoint is written, the last line says how
    #    to resume, the exit code says "terminated"
    proc = subprocess.Popen(command, **popen)
    _wait_for(lambda: _newest_iteration(run) >= period, proc, "the first checkpoint")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, output
    stopped_at = _newest_iteration(run)
    assert period <= stopped_at < total and stopped_at == _last_logged_iteration(run)
    resume_line = output.strip().splitlines()[-1]
    assert f"stopped by SIGTERM at iteration {stopped_at}" in resume_line
    printed = resume_line.split("Resume with: ", 1)[1]
    assert printed.startswith("python tools/train_net.py ")
    assert printed.endswith(f"output_dir={run} resume=true")

    # 2. the printed command resumes; kill -9 it once it has written a newer checkpoint
    proc = subprocess.Popen([sys.executable, *shlex.split(printed)[1:]], **popen)
    _wait_for(lambda: _newest_iteration(run) > stopped_at, proc, "a checkpoint after resuming")
    proc.kill()  # SIGKILL: no handler, no last checkpoint
    output, _ = proc.communicate(timeout=60)
    assert f"resumed at iteration {stopped_at}/{total}" in output
    killed_at = _newest_iteration(run)
    assert _last_logged_iteration(run) - killed_at <= period  # at most one interval lost

    # 3. resume again and finish
    assert train_net.run(_compose("train", [*args, "resume=true"])) == 0
    final = load_checkpoint(run / "checkpoints" / "final.pth")
    assert final["iteration"] == total and final["class_names"] == list(SHAPES_CLASS_NAMES)
    # the log holds every iteration once: what the killed run logged after its checkpoint went
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == list(range(1, total + 1))

    straight = tmp_path / "straight"
    assert train_net.run(_compose("train", [*args[:-1], f"output_dir={straight}"])) == 0
    expected = _weights(straight / "checkpoints" / "final.pth")
    for key, value in expected.items():
        torch.testing.assert_close(final["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


# ---------------------------------------------------------------------------- torchrun
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_evaluate_like_one_process(overrides, tmp_path, monkeypatch):
    """torchrun with 2 CPU processes (gloo): each trains on its shard and predicts half of the
    val set; rank 0 evaluates the gathered detections. Evaluating the saved checkpoint in one
    process must give the same COCO numbers (the same weights, every image once)."""
    run = tmp_path / "ddp"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={_free_port()}", str(TOOLS / "train_net.py"), *overrides,
         "batch_size=1", "schedule.iterations=6", "train.eval_batch_size=3", "precision=fp32",
         "train.checkpoint_period=3", f"output_dir={run}"],
        cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "device cpu x 2 process(es)" in output
    final = load_checkpoint(run / "checkpoints" / "final.pth")
    assert final["iteration"] == 6
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())
    assert [p.name for p in (run / "checkpoints").glob("iter_*.pth")] and len(
        load_checkpoint(run / "checkpoints" / "iter_0000006.pth")["rng"]) == 2  # both ranks
    # only rank 0 logged: one metrics.jsonl record per iteration (log_period 1) + the evaluation
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    distributed = json.loads((run / "final_metrics.json").read_text())

    # the tiny backbone joins the checkpoint allow-list for this evaluation (the run names it)
    monkeypatch.setitem(MODEL_CONSTRUCTORS, tiny.BACKBONE, tiny.TinyBackbone)
    single = eval_tool.run(_compose("eval", [f"checkpoint={run / 'checkpoints' / 'final.pth'}",
                                             "device=cpu", "num_workers=0", "num_visualize=0",
                                             "batch_size=4", "precision=fp32"]))
    assert distributed["num_images"] == single["num_images"] == 4
    assert distributed["AR100"] > 0  # not a vacuous comparison of zeros
    for key in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert distributed[key] == pytest.approx(single[key], abs=1e-6), key
    assert distributed["per_class"].keys() == single["per_class"].keys()
    for name, value in single["per_class"].items():
        assert (distributed["per_class"][name] is None) == (value is None), name
        assert value is None or distributed["per_class"][name] == pytest.approx(value, abs=1e-6)
