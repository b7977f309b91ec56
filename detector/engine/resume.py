"""The trainer's checkpoints: its whole state as one dict, periodic writes, and resuming from one.

A checkpoint holds where the run is (``TrainingPosition``: phase, step in it, global iteration,
whether the phase's start action ran, skipped steps), the main model and the 4-step "rpn" model,
the optimiser, LR scheduler and grad scaler of the current phase (``PhaseOptimizer``), the last
evaluation (``PeriodicEvaluation``), the best one and the patience count (``best``: absent in
older checkpoints), the average of the weights (``ema``, with ``train.ema_decay``: its weights
and update count; a checkpoint without one resumes with a fresh average), the batch stream's (epoch, position) and the random generators of every
rank, each written by one part (``training_parts``), and the version of its layout
(``"format"``: ``CHECKPOINT_FORMAT``). ``Checkpointer.resume`` checks all of it
(``resume_checks``: a file from anywhere is data to check, never trusted) and then gives each
part its state back (exactly, on the CPU).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from detector.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    save_periodic_checkpoint,
)
from detector.engine import distributed as dist
from detector.engine.checked_values import Where, show
from detector.engine.ema import ModelEMA
from detector.engine.optim import PhaseOptimizer, check_optimization
from detector.engine.position import Every, TrainingPosition
from detector.engine.resume_checks import check_resume_state
from detector.engine.schedules import Phase
from detector.engine.state import BatchStream, capture_rng_state, restore_rng_state
from detector.run_files import drop_records_after

__all__ = ["CHECKPOINT_FORMAT", "Checkpointer", "Stateful", "TrainingCheck", "checkpoint_format",
           "training_parts"]

log = logging.getLogger("detector.train")

# The layout version written into every checkpoint as "format". 1: the checkpoints written before
# the version was (the same keys: they load as they are); a newer one is refused.
CHECKPOINT_FORMAT = 2


class Stateful(Protocol):
    """A part of the training state (e.g. ``PeriodicEvaluation``, a model)."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def checkpoint_format(state, source: str) -> int:
    """The layout version of a loaded checkpoint: its ``"format"``, 1 without one (written
    before the version was). Raises ``CheckpointMismatchError`` for a version newer than
    ``CHECKPOINT_FORMAT`` and ``CheckpointError`` for a value that is no version at all."""
    if not isinstance(state, dict) or "format" not in state:
        return 1
    version = state["format"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{source}: format is {show(version)}, not a checkpoint format "
                              f"number (1 to {CHECKPOINT_FORMAT})")
    if version > CHECKPOINT_FORMAT:
        raise CheckpointMismatchError(
            f"{source} is of checkpoint format {show(version)}, this version of detector reads "
            f"formats 1 to {CHECKPOINT_FORMAT}: resume it with the version that wrote it")
    return version


class Checkpointer:
    """Writes ``checkpoints/iter_XXXXXXX.pth`` every ``period`` iterations (and when asked: at the
    end, when stopping, before a non-finite step), and resumes a run from one.

    A checkpoint is ``{**extra, "format": CHECKPOINT_FORMAT, name: part.state_dict(), ...}``
    over ``parts``; a part with ``keys`` (format 1's layout, e.g. the optimiser's ``optimizer``,
    ``scheduler`` and ``scaler``) puts those keys at the top level instead. Resume gives each
    part, in the order of ``parts``, ``checkpoint.get(name)`` (a part with ``keys``: the whole
    checkpoint), after ``check``; a part with ``capture()`` can be saved as it was earlier
    (``state_dict(cursor=)``) and a part with ``close()`` is closed when restoring fails.

    Args:
        directory (Path): where the periodic checkpoints go (the newest ``keep`` are kept).
        period (int): iterations between checkpoints; 0: none but the ones asked for.
        keep (int): how many periodic checkpoints to keep.
        extra (dict, optional): plain values stored in every checkpoint (e.g. ``config``,
            ``class_names``, ``label_to_cat_id``).
        phases (list[Phase]): the schedule (for the log line of a resume).
        position (TrainingPosition): where the run is (names the checkpoints).
        parts (dict[str, Stateful]): the state, by checkpoint key (``training_parts``).
        check (Callable, optional): ``(checkpoint, source, extra) -> None``: refuses, in one
            line, a loaded checkpoint this run cannot continue from (``TrainingCheck``), before
            any part is restored; ``source`` is "checkpoint PATH".
        metrics_path (Path, optional): ``metrics.jsonl``; resume drops its records after the
            checkpoint's iteration.
    """

    def __init__(self, *, directory: Path, period: int, keep: int, extra: dict | None,
                 phases: list[Phase], position: TrainingPosition, parts: dict[str, Stateful],
                 check: Callable[[dict, str, dict], None] | None = None,
                 metrics_path: Path | None = None) -> None:
        self.directory, self.every, self.keep = Path(directory), Every(int(period)), int(keep)
        self.extra = dict(extra or {})
        self.phases, self.position, self.parts = phases, position, dict(parts)
        self.check, self.metrics_path = check, metrics_path
        self.last: Path | None = None  # the newest checkpoint written
        self.saved_iteration: int | None = None

    def due(self, iteration: int) -> bool:
        """Whether a periodic checkpoint falls after ``iteration``."""
        return self.every(iteration)

    def save_unless_saved(self) -> None:
        """Write the current state unless it was written (or resumed from) at this iteration."""
        if self.saved_iteration != self.position.iteration:
            self.save()

    def save_at_end(self) -> None:
        """The end of training: the final state, if periodic checkpoints are on."""
        if self.every.period > 0:
            self.save_unless_saved()

    def capture(self) -> dict:
        """What the parts with ``capture()`` are now (e.g. the random generators and the data
        position before a step), to be saved later by ``state_dict(cursor=)``."""
        return {name: part.capture() for name, part in self.parts.items()
                if _has(part, "capture")}

    def state_dict(self, *, cursor: dict | None = None) -> dict:
        """Everything needed to continue exactly from here (a collective under torchrun).

        Args:
            cursor (dict, optional): from ``capture`` (the state before a failed step); default:
                the current state of every part.
        """
        state = {**self.extra, "format": CHECKPOINT_FORMAT}
        for name, part in self.parts.items():
            value = (part.state_dict(captured=cursor[name]) if cursor and name in cursor
                     else part.state_dict())
            if _has(part, "keys"):
                state.update(value)
            else:
                state[name] = value
        return state

    def save(self, *, cursor: dict | None = None) -> Path | None:
        """Write ``checkpoints/iter_XXXXXXX.pth`` (rank 0; every rank must call it)."""
        state = self.state_dict(cursor=cursor)
        self.saved_iteration = self.position.iteration
        if not dist.is_main():
            return None
        self.last = save_periodic_checkpoint(self.directory, state,
                                             iteration=self.position.iteration,
                                             keep=max(1, self.keep))
        log.info("checkpoint: %s", self.last)
        return self.last

    def resume(self, checkpoint: str | Path | dict) -> None:
        """Continue from a checkpoint written by ``save`` (a path or the loaded dict); call before
        training. Every value is checked first (``checkpoint_format``, ``check``); a refused
        checkpoint changes nothing, and a failure while restoring leaves no data loader workers
        behind."""
        state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        source = "the checkpoint" if isinstance(checkpoint, dict) else f"checkpoint {checkpoint}"
        checkpoint_format(state, source)
        if self.check is not None:
            self.check(state, source, self.extra)
        try:
            for name, part in self.parts.items():
                part.load_state_dict(state if _has(part, "keys") else state.get(name))
        except BaseException:
            for part in self.parts.values():
                if _has(part, "close"):
                    part.close()  # e.g. the loader's worker processes exit now, not at exit
            raise
        self.saved_iteration = self.position.iteration
        if dist.is_main() and self.metrics_path is not None and self.metrics_path.is_file():
            drop_records_after(self.metrics_path, self.position.iteration)
        p = self.position
        log.info("resumed at iteration %d/%d (phase %d/%d, step %d)", p.iteration,
                 sum(ph.iterations for ph in self.phases), p.phase_index + 1, len(self.phases),
                 p.phase_iter)


def _has(part, name: str) -> bool:
    """Whether ``part``'s class defines ``name`` (looked up on the class: a module's attribute
    lookup would also find a submodule or parameter of that name)."""
    return getattr(type(part), name, None) is not None


class TrainingCheck:
    """Refuses a checkpoint this run cannot continue from (``resume_checks`` and
    ``optim.check_optimization``: another schedule, other classes or class order, another
    model, a value out of its range) with one line.

    Args:
        phases (list[Phase]): this run's schedule.
        model (nn.Module): this run's main model (the "rpn" model is a copy of it).
        optimization (PhaseOptimizer): makes a throwaway optimiser to check the saved state.
        phase_groups (Callable, optional): ``Phase`` -> the param groups its optimiser will
            get (``param_groups``), to check a checkpoint's optimiser state before resuming;
            None: that state is checked when the phase starts.
        ema (nn.Module, optional): this run's weight average (``ModelEMA.module``): the
            checkpoint's ``ema`` weights must fit it; None (no average): not checked.
    """

    def __init__(self, *, phases: list[Phase], model: nn.Module, optimization: PhaseOptimizer,
                 phase_groups: Callable[[Phase], list[dict]] | None = None,
                 ema: nn.Module | None = None) -> None:
        self.phases, self.model, self.optimization = phases, model, optimization
        self.phase_groups, self.ema = phase_groups, ema

    def __call__(self, state, source: str, extra: dict) -> None:
        """``extra``: this run's (``class_names``: its classes, in order; absent: not checked)."""
        position = check_resume_state(state, source=source, phases=self.phases,
                                      class_names=extra.get("class_names"), model=self.model,
                                      ema=self.ema)
        index = position["phase_index"]
        phase = self.phases[index] if index < len(self.phases) else None
        groups = (self.phase_groups(phase) if phase is not None and self.phase_groups is not None
                  else None)
        check_optimization(state, Where(source), optimization=self.optimization, groups=groups,
                           iterations=phase.iterations if phase is not None else 0)


def training_parts(*, phases: list[Phase], position: TrainingPosition,
                   models: dict[str, nn.Module | None], optimization: PhaseOptimizer,
                   evaluation: Stateful, divergence: Stateful, stream: BatchStream,
                   best: Stateful | None = None,
                   ema: ModelEMA | None = None) -> dict[str, Stateful]:
    """The trainer's state as ``Checkpointer`` parts, in the order resume restores them and with
    the keys of format 1 (so that older checkpoints load).

    Args:
        phases (list[Phase]): the schedule. position (TrainingPosition): where the run is.
        models (dict): ``{"main": model, "rpn": the 4-step step-1 model or None}``; resume may
            put a new "rpn" model in.
        optimization (PhaseOptimizer): optimiser, scheduler and scaler.
        evaluation (Stateful): the last evaluation (``PeriodicEvaluation``).
        divergence (Stateful): the divergence guard (``DivergenceGuard``: its reference loss).
        stream (BatchStream): the training batches.
        best (Stateful, optional): the best evaluation so far and the patience count
            (``best.BestTracker``; a checkpoint without it starts afresh).
        ema (ModelEMA, optional): the average of the main model's weights (``ema``; restored
            after the model: a checkpoint without it restarts the average at the resumed
            weights, with a warning).
    """
    parts = {
        "model": models["main"],
        "rpn_model": _StepOneModel(models),
        "optimization": _Optimization(optimization, position, phases),
        "trainer": _TrainerRecord(position, phases, evaluation, divergence),
        "data": _DataPosition(stream),
        "rng": _RandomStates(),  # after "data": opening a loader may draw
    }
    if best is not None:
        parts["best"] = best
    if ema is not None:
        parts["ema"] = _Average(ema, models)
    return parts


class _Average:
    """``ema``: the weight average (``ModelEMA.state_dict``); a checkpoint without one (written
    without ``train.ema_decay``, or before it existed) restarts it at the resumed main model."""

    def __init__(self, ema: ModelEMA, models: dict[str, nn.Module | None]) -> None:
        self.ema, self.models = ema, models

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            log.warning("the checkpoint holds no average of the weights (written without "
                        "train.ema_decay): the average starts afresh from the resumed weights")
            self.ema.reset(self.models["main"])
            return
        if state.get("decay") is not None and float(state["decay"]) != self.ema.decay:
            log.warning("the checkpoint's weight average used decay %s, this run %s: the "
                        "average continues with %s", state["decay"], self.ema.decay,
                        self.ema.decay)
        self.ema.load_state_dict(state)


class _StepOneModel:
    """``rpn_model``: the 4-step step-1 model's weights, or None when there is none."""

    def __init__(self, models: dict[str, nn.Module | None]) -> None:
        self.models = models

    def state_dict(self) -> dict | None:
        rpn = self.models["rpn"]
        return rpn.state_dict() if rpn is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if state is not None:  # a copy of the main model (its structure) with these weights
            self.models["rpn"] = copy.deepcopy(self.models["main"])
            self.models["rpn"].load_state_dict(state)


class _Optimization:
    """``optimizer``, ``scheduler`` (None once every phase is done) and ``scaler``."""

    keys = ("optimizer", "scheduler", "scaler")

    def __init__(self, optimization: PhaseOptimizer, position: TrainingPosition,
                 phases: list[Phase]) -> None:
        self.optimization, self.position, self.phases = optimization, position, phases

    def state_dict(self) -> dict:
        state = self.optimization.state_dict()
        if self.position.phase_index >= len(self.phases):  # all done: no phase to continue
            state.update(optimizer=None, scheduler=None)
        return state

    def load_state_dict(self, checkpoint: dict) -> None:
        self.optimization.load_state_dict(checkpoint)


class _TrainerRecord:
    """``iteration`` and ``trainer``: the rest of the position, the schedule's phase names and
    lengths, the last evaluation and the divergence guard's reference."""

    keys = ("iteration", "trainer")
    POSITION = ("phase_index", "phase_iter", "phase_begun", "skipped_steps")

    def __init__(self, position: TrainingPosition, phases: list[Phase], evaluation: Stateful,
                 divergence: Stateful) -> None:
        self.position, self.phases = position, phases
        self.evaluation, self.divergence = evaluation, divergence

    def state_dict(self) -> dict:
        position = self.position.state_dict()
        return {"iteration": position.pop("iteration"), "trainer": {
            **position, "phases": [p.name for p in self.phases],
            "phase_iterations": [p.iterations for p in self.phases],
            **self.evaluation.state_dict(), "divergence": self.divergence.state_dict()}}

    def load_state_dict(self, checkpoint: dict) -> None:
        trainer = checkpoint["trainer"]
        self.position.load_state_dict({"iteration": checkpoint["iteration"],
                                       **{k: trainer[k] for k in self.POSITION}})
        self.evaluation.load_state_dict(trainer)
        self.divergence.load_state_dict(trainer.get("divergence"))  # older: none


class _DataPosition:
    """``data``: the batch stream's (epoch, position); restoring starts the stream's loader."""

    def __init__(self, stream: BatchStream) -> None:
        self.stream = stream

    def capture(self) -> dict:
        return self.stream.state_dict()

    def state_dict(self, captured: dict | None = None) -> dict:
        return captured if captured is not None else self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self.stream.start()  # before restoring the generators: opening a loader may draw

    def close(self) -> None:
        self.stream.close()


class _RandomStates:
    """``rng``: the random generators of every rank (``capture_rng_state``, gathered: a
    collective under torchrun); resume restores this rank's (rank modulo their number)."""

    def capture(self) -> dict:
        return capture_rng_state()

    def state_dict(self, captured: dict | None = None) -> list[dict]:
        return dist.all_gather_objects(captured if captured is not None else capture_rng_state())

    def load_state_dict(self, rngs: list[dict]) -> None:
        if len(rngs) != dist.get_world_size():
            log.warning("the checkpoint holds the random state of %d processes, this run has %d",
                        len(rngs), dist.get_world_size())
        restore_rng_state(rngs[dist.get_rank() % len(rngs)])
