"""The parts the Trainer is made of, one at a time: where a run is (``TrainingPosition``), when
periodic work fires (``Every``, ``PeriodicEvaluation``, ``Checkpointer``), the log window, the
phase optimiser and a checkpoint's round trip through ``Checkpointer``."""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
from torch import nn

from detector.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    list_periodic_checkpoints,
    load_checkpoint,
)
from detector.engine.guard import DivergenceGuard, StopSignal
from detector.engine.logger import LogWindow, mean_max
from detector.engine.optim import PhaseOptimizer
from detector.engine.position import Cadence, Every, StepOptions, TrainingPosition
from detector.engine.resume import (
    CHECKPOINT_FORMAT,
    Checkpointer,
    TrainingCheck,
    training_parts,
)
from detector.engine.schedules import Phase, end_to_end, four_step
from detector.engine.state import BatchStream
from detector.engine.validation import PeriodicEvaluation

RPN_ONLY = Phase(name="rpn", iterations=4, train_modules=("backbone", "rpn_head"),
                 losses=("loss_rpn_cls",), model="rpn")
WHOLE = Phase(name="end_to_end", iterations=4, train_modules=("backbone", "rpn_head", "roi_head"),
              losses=("loss_cls",))


# ---------------------------------------------------------------------------- position
def test_position_advances_and_moves_to_the_next_phase():
    position = TrainingPosition()
    for _ in range(3):
        position.advance()
    position.phase_begun = True
    assert (position.iteration, position.phase_index, position.phase_iter) == (3, 0, 3)
    position.next_phase()
    position.advance()
    assert (position.iteration, position.phase_index, position.phase_iter) == (4, 1, 1)
    assert not position.phase_begun


def test_position_state_dict_round_trips():
    position = TrainingPosition(iteration=7, phase_index=2, phase_iter=1, phase_begun=True,
                                skipped_steps=3)
    state = position.state_dict()
    assert state == {"iteration": 7, "phase_index": 2, "phase_iter": 1, "phase_begun": True,
                     "skipped_steps": 3}
    other = TrainingPosition()
    other.load_state_dict(state)
    assert other == position
    state["iteration"] = 99  # a copy: changing it does not move the position
    assert position.iteration == 7


# ---------------------------------------------------------------------------- cadence
def test_every_fires_on_multiples_and_never_for_period_zero():
    assert [n for n in range(1, 11) if Every(3)(n)] == [3, 6, 9]
    assert [n for n in range(1, 4) if Every(1)(n)] == [1, 2, 3]
    assert not any(Every(0)(n) for n in range(1, 20))
    assert not any(Every(-2)(n) for n in range(1, 20))


def _evaluation(loader=(), period=2):
    return PeriodicEvaluation(loader=loader, period=period, device=torch.device("cpu"),
                              precision="fp32", progress=False, logger=None,
                              stop_signal=StopSignal())


def test_periodic_evaluation_fires_every_period_in_evaluable_phases_only():
    evaluation = _evaluation(period=2)
    assert [i for i in range(1, 7) if evaluation.due(WHOLE, i)] == [2, 4, 6]
    assert not any(evaluation.due(RPN_ONLY, i) for i in range(1, 7))
    assert not any(_evaluation(period=0).due(WHOLE, i) for i in range(1, 7))
    assert not any(_evaluation(loader=None).due(WHOLE, i) for i in range(1, 7))
    steps = four_step(rpn_iterations=1, fast_rcnn_iterations=1, rpn_finetune_iterations=1,
                      fast_rcnn_finetune_iterations=1)
    assert [p.evaluable for p in steps] == [False, False, True, True]


def test_final_evaluation_is_due_once_per_iteration():
    evaluation = _evaluation(period=0)
    assert evaluation.final_due(WHOLE, 4) and not evaluation.final_due(RPN_ONLY, 4)
    evaluation.load_state_dict({"last_metrics": {"AP": 0.5}, "last_eval_iteration": 4})
    assert not evaluation.final_due(WHOLE, 4) and evaluation.final_due(WHOLE, 5)
    assert not _evaluation(loader=None).final_due(WHOLE, 4)
    assert evaluation.state_dict() == {"last_metrics": {"AP": 0.5}, "last_eval_iteration": 4}


# ---------------------------------------------------------------------------- log window
def test_log_window_averages_the_counted_steps():
    window = LogWindow()
    window.add({"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(4.0)}, torch.tensor(2.0))
    window.add(None, torch.tensor(float("nan")))  # a skipped step: not counted
    window.add({"loss_a": torch.tensor(3.0), "loss_b": torch.tensor(0.0)}, torch.tensor(6.0))
    assert window.count == 2
    seconds, losses, norms = window.summary()
    assert losses == {"loss_a": 2.0, "loss_b": 2.0}
    assert norms == (4.0, 6.0) and seconds >= 0
    window.reset()
    assert window.count == 0 and window.losses == {} and window.norms == []


def test_mean_max_ignores_non_finite_norms():
    assert mean_max([torch.tensor(2.0), torch.tensor(float("inf")), torch.tensor(5.0)]) == (
        3.5, 5.0)
    assert mean_max([torch.tensor(float("inf"))]) is None


# ---------------------------------------------------------------------------- options
def test_step_options_refuse_an_unknown_nonfinite_mode():
    with pytest.raises(ValueError, match="on_nonfinite must be 'stop' or 'skip'"):
        StepOptions(on_nonfinite="ignore")
    assert Cadence().log_period == 20 and StepOptions().precision == "fp32"


# ---------------------------------------------------------------------------- phase optimiser
def _optimization() -> PhaseOptimizer:
    return PhaseOptimizer(
        optimizer=functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        lr_lambda=lambda total_iters: (lambda it: 1.0 - it / total_iters), weight_decay=0.0,
        scaler=torch.amp.GradScaler("cpu", enabled=False))


def _one_step(optimization: PhaseOptimizer, model: nn.Module) -> None:
    optimization.optimizer.zero_grad()
    model(torch.ones(1, 2)).sum().backward()
    optimization.optimizer.step()
    optimization.step_scheduler()


def test_phase_optimizer_starts_fresh_or_from_the_resumed_state():
    optimization = _optimization()
    assert optimization.state_dict()["optimizer"] is None  # no phase started yet
    model = nn.Linear(2, 1)
    optimization.start(model, iterations=4)
    assert optimization.lr == pytest.approx(0.1)
    _one_step(optimization, model)
    assert optimization.lr == pytest.approx(0.075)  # 0.1 * (1 - 1/4)
    state = optimization.state_dict()
    resumed = _optimization()
    resumed.load_state_dict(state)
    resumed.start(model, iterations=4)
    assert resumed.lr == pytest.approx(0.075)
    buffers = [s["momentum_buffer"] for s in resumed.optimizer.state_dict()["state"].values()]
    assert buffers and all(torch.equal(a, b["momentum_buffer"]) for a, b in zip(
        buffers, state["optimizer"]["state"].values(), strict=True))
    resumed.start(model, iterations=4)  # the next phase: fresh again
    assert resumed.lr == pytest.approx(0.1)


# ---------------------------------------------------------------------------- checkpointer
class Remembered:
    """A stand-in for ``PeriodicEvaluation``'s state."""

    def __init__(self) -> None:
        self.state = {"last_metrics": None, "last_eval_iteration": None}

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = {k: state[k] for k in self.state}


@dataclasses.dataclass
class Run:
    """A ``Checkpointer`` over the trainer's parts (``training_parts``), and those parts."""

    checkpointer: Checkpointer
    position: TrainingPosition
    models: dict
    optimization: PhaseOptimizer
    evaluation: Remembered
    divergence: DivergenceGuard
    stream: BatchStream

    def save(self):
        return self.checkpointer.save()


def _run(tmp_path, *, period=3, keep=2, phases=None, seed=0, more=None) -> Run:
    """``more``: parts besides the trainer's (e.g. an EMA of the weights)."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(list(range(6)), batch_size=2)
    phases = phases or end_to_end(iterations=8)
    position, models = TrainingPosition(), {"main": nn.Linear(2, 1), "rpn": None}
    optimization, stream = _optimization(), BatchStream(loader)
    evaluation, divergence = Remembered(), DivergenceGuard()
    parts = training_parts(phases=phases, position=position, models=models,
                           optimization=optimization, evaluation=evaluation,
                           divergence=divergence, stream=stream)
    checkpointer = Checkpointer(
        directory=tmp_path / "checkpoints", period=period, keep=keep,
        extra={"class_names": ["a", "b"]}, phases=phases, position=position,
        parts={**parts, **(more or {})},
        check=TrainingCheck(phases=phases, model=models["main"], optimization=optimization))
    return Run(checkpointer, position, models, optimization, evaluation, divergence, stream)


def test_checkpointer_fires_every_period_and_at_the_end(tmp_path):
    run = _run(tmp_path, period=3)
    checkpointer = run.checkpointer
    assert [i for i in range(1, 9) if checkpointer.due(i)] == [3, 6]
    assert not any(_run(tmp_path, period=0).checkpointer.due(i) for i in range(1, 9))
    run.position.iteration = 6
    checkpointer.save()
    checkpointer.save_unless_saved()  # already written at iteration 6: not again
    run.position.iteration = 8
    checkpointer.save_at_end()
    assert [p.name for p in list_periodic_checkpoints(tmp_path / "checkpoints")] == [
        "iter_0000006.pth", "iter_0000008.pth"]
    assert checkpointer.last.name == "iter_0000008.pth"
    off = _run(tmp_path / "off", period=0)
    off.position.iteration = 8
    off.checkpointer.save_at_end()  # periodic checkpoints off: no final one either
    assert off.checkpointer.last is None and not (tmp_path / "off").exists()


def _advanced(tmp_path, **options) -> Run:
    """A run after one optimiser step, at iteration 5 with a last evaluation, a divergence
    reference and one batch taken."""
    source = _run(tmp_path, **options)
    source.optimization.start(source.models["main"], iterations=8)
    _one_step(source.optimization, source.models["main"])
    source.position.load_state_dict({"iteration": 5, "phase_index": 0, "phase_iter": 5,
                                     "phase_begun": True, "skipped_steps": 1})
    source.evaluation.state = {"last_metrics": {"AP": 0.25}, "last_eval_iteration": 4}
    source.divergence.load_state_dict({"reference": 2.5, "strikes": 1})
    next(source.stream)
    return source


def test_checkpointer_round_trip_puts_every_part_back(tmp_path):
    source = _advanced(tmp_path)
    path = source.save()
    state = load_checkpoint(path)
    assert state["iteration"] == 5 and state["class_names"] == ["a", "b"]
    assert state["trainer"]["phase_iter"] == 5 and state["trainer"]["phases"] == ["end_to_end"]
    assert state["data"]["position"] == 1 and state["rpn_model"] is None
    # format 1's keys, each part's where it always was, and the layout's version
    assert set(state) == {"class_names", "format", "model", "rpn_model", "optimizer",
                          "scheduler", "scaler", "iteration", "trainer", "data", "rng"}
    assert state["format"] == CHECKPOINT_FORMAT == 2

    target = _run(tmp_path, seed=1)
    target.checkpointer.resume(path)
    _assert_resumed(target, source)


def _assert_resumed(target: Run, source: Run) -> None:
    assert target.position == source.position and target.checkpointer.saved_iteration == 5
    assert target.evaluation.state == source.evaluation.state
    assert target.divergence.state_dict() == {"reference": 2.5, "strikes": 1}
    assert target.stream.state_dict() == source.stream.state_dict()
    for key, value in source.models["main"].state_dict().items():
        assert torch.equal(target.models["main"].state_dict()[key], value), key
    target.optimization.start(target.models["main"], iterations=8)
    assert math.isclose(target.optimization.lr, source.optimization.lr)


def test_a_checkpoint_written_before_the_format_version_still_resumes(tmp_path):
    """Format 1 (no "format" key, the same keys otherwise) is what every older checkpoint is."""
    source = _advanced(tmp_path)
    state = source.checkpointer.state_dict()
    del state["format"]
    target = _run(tmp_path, seed=1)
    target.checkpointer.resume(state)
    _assert_resumed(target, source)


@pytest.mark.parametrize(("version", "error", "message"), [
    (3, CheckpointMismatchError, r"checkpoint format 3, this version of detector reads formats "
                                 r"1 to 2"),
    (10**400, CheckpointMismatchError, "format a number of about 401 digits"),
    ("2", CheckpointError, "format is '2', not a checkpoint format number"),
    (True, CheckpointError, "format is True, not a checkpoint format number"),
    (0, CheckpointError, "format is 0, not a checkpoint format number"),
])
def test_an_unknown_format_is_refused_in_one_line_before_anything_changes(
        tmp_path, version, error, message):
    state = _advanced(tmp_path).checkpointer.state_dict()
    state["format"] = version
    torch.save(state, tmp_path / "newer.pth")
    target = _run(tmp_path, seed=1)
    before = {k: v.clone() for k, v in target.models["main"].state_dict().items()}
    with pytest.raises(error, match=message) as refused:
        target.checkpointer.resume(tmp_path / "newer.pth")
    assert len(str(refused.value).splitlines()) == 1 and "newer.pth" in str(refused.value)
    assert target.position == TrainingPosition() and target.checkpointer.saved_iteration is None
    for key, value in before.items():
        assert torch.equal(target.models["main"].state_dict()[key], value), key


def test_one_more_part_is_one_more_key(tmp_path):
    """A new stateful part (an EMA of the weights, say) is saved under its name and given its
    state back on resume; a checkpoint without it gives it None."""
    ema = Remembered()
    ema.state = {"last_metrics": {"decay": 0.5}, "last_eval_iteration": 3}
    source = _advanced(tmp_path, more={"ema": ema})
    path = source.save()
    assert load_checkpoint(path)["ema"] == ema.state
    target_ema = Remembered()
    target = _run(tmp_path, seed=1, more={"ema": target_ema})
    target.checkpointer.resume(path)
    assert target_ema.state == ema.state
    received = []
    ema_less = _run(tmp_path, seed=1, more={"ema": _Recorder(received)})
    ema_less.checkpointer.resume(_advanced(tmp_path).checkpointer.state_dict())
    assert received == [None]


class _Recorder:
    """A part that records what resume gives it."""

    def __init__(self, received: list) -> None:
        self.received = received

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        self.received.append(state)


def test_a_finished_run_saves_no_optimizer(tmp_path):
    run = _run(tmp_path)
    run.optimization.start(run.models["main"], iterations=8)
    assert run.checkpointer.state_dict()["optimizer"] is not None
    run.position.next_phase()  # past the last phase
    state = run.checkpointer.state_dict()
    assert state["optimizer"] is None and state["scheduler"] is None


def test_checkpointer_refuses_another_schedule(tmp_path):
    path = _run(tmp_path).save()
    other = _run(tmp_path, phases=four_step(
        rpn_iterations=1, fast_rcnn_iterations=1, rpn_finetune_iterations=1,
        fast_rcnn_finetune_iterations=1))
    with pytest.raises(ValueError, match="same schedule"):
        other.checkpointer.resume(path)
