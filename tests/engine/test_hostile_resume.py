"""A resume checkpoint is data from anywhere (issue #26): every value of it is checked before
anything is restored or any file touched.

One real tiny training run (4 iterations, a checkpoint after 2) gives a real checkpoint; each test
edits its dict (a number out of range, a random state of the wrong shape, another class order,
a final checkpoint, ...), ``torch.save``s it and resumes a fresh trainer in that run folder: one
line naming the key (``CheckpointError``, ``CheckpointMismatchError``), and the run's
``metrics.jsonl``, the trainer's weights and position untouched, no data loader worker left.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import shutil
import time

import pytest
import torch
from helpers import tiny_training as tiny

from detector.checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint
from detector.engine import resume as resume_module
from detector.engine.logger import RunFolderError, TrainLogger
from detector.run_files import drop_records_after

CLASSES = ["square", "circle", "triangle", "ellipse"]
PHASES = 4  # iterations of the end-to-end schedule


@pytest.fixture(scope="module")
def trained(shapes_root, tmp_path_factory):
    """(run folder, its iteration-2 checkpoint as a dict): the one training run of the module."""
    run = tmp_path_factory.mktemp("trained")
    trainer = tiny.make_trainer(shapes_root, run, phases=tiny.end_to_end(PHASES),
                                checkpoint_period=2, keep_checkpoints=3,
                                checkpoint_extra={"class_names": CLASSES})
    trainer.train()
    return run, load_checkpoint(run / "checkpoints" / "iter_0000002.pth")


def _resume_copy(trained, shapes_root, tmp_path, edit=None, **options):
    """A copy of the trained run, a fresh trainer in it and the edited checkpoint's path."""
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    state = copy.deepcopy(trained[1])
    if edit is not None:
        edit(state)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    trainer = tiny.make_trainer(shapes_root, run, phases=tiny.end_to_end(PHASES),
                                checkpoint_extra={"class_names": CLASSES}, **options)
    return run, trainer, path


def _set(path: str, value):
    """An edit that sets ``state[a][b]...`` (``path`` "a/b", list indices as numbers)."""
    def edit(state):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        for part in parents:
            state = state[part]
        if value is _DELETE:
            del state[last]
        else:
            state[last] = value(state[last]) if callable(value) else value
    return edit


_DELETE = object()
NAN = float("nan")
HOSTILE = {  # id: (edit, the error's type, what its message says)
    "iteration_-1": (_set("iteration", -1), CheckpointError, r"iteration is -1, not an integer"),
    "iteration_huge": (_set("iteration", 10**40), CheckpointError,
                       r"iteration is a number of about 41 digits"),
    "phase_iter": (_set("trainer/phase_iter", -10**9), CheckpointError,
                   r"trainer\.phase_iter is -1000000000, not an integer in \[0, 4\]"),
    "phase_index": (_set("trainer/phase_index", 7), CheckpointError, r"trainer\.phase_index is 7"),
    "phase_begun": (_set("trainer/phase_begun", "yes"), CheckpointError,
                    r"trainer\.phase_begun is 'yes', not true or false"),
    "skipped": (_set("trainer/skipped_steps", -1), CheckpointError, r"trainer\.skipped_steps"),
    "phase_lengths": (_set("trainer/phase_iterations", [0]), CheckpointError,
                      r"trainer\.phase_iterations\[0\] is 0"),
    "phases_not_a_list": (_set("trainer/phases", 12), CheckpointError, r"trainer\.phases is 12"),
    "epoch": (_set("data/epoch", -1), CheckpointError, r"data\.epoch is -1"),
    "position": (_set("data/position", 10**12), CheckpointError,
                 r"data\.position is 1000000000000, not an integer in \[0, 2\]"),
    "rng_torch_short": (_set("rng/0/torch", torch.zeros(3, dtype=torch.uint8)), CheckpointError,
                        r"rng\[0\]\.torch is a torch\.uint8 tensor of shape \[3\], not a "
                        r"torch\.uint8 tensor of \d+ bytes"),
    "rng_torch_dtype": (_set("rng/0/torch", lambda t: t.float()), CheckpointError,
                        r"rng\[0\]\.torch is a torch\.float32 tensor"),
    "rng_empty": (_set("rng", []), CheckpointError, r"rng is empty"),
    # a zero-stride view of 10**11 elements (800 GB): refused by its shape, never materialised
    "numpy_keys_huge": (_set("rng/0/numpy/keys", torch.zeros(1, dtype=torch.int64).expand(10**11)),
                        CheckpointError, r"rng\[0\]\.numpy\.keys is a torch\.int64 tensor of "
                                         r"shape \[100000000000\]"),
    "numpy_pos": (_set("rng/0/numpy/pos", 625), CheckpointError, r"rng\[0\]\.numpy\.pos is 625"),
    "numpy_cached": (_set("rng/0/numpy/cached", NAN), CheckpointError,
                     r"rng\[0\]\.numpy\.cached is nan"),
    "python_short": (_set("rng/0/python", lambda s: (s[0], s[1][:624], s[2])), CheckpointError,
                     r"rng\[0\]\.python\[1\] is a tuple, not a list of 625 entries"),
    "python_word": (_set("rng/0/python", lambda s: (s[0], (2**40, *s[1][1:]), s[2])),
                    CheckpointError, r"rng\[0\]\.python\[1\] is not 624 words"),
    "python_version": (_set("rng/0/python", lambda s: (2, *s[1:])), CheckpointError,
                       r"rng\[0\]\.python\[0\] is 2"),
    "weights_nan": (_set("model/rpn_head.conv.weight", lambda t: torch.full_like(t, NAN)),
                    CheckpointError, r"model\.rpn_head\.conv\.weight holds NaN or infinite"),
    "weights_shape": (_set("model/rpn_head.conv.weight", lambda t: t[:1]),
                      CheckpointMismatchError, r"model\.rpn_head\.conv\.weight is a "
                                               r"torch\.float32 tensor of shape \[1, "),
    "weights_missing": (_set("model/rpn_head.conv.weight", _DELETE), CheckpointMismatchError,
                        r"model does not fit this model \(1 of its weights missing, e\.g\. "
                        r"'rpn_head\.conv\.weight'"),
    "lr": (_set("optimizer/param_groups/0/lr", "fast"), CheckpointError,
           r"optimizer\.param_groups\[0\]\.lr is 'fast'"),
    "momentum_shape": (_set("optimizer/state/0/momentum_buffer", torch.zeros(2, 2)),
                       CheckpointError, r"optimizer\.state\[0\]\.momentum_buffer is a "
                                        r"torch\.float32 tensor of shape \[2, 2\]"),
    "groups": (_set("optimizer/param_groups", lambda g: g[:1]), CheckpointMismatchError,
               r"optimizer\.param_groups has 1 groups, this phase's optimiser 2"),
    "scheduler_attribute": (_set("scheduler/optimizer", {}), CheckpointError,
                            r"scheduler\.optimizer is a dict, not a state"),
    "scheduler_lambdas": (_set("scheduler/lr_lambdas", [{"x": 1}, None]), CheckpointError,
                          r"scheduler\.lr_lambdas must be None for each group"),
    "scaler": (_set("scaler", {"scale": "big"}), CheckpointError, r"scaler does not hold"),
    "last_metrics": (_set("trainer/last_metrics", {"AP": "high", "per_class": {"a": [1, {}]}}),
                     CheckpointError, r"trainer\.last_metrics is a dict, not a dict of metrics"),
    "last_eval": (_set("trainer/last_eval_iteration", -3), CheckpointError,
                  r"trainer\.last_eval_iteration is -3"),
    "divergence": (_set("trainer/divergence/reference", "x"), CheckpointError,
                   r"trainer\.divergence\.reference is 'x'"),
    # the best evaluation so far (detector.engine.best; issue #28)
    "best_not_a_dict": (_set("best", [1, 2]), CheckpointError, r"best is a list, not a dict"),
    "best_bad_negative": (_set("best/bad_evaluations", -1), CheckpointError,
                          r"best\.bad_evaluations is -1, not an integer in \[0, "),
    "best_value_nan": (_set("best", {"metric": "AP50", "mode": "max", "value": NAN,
                                     "iteration": 2, "bad_evaluations": 0}),
                       CheckpointError, r"best\.value is nan, not a finite number"),
    "best_value_inf": (_set("best", {"metric": "AP50", "mode": "max", "value": float("inf"),
                                     "iteration": 2, "bad_evaluations": 0}),
                       CheckpointError, r"best\.value is inf, not a finite number"),
    "best_iteration_future": (_set("best", {"metric": "AP50", "mode": "max", "value": 0.5,
                                            "iteration": 3, "bad_evaluations": 0}),
                              CheckpointError, r"best\.iteration is 3, not an integer in "
                                               r"\[0, 2\]"),
    "best_mode": (_set("best/mode", "biggest"), CheckpointError,
                  r"best\.mode is 'biggest', not 'max' or 'min'"),
    "best_metric": (_set("best/metric", 7), CheckpointError, r"best\.metric is 7, not a metric"),
    "classes_missing": (_set("class_names", _DELETE), CheckpointError,
                        r"class_names is None, not a list of class names"),
    "classes_reordered": (_set("class_names", lambda c: c[::-1]), CheckpointMismatchError,
                          r"is for the same classes in another order \(\['ellipse', 'triangle', "
                          r"'circle', 'square'\]; this run's dataset: \['square', "),
    "classes_other": (_set("class_names", ["cat", "dog", "cow", "emu"]), CheckpointMismatchError,
                      r"is for the classes \['cat', 'dog', 'cow', 'emu'\], this run's dataset "
                      r"has \['square'"),
    "final_checkpoint": (_set("trainer", _DELETE), CheckpointError,
                         r"is a final checkpoint: the trained model without the training state "
                         r"\(no 'trainer' key\), so training cannot continue from it; resume from "
                         r"an iter_\*\.pth"),
}


@pytest.mark.parametrize("hostile", HOSTILE, ids=list(HOSTILE))
def test_a_hostile_checkpoint_is_refused_before_anything_changes(hostile, trained, shapes_root,
                                                                 tmp_path):
    edit, kind, message = HOSTILE[hostile]
    run, trainer, path = _resume_copy(trained, shapes_root, tmp_path, edit)
    metrics = (run / "metrics.jsonl").read_bytes()
    weights = {k: v.clone() for k, v in trainer.models["main"].state_dict().items()}
    with pytest.raises(kind, match=message) as caught:
        trainer.resume(path)
    assert str(caught.value).startswith(f"checkpoint {path}") and "\n" not in str(caught.value)
    assert (run / "metrics.jsonl").read_bytes() == metrics  # (iteration -1 used to empty it)
    assert trainer.position.iteration == 0 and trainer.models["rpn"] is None
    for key, value in trainer.models["main"].state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert trainer.stream._iterator is None


def test_the_real_checkpoint_resumes_and_rewinds_the_log(trained, shapes_root, tmp_path):
    """The checks pass what training writes (the edits above are the only difference)."""
    run, trainer, path = _resume_copy(trained, shapes_root, tmp_path)
    logged = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in
              line]
    assert len(logged) == PHASES
    trainer.resume(path)
    assert trainer.position.iteration == 2 and trainer.position.phase_iter == 2
    assert len([line for line in (run / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in line]) == 2
    assert trainer.train()["iterations"] == PHASES


def test_class_order_check_guards_the_labels(trained, shapes_root, tmp_path):
    """The same classes in another order must never resume (label i would silently become
    another class): with the check, the refusal; the classes in the checkpoint's own order
    resume."""
    run, trainer, path = _resume_copy(trained, shapes_root, tmp_path,
                                      _set("class_names", lambda c: c[1:] + c[:1]))
    with pytest.raises(CheckpointMismatchError, match="same classes in another order"):
        trainer.resume(path)
    trainer.checkpointer.extra["class_names"] = CLASSES[1:] + CLASSES[:1]
    trainer.resume(path)  # this run's dataset in the checkpoint's order: fine
    assert trainer.position.iteration == 2


def test_a_failure_while_restoring_leaves_no_data_loader_worker(trained, shapes_root, tmp_path,
                                                                 monkeypatch):
    """Before: the open loader (2 workers that ignore SIGTERM) outlived the error, and the
    process hung at exit joining them."""
    def broken(state):
        raise RuntimeError("a restore that fails after the loader started")

    monkeypatch.setattr(resume_module, "restore_rng_state", broken)
    _, trainer, path = _resume_copy(trained, shapes_root, tmp_path, num_workers=2)
    try:
        with pytest.raises(RuntimeError, match="after the loader started"):
            trainer.resume(path)
        assert trainer.stream._iterator is None
    finally:
        trainer.stream.close()  # (without the fix: else the workers outlive the test)
    _no_children_left()


def test_a_failing_step_leaves_no_data_loader_worker(shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(3), num_workers=2)

    def broken(outputs, targets):
        raise RuntimeError("a criterion that fails")

    trainer.criterion = broken
    try:
        with pytest.raises(RuntimeError, match="a criterion that fails"):
            trainer.train()
        assert trainer.stream._iterator is None
    finally:
        trainer.stream.close()
    _no_children_left()


def _no_children_left(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


def test_drop_records_after_refuses_a_negative_iteration_and_keeps_odd_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    content = (b'{"iter": 1, "loss": 1}\n{"iter": 3, "loss": 1}\n\xff\xfe not utf-8\n'
               b'{"iter": 1' + b"0" * 400 + b', "loss": 1}\n{"iter": 1e999}\n')
    path.write_bytes(content)
    with pytest.raises(ValueError, match="iteration must be >= 0"):
        drop_records_after(path, -1)
    assert path.read_bytes() == content
    assert drop_records_after(path, 2) == 1  # iteration 3; what cannot be read stays
    assert path.read_bytes() == content.replace(b'{"iter": 3, "loss": 1}\n', b"")


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_metrics_log_that_is_no_file_of_the_run_is_refused(kind, tmp_path):
    """A shared run folder's metrics.jsonl linking elsewhere (appended through, before) or a
    FIFO (the first log point blocked forever, before): refused when the logger starts."""
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not the run's\n")
    run = tmp_path / "run"
    run.mkdir()
    if kind == "symlink":
        os.symlink(outside, run / "metrics.jsonl")
    else:
        os.mkfifo(run / "metrics.jsonl")
    with pytest.raises(RunFolderError, match=r"metrics\.jsonl is not a regular file \(a symlink, "
                                             r"a FIFO, a folder, \.\.\.\): training appends"):
        TrainLogger(output_dir=run, tensorboard=False)
    assert outside.read_text() == "not the run's\n"
