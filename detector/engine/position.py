"""Where a training run is, and the options that say how often its periodic work happens.

``TrainingPosition`` is the part of a checkpoint that says where to continue: the phase, the step
inside it, the global iteration, whether the phase's start action ran, and the skipped steps.
``Every`` is the one cadence rule ("every N, 0 = never"); ``Cadence`` and ``StepOptions`` group the
trainer's options (how often it logs, evaluates and checkpoints; how one step runs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from detector.errors import OptionError
from detector.runtime import check_layout_setting

__all__ = ["Cadence", "Every", "StepOptions", "TrainingPosition"]


@dataclass
class TrainingPosition:
    """Where a run is (what resume restores besides weights, optimiser and random state).

    Args:
        iteration (int): steps done over all phases (skipped ones included).
        phase_index (int): index of the current phase in the schedule.
        phase_iter (int): steps done in the current phase.
        phase_begun (bool): whether the current phase's start action (e.g. copying the model)
            has run.
        skipped_steps (int): non-finite steps skipped so far (``on_nonfinite="skip"``).
    """

    iteration: int = 0
    phase_index: int = 0
    phase_iter: int = 0
    phase_begun: bool = False
    skipped_steps: int = 0

    def advance(self) -> None:
        """One step done."""
        self.iteration += 1
        self.phase_iter += 1

    def next_phase(self) -> None:
        """The current phase is done: the next one begins at its step 0."""
        self.phase_index, self.phase_iter, self.phase_begun = self.phase_index + 1, 0, False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.phase_index, self.phase_iter = int(state["phase_index"]), int(state["phase_iter"])
        self.phase_begun = bool(state["phase_begun"])
        self.skipped_steps = int(state["skipped_steps"])


@dataclass(frozen=True)
class Every:
    """Fires on every multiple of ``period`` (a count of 1, 2, ... steps); a period of 0 (or
    less) never fires."""

    period: int

    def __call__(self, count: int) -> bool:
        return self.period > 0 and count % self.period == 0


@dataclass(frozen=True)
class Cadence:
    """How often the trainer does its periodic work.

    Args:
        log_period (int): phase iterations between log lines (and at the end of each phase).
        eval_period (int): phase iterations between evaluations (in the phases whose model is
            a whole detector); 0 = evaluate only at the end.
        checkpoint_period (int): write ``checkpoints/iter_XXXXXXX.pth`` every this many
            iterations and at the end (0: only when stopping early).
        keep_checkpoints (int): how many periodic checkpoints to keep (the newest).
        histogram_period (int): TensorBoard histograms of each block's weights and gradients
            every this many iterations (0: never). Each log point also logs the per-block
            gradient-to-weight norm ratios (``detector.engine.monitor``).
        eval_metrics (tuple of str): ``voc07`` / ``voc`` add the VOC mAP to each evaluation's
            COCO metrics (``PeriodicEvaluation``).
    """

    log_period: int = 20
    eval_period: int = 0
    checkpoint_period: int = 0
    keep_checkpoints: int = 3
    histogram_period: int = 0
    eval_metrics: tuple[str, ...] = ("coco",)


@dataclass(frozen=True)
class StepOptions:
    """How one training step runs.

    Args:
        precision (str): "fp32", "bf16" or "fp16" (autocast on CUDA; fp16 with a GradScaler).
        channels_last (bool | str): the memory layout of the model and images: True
            (channels-last), False (standard NCHW) or "auto" (``detector.runtime.resolve_layout``:
            the mixed layout on a CPU in fp32, channels-last otherwise).
        clip_grad_norm (float, optional): max total gradient norm.
        on_nonfinite (str): "stop" (write the last good state, raise ``NonFiniteError``) or
            "skip" (drop the step, count it) when a loss term or the gradient norm is NaN/Inf.
        max_consecutive_skips (int): under "skip", stop anyway after this many in a row.
    """

    precision: str = "fp32"
    channels_last: bool | str = False
    clip_grad_norm: float | None = None
    on_nonfinite: str = "stop"
    max_consecutive_skips: int = 20

    def __post_init__(self) -> None:
        """Raises ``OptionError`` for an unknown ``on_nonfinite`` or ``channels_last``."""
        if self.on_nonfinite not in ("stop", "skip"):
            raise OptionError("on_nonfinite", f"on_nonfinite must be 'stop' or 'skip', got "
                                              f"{self.on_nonfinite!r}")
        check_layout_setting(self.channels_last)
