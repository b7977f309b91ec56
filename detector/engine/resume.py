"""The trainer's checkpoints: its whole state as a dict, periodic writes, and resuming from one.

A mixin of ``Trainer``: where a run is, is ``(phase_index, phase_iter)`` plus whether the phase's
start action ran; a checkpoint holds that, the main model and the 4-step "rpn" model, the optimiser,
LR scheduler and grad scaler of the current phase, the random generators of every rank and the
batch stream's (epoch, position).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from detector.checkpoint import (
    CheckpointMismatchError,
    load_checkpoint,
    save_periodic_checkpoint,
)
from detector.engine import distributed as dist
from detector.engine.state import capture_rng_state, drop_records_after, restore_rng_state

__all__ = ["CheckpointingMixin"]

log = logging.getLogger("detector.train")


class CheckpointingMixin:
    """``state_dict`` / ``save_checkpoint`` / ``resume`` over the attributes ``Trainer`` sets."""

    def state_dict(self, *, cursor: dict | None = None) -> dict:
        """Everything needed to continue exactly from here (a collective under torchrun).

        Args:
            cursor (dict, optional): ``{"rng", "data"}`` captured earlier (the state before a
                failed step); default: the current ones.
        """
        rng = cursor["rng"] if cursor else capture_rng_state()
        in_phase = self.phase_index < len(self.phases) and self._optimizer is not None
        rpn = self.models["rpn"]
        return {
            **self.checkpoint_extra,
            "model": self.models["main"].state_dict(),
            "rpn_model": rpn.state_dict() if rpn is not None else None,
            "optimizer": self._optimizer.state_dict() if in_phase else None,
            "scheduler": self._scheduler.state_dict() if in_phase else None,
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "trainer": {
                "phase_index": self.phase_index, "phase_iter": self.phase_iter,
                "phase_begun": self.phase_begun, "phases": [p.name for p in self.phases],
                "phase_iterations": [p.iterations for p in self.phases],
                "skipped_steps": self.skipped_steps, "last_metrics": self.last_metrics,
                "last_eval_iteration": self._last_eval_iteration,
                "divergence": self.divergence.state_dict(),
            },
            "data": cursor["data"] if cursor else self.stream.state_dict(),
            "rng": dist.all_gather_objects(rng),
        }

    def save_checkpoint(self, *, cursor: dict | None = None) -> Path | None:
        """Write ``checkpoints/iter_XXXXXXX.pth`` (rank 0; every rank must call it)."""
        state = self.state_dict(cursor=cursor)
        self._saved_iteration = self.iteration
        if not dist.is_main():
            return None
        self.last_checkpoint = save_periodic_checkpoint(
            self.output_dir / "checkpoints", state, iteration=self.iteration,
            keep=max(1, self.keep_checkpoints))
        log.info("checkpoint: %s", self.last_checkpoint)
        return self.last_checkpoint

    def resume(self, checkpoint: str | Path | dict) -> None:
        """Continue from a checkpoint written by ``save_checkpoint`` (a path or the loaded dict);
        call before ``train``."""
        state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        saved = state["trainer"]
        source = "the checkpoint" if isinstance(checkpoint, dict) else f"checkpoint {checkpoint}"
        names = [p.name for p in self.phases]
        if saved["phases"] != names:
            raise CheckpointMismatchError(f"{source} is of a run with phases {saved['phases']}, "
                                          f"this run has {names}: resume with the same schedule")
        classes, ours = state.get("class_names"), self.checkpoint_extra.get("class_names")
        if classes is not None and ours is not None and list(classes) != list(ours):
            raise CheckpointMismatchError(f"{source} is for the classes {list(classes)}, this "
                                          f"run's dataset has {list(ours)}: resume it with its "
                                          f"own dataset")
        if saved["phase_iterations"] != [p.iterations for p in self.phases]:
            log.warning("resuming with different phase lengths (%s, checkpoint %s): the LR "
                        "schedule differs from the interrupted run's",
                        [p.iterations for p in self.phases], saved["phase_iterations"])
        self.models["main"].load_state_dict(state["model"])
        if state["rpn_model"] is not None:
            self.models["rpn"] = copy.deepcopy(self.models["main"])
            self.models["rpn"].load_state_dict(state["rpn_model"])
        if state["optimizer"] is not None:
            self._pending_optim = {k: state[k] for k in ("optimizer", "scheduler")}
        if state["scaler"] and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.phase_index, self.phase_iter = saved["phase_index"], saved["phase_iter"]
        self.phase_begun, self.skipped_steps = saved["phase_begun"], saved["skipped_steps"]
        self.last_metrics, self._last_eval_iteration = (saved["last_metrics"],
                                                        saved["last_eval_iteration"])
        self.divergence.load_state_dict(saved.get("divergence"))  # (older checkpoints: none)
        self._saved_iteration = self.iteration
        self.stream.load_state_dict(state["data"])
        self.stream.start()  # before restoring the generators: opening a loader may draw
        rngs, rank = state["rng"], dist.get_rank()
        if len(rngs) != dist.get_world_size():
            log.warning("the checkpoint holds the random state of %d processes, this run has %d",
                        len(rngs), dist.get_world_size())
        restore_rng_state(rngs[rank % len(rngs)])
        metrics = getattr(self.logger, "metrics_path", None)
        if dist.is_main() and metrics is not None and metrics.is_file():
            drop_records_after(metrics, self.iteration)
        log.info("resumed at iteration %d/%d (phase %d/%d, step %d)", self.iteration,
                 self.total_iterations, self.phase_index + 1, len(self.phases), self.phase_iter)
