"""Stopping safely everywhere (issue #13), end to end through tools/train_net.py and eval.py:
SIGTERM / SIGINT to the whole process group (DataLoader workers included), a stop during an
evaluation, one-line start-up errors (exit code 2; HYDRA_FULL_ERROR=1 keeps the trace) and
unreadable checkpoints.

The process-group tests start training in its own session (``start_new_session=True``, as
``setsid`` or a scheduler would) and signal it with ``os.killpg``; they are marked slow.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers.hostile_files import make_directory, make_fifo, make_link_loop
from helpers.load_file import load_file, load_tool
from helpers.run_tool import run_tool
from hydra.errors import InstantiationException

from detector.checkpoint import find_resume_checkpoint, load_checkpoint
from detector.data import DatasetError
from detector.modeling.spec import MODEL_CONSTRUCTORS
from detector_cli import cli

HERE = Path(__file__).resolve().parent


# its helpers and tools
rel = load_file(HERE / "test_reliability.py", "reliability_helpers", register=True)
train_net, tiny = rel.train_net, rel.tiny  # detector_cli.train
eval_tool = load_tool("eval.py")  # its main: the Hydra task function


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("data") / "shapes"
    return [*tiny.CLI_OVERRIDES, f"dataset.root={root}"]


def _start(args: list[str]) -> subprocess.Popen:
    """tools/train_net.py in a new session: its own process group, led by it."""
    return subprocess.Popen([sys.executable, str(rel.TOOLS / "train_net.py"), *args],
                            cwd=rel.PROJECT_ROOT, env=rel._env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _stopped_cleanly(proc: subprocess.Popen, signum: int, run: Path) -> tuple[str, int]:
    """Wait for the signalled run; check the exit code, the output and the checkpoint."""
    output, _ = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, output[-3000:]
    assert "Traceback" not in output and "DataLoader worker" not in output, output[-3000:]
    stopped_at = rel._newest_iteration(run)
    last = output.strip().splitlines()[-1]
    assert f"stopped by {name} at iteration {stopped_at}" in last
    assert last.endswith(f"output_dir={run} resume=true")
    with pytest.raises(ProcessLookupError):  # no worker outlived the run
        os.killpg(proc.pid, 0)
    return output, stopped_at


def _resume_finishes(args: list[str], run: Path, total: int) -> None:
    assert train_net.run(rel._compose("train", [*args, "resume=true"])) == 0
    final = load_checkpoint(run / "checkpoints" / "final.pth")
    assert final["iteration"] == total
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == list(range(1, total + 1))


# ---------------------------------------------------------------------------- process group
@pytest.mark.slow
def test_sigterm_to_the_process_group_with_data_workers(overrides, tmp_path):
    """What timeout, scancel and systemd do: SIGTERM to every process of the job. The workers
    ignore it, the main process finishes its step, writes a checkpoint and exits with 143."""
    run, total = tmp_path / "run", 20
    args = [*overrides, "num_workers=2", f"schedule.iterations={total}",
            "train.checkpoint_period=2", f"output_dir={run}"]
    proc = _start(args)
    rel._wait_for(lambda: rel._newest_iteration(run) >= 2, proc, "the first checkpoint")
    os.killpg(proc.pid, signal.SIGTERM)
    _, stopped_at = _stopped_cleanly(proc, signal.SIGTERM, run)
    assert 2 <= stopped_at < total
    _resume_finishes(args, run, total)


def _evaluating(run: Path, iteration: int):
    log = run / "train_net.log"
    return lambda: log.is_file() and f"evaluation at iteration {iteration} " in log.read_text()


@pytest.mark.slow
def test_sigint_to_the_group_during_an_evaluation_exits_within_10_s(overrides, tmp_path):
    """Ctrl-C in a terminal (SIGINT to the foreground group) while a periodic evaluation runs:
    an evaluation of 30 batches of 0.5 s is abandoned after the current batch, the checkpoint
    is written and the process exits with 130 well within 10 s; the evaluation is logged as
    skipped and not recorded. Resuming finishes the run."""
    run, total = tmp_path / "run", 6
    args = [*overrides, "num_workers=2", f"schedule.iterations={total}", "train.eval_period=3",
            "dataset.num_val=30", "train.eval_batch_size=1", "train.checkpoint_period=0",
            "model.backbone._target_=helpers.tiny_training.SlowEvalBackbone", f"output_dir={run}"]
    proc = _start([*args, "+model.backbone.eval_delay=0.5"])
    rel._wait_for(_evaluating(run, 3), proc, "the evaluation at iteration 3")
    signalled = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    output, stopped_at = _stopped_cleanly(proc, signal.SIGINT, run)
    assert time.monotonic() - signalled < 10.0, output[-3000:]
    assert stopped_at == 3
    assert "evaluation at iteration 3 skipped: SIGINT arrived during it" in output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not [r for r in records if "AP" in r]  # never an AP of 0 for it
    _resume_finishes([*args, "+model.backbone.eval_delay=0.0"], run, total)


# ---------------------------------------------------------------------------- start-up errors
RACCOON_XML = ("<annotation><filename>a.jpg</filename><size><width>64</width><height>64</height>"
               "<depth>3</depth></size><object><name>raccoon</name><difficult>0</difficult>"
               "<bndbox><xmin>8</xmin><ymin>8</ymin><xmax>40</xmax><ymax>40</ymax></bndbox>"
               "</object></annotation>")


def _voc(root: Path, xml: str = "<annotation><object>") -> Path:
    """A VOC folder of one 64 x 64 image, ``a``, whose annotation file holds ``xml`` (by
    default: not XML)."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    (root / "Annotations" / "a.xml").write_text(xml)
    assert cv2.imwrite(str(root / "JPEGImages" / "a.jpg"), np.full((64, 64, 3), 90, np.uint8))
    for split in ("trainval", "test"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("a\n")
    return root


def test_a_bad_dataset_is_one_line_on_stderr_without_hydras_wrapping(tmp_path):
    root = _voc(tmp_path / "voc")
    done = run_tool("train_net.py", ["dataset=voc", f"dataset.root={root}", "device=cpu",
                                     f"output_dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: annotation file ") and "a.xml is not valid XML" in line
    for noise in ("Error executing job", "Error in call to target", "HYDRA_FULL_ERROR",
                  "Traceback"):
        assert noise not in done.stdout + done.stderr
    assert not (tmp_path / "run").exists()  # a start that failed leaves no run folder behind


def _task(tool, cfg, capsys) -> tuple[int, str]:
    """Exit code and stderr of the tool's Hydra task function called with ``cfg``."""
    with pytest.raises(SystemExit) as info:
        tool.main(cfg)
    return info.value.code, capsys.readouterr().err


def test_wrapped_dataset_error_in_process_and_hydra_full_error(tmp_path, capsys, monkeypatch):
    cfg = rel._compose("train", ["dataset=voc", f"dataset.root={_voc(tmp_path / 'voc')}",
                                 "device=cpu", f"output_dir={tmp_path / 'run'}"])
    code, err = _task(train_net, cfg, capsys)
    assert code == 2 and err.count("\n") == 1 and "is not valid XML" in err
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # for debugging: the whole chain, unchanged
    with pytest.raises(InstantiationException) as info:
        train_net.main(cfg)
    assert isinstance(info.value.__cause__, DatasetError)


def test_user_error_is_found_inside_other_exceptions():
    cause = DatasetError("annotation file x.xml is not valid XML")
    try:
        try:
            raise cause
        except DatasetError as error:
            raise InstantiationException("Error in call to target 'VocDetection'") from error
    except InstantiationException as wrapped:
        assert cli.user_error(wrapped) is cause
    assert cli.user_error(RuntimeError("a bug")) is None
    assert cli.user_error(FileNotFoundError("no such file")) is not None


def test_eval_of_a_bad_dataset_or_other_classes_is_one_line(overrides, tmp_path, capsys,
                                                             monkeypatch):
    # the tiny backbone joins the checkpoint allow-list for this test (its checkpoint names it)
    monkeypatch.setitem(MODEL_CONSTRUCTORS, tiny.BACKBONE, tiny.TinyBackbone)
    run = tmp_path / "run"
    args = [*overrides, "schedule.iterations=2", "train.checkpoint_period=0", f"output_dir={run}"]
    assert train_net.run(rel._compose("train", args)) == 0
    capsys.readouterr()
    checkpoint = f"checkpoint={run / 'checkpoints' / 'final.pth'}"
    broken = _voc(tmp_path / "broken")  # a DatasetError inside Hydra's InstantiationException
    code, err = _task(eval_tool, rel._compose("eval", [checkpoint, "device=cpu", "dataset=voc",
                                                       f"dataset.root={broken}"]), capsys)
    assert code == 2 and err.count("\n") == 1 and "a.xml is not valid XML" in err
    other = _voc(tmp_path / "voc", RACCOON_XML)
    cfg = rel._compose("eval", [checkpoint, "device=cpu", "dataset=voc", f"dataset.root={other}",
                                "num_visualize=0"])
    code, err = _task(eval_tool, cfg, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "the checkpoint's classes" in err and "raccoon" in err


# ---------------------------------------------------------------------------- bad checkpoints
def test_truncated_checkpoint_is_named_and_resume_true_passes_over_it(overrides, tmp_path,
                                                                       capsys, caplog):
    run, total = tmp_path / "run", 6
    args = [*overrides, f"schedule.iterations={total}", "train.checkpoint_period=2",
            f"output_dir={run}"]
    assert train_net.run(rel._compose("train", args)) == 0
    bad = find_resume_checkpoint(run)
    assert bad.name == "iter_0000006.pth"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # as if a disk ran full
    (run / "checkpoints" / "final.pth").unlink()
    # resume=PATH: one line naming the file and the one before it, exit code 2
    capsys.readouterr()
    assert train_net.run(rel._compose("train", [*args, f"resume={bad}"])) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"could not read checkpoint {bad}" in line
    assert f"the previous checkpoint is {run / 'checkpoints' / 'iter_0000004.pth'}" in line
    # resume=true: a warning, then the newest readable one
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(run).name == "iter_0000004.pth"
        assert train_net.run(rel._compose("train", [*args, "resume=true"])) == 0
    assert any("skipping unreadable checkpoint" in r.getMessage() and "iter_0000006" in
               r.getMessage() for r in caplog.records)
    assert load_checkpoint(run / "checkpoints" / "final.pth")["iteration"] == total


# ---------------------------------------------------------------------------- hostile resumes
@pytest.fixture(scope="module")
def finished_run(overrides, tmp_path_factory) -> tuple[list[str], Path]:
    """(the arguments, the folder) of one finished 4-iteration run with checkpoints at 2 and 4."""
    run = tmp_path_factory.mktemp("finished") / "run"
    args = [*overrides, "schedule.iterations=4", "train.checkpoint_period=2"]
    assert train_net.run(rel._compose("train", [*args, f"output_dir={run}"])) == 0
    return args, run


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def _edited(state_path: Path, target: Path, edit) -> Path:
    state = torch.load(state_path, weights_only=True)
    edit(state)
    torch.save(state, target)
    return target


def _fifo(folder: Path) -> Path:
    return make_fifo(folder, "iter_0000099.pth")


def _loop(folder: Path) -> Path:
    return make_link_loop(folder, "a.pth", "b.pth")


def _directory(folder: Path) -> Path:
    return make_directory(folder, "iter_0000002.pth")


REFUSED_RESUMES = {  # id: (make the resume=PATH from (run, scratch folder), the one line says)
    "final_pth": (lambda run, tmp: run / "checkpoints" / "final.pth",
                  "final.pth is a final checkpoint: the trained model without the training state"),
    "classes_reordered": (lambda run, tmp: _edited(
        run / "checkpoints" / "iter_0000002.pth", tmp / "reordered.pth",
        lambda s: s.update(class_names=s["class_names"][::-1])),
        "reordered.pth is for the same classes in another order"),
    "iteration_-1": (lambda run, tmp: _edited(
        run / "checkpoints" / "iter_0000002.pth", tmp / "minus.pth",
        lambda s: s.update(iteration=-1)), "minus.pth: iteration is -1, not an integer in"),
    "fifo": (lambda run, tmp: _fifo(tmp), "iter_0000099.pth is a FIFO (named pipe), not a "
                                          "checkpoint file"),
    "dev_zero": (lambda run, tmp: Path("/dev/zero"), "checkpoint /dev/zero is a character "
                                                     "device, not a checkpoint file"),
    "directory": (lambda run, tmp: _directory(tmp), "iter_0000002.pth is a directory, not a "
                                                    "checkpoint file"),
    "symlink_loop": (lambda run, tmp: _loop(tmp), "a.pth is a symlink loop"),
}


@pytest.mark.parametrize("case", REFUSED_RESUMES)
def test_a_refused_resume_is_one_line_and_leaves_the_run_as_it_was(case, finished_run, tmp_path,
                                                                   capsys):
    """Before: KeyError 'trainer' (final.pth), a silent restart that emptied metrics.jsonl
    (iteration -1), "no such checkpoint file" for a FIFO, /dev/zero, a folder or a loop."""
    args, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    make, message = REFUSED_RESUMES[case]
    resume = make(run, tmp_path)
    before = _files(run)
    capsys.readouterr()
    assert train_net.run(rel._compose("train", [*args, f"output_dir={run}",
                                                f"resume={resume}"])) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line, line
    assert _files(run) == before  # metrics.jsonl, config.json, tensorboard/, checkpoints/


@pytest.mark.slow
def test_a_bad_random_state_exits_2_at_once_with_data_workers(finished_run, tmp_path):
    """Before: a traceback, then the process never exited (the resumed loader's 2 workers,
    which ignore SIGTERM, outlived the error and the exit joined them; Ctrl-C did nothing)."""
    args, finished = finished_run
    bad = _edited(finished / "checkpoints" / "iter_0000002.pth", tmp_path / "bad_rng.pth",
                  lambda s: s["rng"][0].update(torch=torch.zeros(3, dtype=torch.uint8)))
    command = [a for a in args if not a.startswith("num_workers=")]
    proc = _start([*command, "num_workers=2", f"output_dir={tmp_path / 'run'}", f"resume={bad}"])
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the refused resume did not exit within 180 s")
    assert proc.returncode == 2, output[-3000:]
    assert output.strip().splitlines()[-1] == (
        f"error: checkpoint {bad}: rng[0].torch is a torch.uint8 tensor of shape [3], not a "
        f"torch.uint8 tensor of {torch.get_rng_state().numel()} bytes (a generator state)")
    assert "Traceback" not in output
