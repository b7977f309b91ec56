"""The training loop: runs a list of ``Phase`` (end-to-end or 4-step) over an endless stream of
batches, with logging, periodic evaluation, resumable checkpoints, a NaN/Inf guard, a graceful
stop on SIGINT/SIGTERM, mixed precision and DistributedDataParallel.

The ``Trainer`` is made of parts, each owning one thing: ``TrainingPosition`` (where the run is),
``PhaseOptimizer`` (optimiser, LR scheduler and grad scaler of the current phase), ``LogWindow``
(the steps since the last log point), ``PeriodicEvaluation`` (when to evaluate, the last result,
the best: ``BestCheckpoint``), ``Checkpointer`` (when to write a checkpoint, what it holds,
resuming from one) and, with ``ema=``, ``ModelEMA`` (the average of the weights that is evaluated
and saved as best.pth/final.pth). The trainer runs the phases and tells the parts after each step.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detector import run_files
from detector.engine import distributed as dist
from detector.engine.best import BestCheckpoint, BestRule
from detector.engine.ema import EMAOptions, ModelEMA
from detector.engine.guard import (
    NONFINITE_HINT,
    DivergenceGuard,
    NonFiniteError,
    StopSignal,
    describe_nonfinite,
    gather_values,
    grad_norm,
    step_flags,
)
from detector.engine.logger import LogWindow, TrainLogger, memory_mb
from detector.engine.monitor import grad_weight_ratios
from detector.engine.optim import PhaseOptimizer
from detector.engine.position import Cadence, Every, StepOptions, TrainingPosition
from detector.engine.resume import Checkpointer, TrainingCheck, training_parts
from detector.engine.schedules import TAKE_FROM_RPN, Phase
from detector.engine.state import BatchStream
from detector.engine.validation import PeriodicEvaluation
from detector.runtime import apply_layout, autocast, resolve_layout, to_device

__all__ = ["Trainer"]

log = logging.getLogger("detector.train")

TARGET_KEYS = ("boxes", "labels", "box_valid")  # the Batch entries the criterion reads
HEADS = ("backbone", "rpn_head", "roi_head")


class Trainer:
    """Train a Faster R-CNN through a list of phases.

    Args:
        model (nn.Module): the ``FasterRCNN`` ("main" model).
        criterion (nn.Module): ``FasterRCNNCriterion``.
        train_loader (DataLoader): training batches (Batch dicts; under torchrun: this rank's).
        phases (list[Phase]): from ``detector.engine.schedules``.
        optimizer (Callable): param groups -> ``torch.optim.Optimizer`` (e.g. a partial SGD).
        lr_lambda (Callable): ``total_iters=`` -> per-iteration LR multiplier function.
        weight_decay (float): applied to weights, not to biases and norm parameters.
        device (torch.device): where training runs.
        output_dir (Path): run directory (metrics, ``checkpoints/``).
        val_loader (DataLoader, optional): evaluated every ``cadence.eval_period`` iterations
            and at the end (see ``PeriodicEvaluation``).
        cadence (Cadence, optional): how often to log, evaluate, checkpoint and write
            histograms (default: ``Cadence()``).
        step (StepOptions, optional): precision, channels-last, gradient clipping, what a NaN/Inf
            does (default: ``StepOptions()``).
        progress (bool): show tqdm bars.
        logger (TrainLogger, optional): default: one writing into ``output_dir`` on rank 0.
        checkpoint_extra (dict, optional): plain values stored in every checkpoint (e.g.
            ``config``, ``class_names``, ``label_to_cat_id``).
        stop_signal (StopSignal, optional): checked after every step; when set, the trainer
            writes a checkpoint and returns with ``interrupted`` in its summary.
        divergence (DivergenceGuard, optional): stops a run whose logged loss explodes (raises
            ``DivergedError``); default: ``DivergenceGuard()`` (100 x the first step's loss at 3
            log points in a row).
        on_step (Callable[[int], None], optional): called after every optimiser step with the
            iteration just finished (a profiler's clock, a custom probe); it may request a stop
            through ``stop_signal``.
        best (BestRule, optional): the metric whose best evaluation is kept as
            ``checkpoints/best.pth`` and the patience of the early stop (default: off).
        ema (EMAOptions, optional): keep an exponential moving average of the main model's
            weights (``detector.engine.ema.ModelEMA``), updated after every step taken on the
            main model (a skipped non-finite step is none); the average is what evaluation,
            best.pth and ``eval_model`` (final.pth) use, the raw weights stay in the resumable
            checkpoints beside it. It restarts at the main model's weights when each phase
            begins (the 4-step schedule's phases swap parts between models: an average across
            them would mix weights of other parts). With ``eval_raw`` each evaluation also
            scores the raw weights (``raw_AP``, ``raw_AP50``). Default: off.
    """

    def __init__(
        self, *, model: nn.Module, criterion: nn.Module, train_loader: DataLoader,
        phases: list[Phase], optimizer: Callable, lr_lambda: Callable, weight_decay: float,
        device: torch.device, output_dir: str | Path, val_loader: DataLoader | None = None,
        cadence: Cadence | None = None, step: StepOptions | None = None, progress: bool = True,
        logger: TrainLogger | None = None, checkpoint_extra: dict | None = None,
        stop_signal: StopSignal | None = None, divergence: DivergenceGuard | None = None,
        on_step: Callable[[int], None] | None = None, best: BestRule | None = None,
        ema: EMAOptions | None = None,
    ) -> None:
        cadence, step = cadence or Cadence(), step or StepOptions()
        self.step_options, self.device, self.phases = step, device, phases
        model = model.to(device)
        layout = resolve_layout(step.channels_last, device, step.precision)
        self.memory_format = apply_layout(model, layout)  # the images' format
        self.models: dict[str, nn.Module | None] = {"main": model, "rpn": None}
        self.ema_options = ema
        self.ema = (ModelEMA(model=model, decay=ema.decay, warmup=ema.warmup)
                    if ema is not None else None)
        # never unfreeze what the model itself froze (by name: the 4-step step-1 copy too)
        self._trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        self.criterion, self.train_loader = criterion, train_loader
        self.stream = BatchStream(train_loader)
        self.progress = progress and dist.is_main()
        self.logger = logger or TrainLogger(output_dir=Path(output_dir), enabled=dist.is_main())
        self.stop_signal, self.divergence = stop_signal or StopSignal(), divergence or DivergenceGuard()
        self.log_period = max(1, int(cadence.log_period))
        self.histograms = Every(int(cadence.histogram_period))
        output_dir, self.position = Path(output_dir), TrainingPosition()
        self.optimization = PhaseOptimizer(  # fp16 autocast needs loss scaling (else a no-op)
            optimizer=optimizer, lr_lambda=lr_lambda, weight_decay=weight_decay,
            scaler=torch.amp.GradScaler(device.type, enabled=step.precision == "fp16"
                                        and device.type == "cuda"))
        self.best = BestCheckpoint(rule=best or BestRule(), extra=checkpoint_extra,
                                   path=output_dir / run_files.CHECKPOINTS / run_files.BEST)
        self.evaluation = PeriodicEvaluation(
            loader=val_loader, period=cadence.eval_period, device=device, best=self.best,
            precision=step.precision, progress=self.progress, logger=self.logger,
            stop_signal=self.stop_signal, metrics=cadence.eval_metrics)
        self.checkpointer = Checkpointer(
            directory=output_dir / run_files.CHECKPOINTS, period=cadence.checkpoint_period,
            keep=cadence.keep_checkpoints, extra=checkpoint_extra, phases=phases,
            position=self.position, parts=training_parts(
                phases=phases, position=self.position, models=self.models,
                optimization=self.optimization, evaluation=self.evaluation,
                divergence=self.divergence, stream=self.stream, best=self.best, ema=self.ema),
            check=TrainingCheck(phases=phases, model=model, optimization=self.optimization,
                                phase_groups=self._phase_groups,
                                ema=self.ema.module if self.ema is not None else None),
            metrics_path=getattr(self.logger, "metrics_path", None))
        self._consecutive_skips, self.on_step = 0, on_step

    # ------------------------------------------------------------------ shortcuts
    @property
    def total_iterations(self) -> int:
        return sum(p.iterations for p in self.phases)

    @property
    def iteration(self) -> int:
        """Steps done so far (``position.iteration``)."""
        return self.position.iteration

    @property
    def skipped_steps(self) -> int:
        return self.position.skipped_steps

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self.optimization.scaler

    @property
    def val_loader(self) -> DataLoader | None:
        return self.evaluation.loader

    @val_loader.setter
    def val_loader(self, loader: DataLoader | None) -> None:
        self.evaluation.loader = loader

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate and to save as best.pth/final.pth: the weight average
        (``ema.module``) when ``ema`` is on, else the main model."""
        return self.ema.module if self.ema is not None else self.models["main"]

    def _raw_model(self) -> nn.Module | None:
        """The raw main model, to be evaluated beside the average (``ema.eval_raw``), or None."""
        if self.ema is None or not self.ema_options.eval_raw:
            return None
        return self.models["main"]

    def resume(self, checkpoint: str | Path | dict) -> None:
        """Continue from a checkpoint (a path or the loaded dict); call before ``train``."""
        self.checkpointer.resume(checkpoint)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run (or, after ``resume``, continue) every phase.

        Returns:
            dict: ``metrics`` (final evaluation or None), ``wall_time``, ``iterations``,
            ``skipped_steps``, ``checkpoint`` (the newest written, or None) and ``interrupted``
            (e.g. "SIGTERM", or None), ``best`` (``{"metric", "value", "iteration"}`` or None)
            and ``early_stopped`` (the patience ran out before the schedule's end).
        """
        start, position = time.perf_counter(), self.position
        try:
            interrupted = self._run_phases()
        finally:  # the training data workers are not needed any more (nor after an error:
            self.stream.close()  # left alive, they would keep the process from exiting)
        self._restore(self.models["main"])
        if interrupted is None:
            self.checkpointer.save_at_end()
        metrics = self.evaluation.last_metrics
        if interrupted is None and self.evaluation.final_due(self.phases[-1], position.iteration):
            metrics = self.evaluation.run(self.eval_model, self.phases[-1], position.iteration,
                                          raw=self._raw_model())
            if metrics is None:  # stopped during the final evaluation
                interrupted = self._stopped_in_final_evaluation()
        self.logger.close()
        return {"metrics": metrics, "wall_time": time.perf_counter() - start,
                "iterations": position.iteration, "skipped_steps": position.skipped_steps,
                "checkpoint": self.checkpointer.last, "interrupted": interrupted,
                "best": self.best.record(),
                "early_stopped": self.best.stop_due and position.iteration < self.total_iterations}

    def _run_phases(self) -> str | None:
        """Run the phases from the current position; returns what stopped them early, or None."""
        position = self.position
        while position.phase_index < len(self.phases):
            phase = self.phases[position.phase_index]
            if not position.phase_begun:
                log.info("phase %d/%d: %s (%d iterations, training %s on %s)",
                         position.phase_index + 1, len(self.phases), phase.name,
                         phase.iterations, "+".join(phase.train_modules), "+".join(phase.losses))
                self._begin(phase)
                position.phase_begun = True
            if not self._run_phase(phase):  # stopped (under torchrun: maybe by another rank)
                return self.stop_signal.reason or "a stop request on another process"
            if self.best.stop_due:  # stopped early: the position stays where it stopped
                return None
            position.next_phase()
        return None

    def _phase_groups(self, phase: Phase) -> list[dict]:
        """The param groups ``phase``'s optimiser will get (the main model's, with its flags)."""
        model = self.models["main"]
        self._configure(model, phase)
        try:
            return self.optimization.groups(model)
        finally:
            self._restore(model)

    def _begin(self, phase: Phase) -> None:
        if phase.start == "copy_initial_to_rpn":
            self.models["rpn"] = copy.deepcopy(self.models["main"])
        elif phase.start in TAKE_FROM_RPN:
            parts, release = TAKE_FROM_RPN[phase.start]
            for part in parts:
                getattr(self.models["main"], part).load_state_dict(
                    getattr(self.models["rpn"], part).state_dict())
            if release:
                self.models["rpn"] = None
        elif phase.start is not None:
            raise ValueError(f"unknown phase start action {phase.start!r}")
        if self.ema is not None:  # the average is of this phase's main model
            self.ema.reset(self.models["main"])

    def _configure(self, model: nn.Module, phase: Phase) -> None:
        """Trainable flags and train/eval mode of each part for this phase."""
        model.train()
        for name in HEADS:
            part = getattr(model, name)
            active = name in phase.train_modules
            part.train(active)
            for param_name, p in part.named_parameters(prefix=name):
                p.requires_grad_(active and self._trainable.get(param_name, True))

    def _restore(self, model: nn.Module) -> None:
        """Give the model back its own trainable flags (phases freeze whole parts), train mode."""
        model.train()
        for name, p in model.named_parameters():
            p.requires_grad_(self._trainable.get(name, True))

    def _start_phase(self, phase: Phase) -> nn.Module:
        """Flags, a fresh (or resumed) optimiser and scheduler; the module to step (DDP)."""
        model = self.models[phase.model]
        self._configure(model, phase)
        self.optimization.start(model, phase.iterations)
        return dist.wrap_ddp(model, self.device)

    def _run_phase(self, phase: Phase) -> bool:
        """Train ``phase`` from ``position.phase_iter`` on; False when stopped early."""
        trained = self._start_phase(phase)
        window = LogWindow()
        bar = tqdm(total=phase.iterations, initial=self.position.phase_iter, dynamic_ncols=True,
                   desc=f"step {self.position.phase_index + 1}/{len(self.phases)} {phase.name}",
                   disable=not self.progress)
        while self.position.phase_iter < phase.iterations and not self.best.stop_due:
            lr = self.optimization.lr
            losses, norm, stop = self._step(trained, phase)
            self.divergence.observe_step(losses)  # remembers the first step's loss
            self.optimization.step_scheduler()
            self.position.advance()
            bar.update()
            window.add(losses, norm)
            if self.on_step is not None:  # e.g. tools/profile_step.py's profiler and clock
                self.on_step(self.position.iteration)
                stop = stop or self.stop_signal.requested
            stop = self._after_step(phase, window, lr, bar) or stop
            if stop:
                bar.close()
                return self._stopped(phase)
        bar.close()
        return True

    def _after_step(self, phase: Phase, window: LogWindow, lr: float, bar: tqdm) -> bool:
        """Log point, histograms, evaluation, checkpoint; True when a stop abandoned it."""
        position, model = self.position, self.models[phase.model]
        last = position.phase_iter == phase.iterations
        if (position.phase_iter % self.log_period == 0 or last) and window.count:
            self._log_point(phase, window, lr, bar)
        if self.histograms(position.iteration):
            self.logger.histograms(model, position.iteration)
        # the evaluation (the last phase's end: by ``train``) first: the checkpoint holds its result
        stopped, final = False, last and position.phase_index == len(self.phases) - 1
        if self.evaluation.due(phase, position.phase_iter) and not final:
            stopped = self.evaluation.run(self.eval_model, phase, position.iteration,
                                          raw=self._raw_model()) is None
            self._configure(model, phase)
        if self.checkpointer.due(position.iteration):
            self.checkpointer.save()
        return stopped

    def _log_point(self, phase: Phase, window: LogWindow, lr: float, bar: tqdm) -> None:
        """Log the window's averages, then start a new window."""
        elapsed, averaged, norms = window.summary()
        position = self.position
        self.logger.train_point(
            phase=phase.name, iteration=position.iteration, phase_iter=position.phase_iter,
            phase_total=phase.iterations, losses=averaged, lr=lr, sec_per_iter=elapsed,
            eta=elapsed * (self.total_iterations - position.iteration),
            memory=memory_mb(self.device), grad_norm=norms,
            grad_ratios=grad_weight_ratios(self.models[phase.model]))
        bar.set_postfix(loss=f"{sum(averaged.values()):.3f}", lr=f"{lr:.1e}")
        window.reset()
        self.divergence.check(loss=sum(averaged.values()), iteration=position.iteration, lr=lr,
                              terms=averaged)

    def _stopped_in_final_evaluation(self) -> str:
        """After a stop during the final evaluation: write the state (resumes into it)."""
        self.checkpointer.save_unless_saved()
        log.warning("%s: stopped during the final evaluation, after all %d iterations; state "
                    "saved to %s", self.stop_signal.reason, self.position.iteration,
                    self.checkpointer.last)
        return self.stop_signal.reason or "a stop request on another process"

    def _stopped(self, phase: Phase) -> bool:
        self.checkpointer.save_unless_saved()
        p = self.position
        log.warning("%s: stopped after iteration %d/%d (phase %s, step %d/%d); state saved to %s",
                    self.stop_signal.reason, p.iteration, self.total_iterations, phase.name,
                    p.phase_iter, phase.iterations, self.checkpointer.last)
        return False

    # ------------------------------------------------------------------ one step
    def _proposals(self, phase: Phase, images: torch.Tensor, batch: dict):
        if phase.proposals_from is None:
            return None
        source = self.models[phase.proposals_from]
        source.eval()
        source.proposal_generator.train()  # training-time top-k (e.g. 2000 proposals)
        with torch.no_grad(), autocast(self.device, self.step_options.precision):
            out = source(images, batch["image_sizes"], detect=False)
        return out["proposals"].float(), out["proposal_valid"]

    def _step(self, model: nn.Module, phase: Phase) -> tuple[dict | None, torch.Tensor, bool]:
        """One optimiser step. Returns (the phase's detached loss terms, or None if the step was
        skipped as non-finite; the gradient norm before clipping; whether to stop after it)."""
        # the state before the step, put back if it turns out non-finite: the random generators
        # and data position (for the checkpoint) and the buffers the forward updates (BN stats)
        cursor = self.checkpointer.capture()
        buffers = list(self.models[phase.model].buffers())
        saved_buffers = [b.detach().clone() for b in buffers]
        batch = to_device(next(self.stream), self.device)
        targets = {k: batch[k] for k in TARGET_KEYS}
        images = batch["images"].contiguous(memory_format=self.memory_format)
        proposals = self._proposals(phase, images, batch)
        with autocast(self.device, self.step_options.precision):
            outputs = model(images, batch["image_sizes"], targets, detect=False,
                            proposals=proposals)
        losses = self.criterion(outputs, targets)  # float32 whatever the autocast dtype
        terms = {name: losses[name] for name in phase.losses}
        optimizer, scaler = self.optimization.optimizer, self.optimization.scaler
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(terms.values())).backward()
        norm = grad_norm(optimizer, scaler, max_norm=self.step_options.clip_grad_norm)
        # with a GradScaler, inf gradients are its business (it skips the step, lowers the scale)
        checked = dict(terms) if scaler.is_enabled() else {**terms, "grad_norm": norm}
        bad, stop = step_flags(checked, stop_requested=self.stop_signal.requested)
        if bad:
            with torch.no_grad():
                torch._foreach_copy_(buffers, saved_buffers)
            self._nonfinite(phase, checked, cursor)
        else:
            self._consecutive_skips = 0
            scaler.step(optimizer)
            if self.ema is not None and phase.model == "main":
                self.ema.update(self.models["main"])
        scaler.update()
        return (None if bad else {k: v.detach() for k, v in terms.items()}), norm.detach(), stop

    def _nonfinite(self, phase: Phase, checked: dict[str, torch.Tensor], cursor: dict) -> None:
        """Skip the step (counted) or write the last good state and raise ``NonFiniteError``."""
        lr, position = self.optimization.lr, self.position
        skip = self.step_options.on_nonfinite == "skip"
        bad, message = describe_nonfinite(
            gather_values(checked), iteration=position.iteration + 1, phase=phase.name,
            phase_iter=position.phase_iter + 1, phase_total=phase.iterations, lr=lr)
        self.optimization.optimizer.zero_grad(set_to_none=True)
        self._consecutive_skips += 1
        if skip and self._consecutive_skips <= self.step_options.max_consecutive_skips:
            position.skipped_steps += 1
            log.warning("skipped step: %s (%d skipped so far)", message, position.skipped_steps)
            return
        if skip:
            message += f"; {self._consecutive_skips} steps in a row"
        path = self.checkpointer.save(cursor=cursor)
        saved = (f"the last good state (iteration {position.iteration}) is in {path}. "
                 if path else "")
        raise NonFiniteError(f"{message}; {saved}{NONFINITE_HINT}", terms=bad,
                             iteration=position.iteration + 1, lr=lr, checkpoint=path)

