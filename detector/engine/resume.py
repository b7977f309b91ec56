"""The trainer's checkpoints: its whole state as one dict, periodic writes, and resuming from one.

A checkpoint holds where the run is (``TrainingPosition``: phase, step in it, global iteration,
whether the phase's start action ran, skipped steps), the main model and the 4-step "rpn" model,
the optimiser, LR scheduler and grad scaler of the current phase (``PhaseOptimizer``), the last
evaluation (``PeriodicEvaluation``), the batch stream's (epoch, position) and the random generators
of every rank; ``Checkpointer.resume`` checks all of it (``resume_checks``: a file from anywhere
is data to check, never trusted) and then puts it back (exactly, on the CPU).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from torch import nn

from detector.checkpoint import load_checkpoint, save_periodic_checkpoint
from detector.engine import distributed as dist
from detector.engine.optim import PhaseOptimizer, check_optimization
from detector.engine.position import Every, TrainingPosition
from detector.engine.resume_checks import Where, check_resume_state
from detector.engine.schedules import Phase
from detector.engine.state import (
    BatchStream,
    capture_rng_state,
    drop_records_after,
    restore_rng_state,
)

__all__ = ["Checkpointer", "Stateful"]

log = logging.getLogger("detector.train")


class Stateful(Protocol):
    """A part of the training state (e.g. ``PeriodicEvaluation``)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Checkpointer:
    """Writes ``checkpoints/iter_XXXXXXX.pth`` every ``period`` iterations (and when asked: at the
    end, when stopping, before a non-finite step), and resumes a run from one.

    Args:
        directory (Path): where the periodic checkpoints go (the newest ``keep`` are kept).
        period (int): iterations between checkpoints; 0: none but the ones asked for.
        keep (int): how many periodic checkpoints to keep.
        extra (dict, optional): plain values stored in every checkpoint (e.g. ``config``,
            ``class_names``, ``label_to_cat_id``).
        phases (list[Phase]): the schedule (a checkpoint resumes only the same one).
        position (TrainingPosition): where the run is.
        models (dict): ``{"main": model, "rpn": the 4-step step-1 model or None}``; resume may
            put a new "rpn" model in.
        optimization (PhaseOptimizer): optimiser, scheduler and scaler.
        evaluation (Stateful): the last evaluation (``PeriodicEvaluation``).
        divergence (Stateful): the divergence guard (``DivergenceGuard``: its reference loss).
        stream (BatchStream): the training batches.
        metrics_path (Path, optional): ``metrics.jsonl``; resume drops its records after the
            checkpoint's iteration.
        phase_groups (Callable, optional): ``Phase`` -> the param groups its optimiser will
            get (``param_groups``), to check a checkpoint's optimiser state before resuming;
            None: that state is checked when the phase starts.
    """

    def __init__(self, *, directory: Path, period: int, keep: int, extra: dict | None,
                 phases: list[Phase], position: TrainingPosition,
                 models: dict[str, nn.Module | None], optimization: PhaseOptimizer,
                 evaluation: Stateful, divergence: Stateful, stream: BatchStream,
                 metrics_path: Path | None = None,
                 phase_groups: Callable[[Phase], list[dict]] | None = None) -> None:
        self.directory, self.every, self.keep = Path(directory), Every(int(period)), int(keep)
        self.extra = dict(extra or {})
        self.phases, self.position, self.models = phases, position, models
        self.optimization, self.evaluation, self.stream = optimization, evaluation, stream
        self.divergence = divergence
        self.metrics_path = metrics_path
        self.phase_groups = phase_groups
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

    def state_dict(self, *, cursor: dict | None = None) -> dict:
        """Everything needed to continue exactly from here (a collective under torchrun).

        Args:
            cursor (dict, optional): ``{"rng", "data"}`` captured earlier (the state before a
                failed step); default: the current ones.
        """
        rng = cursor["rng"] if cursor else capture_rng_state()
        optimization = self.optimization.state_dict()
        if self.position.phase_index >= len(self.phases):  # all done: no phase to continue
            optimization.update(optimizer=None, scheduler=None)
        position = self.position.state_dict()
        rpn = self.models["rpn"]
        return {
            **self.extra,
            "model": self.models["main"].state_dict(),
            "rpn_model": rpn.state_dict() if rpn is not None else None,
            **optimization,
            "iteration": position.pop("iteration"),
            "trainer": {
                **position, "phases": [p.name for p in self.phases],
                "phase_iterations": [p.iterations for p in self.phases],
                **self.evaluation.state_dict(),
                "divergence": self.divergence.state_dict(),
            },
            "data": cursor["data"] if cursor else self.stream.state_dict(),
            "rng": dist.all_gather_objects(rng),
        }

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
        training. Every value is checked first (``check``); a refused checkpoint changes
        nothing, and a failure while restoring leaves no data loader workers behind."""
        state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        source = "the checkpoint" if isinstance(checkpoint, dict) else f"checkpoint {checkpoint}"
        position = self.check(state, source)
        try:
            self._restore(state, position)
        except BaseException:
            self.stream.close()  # its worker processes exit now, not at interpreter exit
            raise
        if dist.is_main() and self.metrics_path is not None and self.metrics_path.is_file():
            drop_records_after(self.metrics_path, self.position.iteration)
        p = self.position
        log.info("resumed at iteration %d/%d (phase %d/%d, step %d)", p.iteration,
                 sum(ph.iterations for ph in self.phases), p.phase_index + 1, len(self.phases),
                 p.phase_iter)

    def check(self, state, source: str) -> dict:
        """Refuse a checkpoint this run cannot continue from (``resume_checks`` and
        ``optim.check_optimization``: another schedule, other classes or class order, another
        model, a value out of its range) with one line; returns its checked position."""
        position = check_resume_state(state, source=source, phases=self.phases,
                                      class_names=self.extra.get("class_names"),
                                      model=self.models["main"])
        index = position["phase_index"]
        phase = self.phases[index] if index < len(self.phases) else None
        groups = (self.phase_groups(phase) if phase is not None and self.phase_groups is not None
                  else None)
        check_optimization(state, Where(source), optimization=self.optimization, groups=groups,
                           iterations=phase.iterations if phase is not None else 0)
        return position

    def _restore(self, state: dict, position: dict) -> None:
        """Put a checked checkpoint's state back (exactly, on the CPU)."""
        self.models["main"].load_state_dict(state["model"])
        if state.get("rpn_model") is not None:
            self.models["rpn"] = copy.deepcopy(self.models["main"])
            self.models["rpn"].load_state_dict(state["rpn_model"])
        self.optimization.load_state_dict(state)
        self.position.load_state_dict(position)
        self.evaluation.load_state_dict(state["trainer"])
        self.divergence.load_state_dict(state["trainer"].get("divergence"))  # older: none
        self.saved_iteration = self.position.iteration
        self.stream.load_state_dict(state["data"])
        self.stream.start()  # before restoring the generators: opening a loader may draw
        rngs, rank = state["rng"], dist.get_rank()
        if len(rngs) != dist.get_world_size():
            log.warning("the checkpoint holds the random state of %d processes, this run has %d",
                        len(rngs), dist.get_world_size())
        restore_rng_state(rngs[rank % len(rngs)])
