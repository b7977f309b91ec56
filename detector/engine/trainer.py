"""The training loop: runs a list of ``Phase`` (end-to-end or 4-step) over an endless stream of
batches, with logging, periodic evaluation, resumable checkpoints, a NaN/Inf guard, a graceful
stop on SIGINT/SIGTERM, mixed precision and DistributedDataParallel.

Where a run is, is ``(phase_index, phase_iter)`` plus whether the phase's start action ran; a
checkpoint (``state_dict``) holds that, the main model and the 4-step "rpn" model, the optimiser,
LR scheduler and grad scaler of the current phase, the random generators of every rank and the
batch stream's (epoch, position); ``resume`` puts all of it back (exactly, on the CPU).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detector.engine import distributed as dist
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
from detector.engine.logger import TrainLogger, format_duration, memory_mb
from detector.engine.monitor import grad_weight_ratios
from detector.engine.optim import param_groups
from detector.engine.resume import CheckpointingMixin
from detector.engine.schedules import TAKE_FROM_RPN, Phase
from detector.engine.state import BatchStream, capture_rng_state
from detector.evaluation.inference import EvaluationStopped
from detector.runtime import autocast, to_device

__all__ = ["Trainer", "infinite_batches"]

log = logging.getLogger("detector.train")

TARGET_KEYS = ("boxes", "labels", "box_valid")  # the Batch entries the criterion reads
HEADS = ("backbone", "rpn_head", "roi_head")


def _mean_max(values: list[torch.Tensor]) -> tuple[float, float] | None:
    """(mean, max) of the finite 0-dim tensors in ``values`` (fp16 overflow steps, which the
    GradScaler skips, have an inf norm), or None if there are none."""
    stacked = torch.stack(values).float()
    finite = stacked[stacked.isfinite()]
    if finite.numel() == 0:
        return None
    return tuple(torch.stack((finite.mean(), finite.max())).tolist())


def infinite_batches(loader: DataLoader) -> Iterator[dict]:
    """Batches forever, a new epoch (and a new shuffle) when one ends (see ``BatchStream``)."""
    return iter(BatchStream(loader))


class Trainer(CheckpointingMixin):
    """Train a Faster R-CNN through a list of phases.

    Args:
        model (nn.Module): the ``FasterRCNN`` ("main" model).
        criterion (nn.Module): ``FasterRCNNCriterion``.
        train_loader (DataLoader): training batches (Batch dicts); under torchrun, this rank's
            shard (``build_dataloader(num_replicas=, rank=)``).
        phases (list[Phase]): from ``detector.engine.schedules``.
        optimizer (Callable): param groups -> ``torch.optim.Optimizer`` (e.g. a partial SGD).
        lr_lambda (Callable): ``total_iters=`` -> per-iteration LR multiplier function.
        weight_decay (float): applied to weights, not to biases and norm parameters.
        device (torch.device): where training runs.
        output_dir (Path): run directory (metrics, ``checkpoints/``).
        val_loader (DataLoader, optional): evaluated every ``eval_period`` iterations and at the
            end (under torchrun: this rank's shard; detections are gathered on rank 0).
        eval_period (int): 0 = evaluate only at the end.
        log_period (int): iterations between log lines.
        clip_grad_norm (float, optional): max total gradient norm.
        precision (str): "fp32", "bf16" or "fp16" (autocast on CUDA; fp16 with a GradScaler).
        progress (bool): show tqdm bars.
        logger (TrainLogger, optional): default: one writing into ``output_dir`` on rank 0.
        checkpoint_period (int): write ``checkpoints/iter_XXXXXXX.pth`` every this many
            iterations and at the end (0: only when stopping early).
        keep_checkpoints (int): how many periodic checkpoints to keep (the newest).
        checkpoint_extra (dict, optional): plain values stored in every checkpoint (e.g.
            ``config``, ``class_names``, ``label_to_cat_id``).
        on_nonfinite (str): "stop" (write the last good state, raise ``NonFiniteError``) or
            "skip" (drop the step, count it) when a loss term or the gradient norm is NaN/Inf.
        max_consecutive_skips (int): under "skip", stop anyway after this many in a row.
        stop_signal (StopSignal, optional): checked after every step; when set, the trainer
            writes a checkpoint and returns with ``interrupted`` in its summary.
        channels_last (bool): channels-last memory format for the model and images.
        histogram_period (int): TensorBoard histograms of each block's weights and gradients every
            this many iterations (0: never). Each log point also logs the per-block
            gradient-to-weight norm ratios (``detector.engine.monitor``).
        divergence (DivergenceGuard, optional): stops a run whose logged loss explodes (raises
            ``DivergedError``); default: ``DivergenceGuard()`` (100 x the first step's loss at 3
            log points in a row).
    """

    def __init__(
        self, *, model: nn.Module, criterion: nn.Module, train_loader: DataLoader,
        phases: list[Phase], optimizer: Callable, lr_lambda: Callable, weight_decay: float,
        device: torch.device, output_dir: str | Path, val_loader: DataLoader | None = None,
        eval_period: int = 0, log_period: int = 20, clip_grad_norm: float | None = None,
        precision: str = "fp32", progress: bool = True, logger: TrainLogger | None = None,
        checkpoint_period: int = 0, keep_checkpoints: int = 3,
        checkpoint_extra: dict | None = None, on_nonfinite: str = "stop",
        max_consecutive_skips: int = 20, stop_signal: StopSignal | None = None,
        channels_last: bool = False, histogram_period: int = 0,
        divergence: DivergenceGuard | None = None,
    ) -> None:
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(device, memory_format=self.memory_format)
        self.models: dict[str, nn.Module | None] = {"main": model, "rpn": None}
        self.criterion = criterion
        self.train_loader, self.val_loader = train_loader, val_loader
        self.phases = phases
        self.optimizer_factory, self.lr_lambda_factory = optimizer, lr_lambda
        self.weight_decay = float(weight_decay)
        self.device = device
        self.output_dir = Path(output_dir)
        self.eval_period, self.log_period = int(eval_period), max(1, int(log_period))
        self.clip_grad_norm = clip_grad_norm
        self.precision = precision
        self.progress = progress and dist.is_main()
        self.logger = logger or TrainLogger(output_dir=self.output_dir, enabled=dist.is_main())
        self.checkpoint_period, self.keep_checkpoints = int(checkpoint_period), int(keep_checkpoints)
        self.checkpoint_extra = dict(checkpoint_extra or {})
        self.on_nonfinite, self.max_consecutive_skips = on_nonfinite, int(max_consecutive_skips)
        self.stop_signal = stop_signal or StopSignal()
        self.histogram_period = int(histogram_period)
        self.divergence = divergence or DivergenceGuard()  # (divergence hook)
        self.last_detections: list[dict] | None = None  # of the newest evaluation
        # what the model itself leaves trainable (e.g. frozen backbone blocks) is never unfrozen;
        # keyed by name so that it also holds for the step-1 copy of the 4-step schedule
        self._trainable = {name: p.requires_grad for name, p in model.named_parameters()}
        # fp16 autocast needs loss scaling against gradient underflow (a no-op otherwise)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=precision == "fp16" and device.type == "cuda")
        self.stream = BatchStream(train_loader)
        self.iteration = 0
        self.phase_index, self.phase_iter, self.phase_begun = 0, 0, False
        self.skipped_steps, self._consecutive_skips = 0, 0
        self.last_metrics: dict | None = None
        self.last_checkpoint: Path | None = None
        self._last_eval_iteration: int | None = None
        self._saved_iteration: int | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._pending_optim: dict | None = None  # optimiser/scheduler states of a resumed phase

    @property
    def total_iterations(self) -> int:
        return sum(p.iterations for p in self.phases)

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        """Run (or, after ``resume``, continue) every phase.

        Returns:
            dict: ``metrics`` (final evaluation or None), ``wall_time``, ``iterations``,
            ``skipped_steps``, ``checkpoint`` (the newest written, or None) and ``interrupted``
            (what stopped the run early, e.g. "SIGTERM", or None).
        """
        start = time.perf_counter()
        interrupted = None
        while self.phase_index < len(self.phases) and interrupted is None:
            phase = self.phases[self.phase_index]
            if not self.phase_begun:
                log.info("phase %d/%d: %s (%d iterations, training %s on %s)",
                         self.phase_index + 1, len(self.phases), phase.name, phase.iterations,
                         "+".join(phase.train_modules), "+".join(phase.losses))
                self._begin(phase)
                self.phase_begun = True
            if self._run_phase(phase):
                self.phase_index, self.phase_iter, self.phase_begun = self.phase_index + 1, 0, False
            else:  # (under torchrun the request may have reached another rank only)
                interrupted = self.stop_signal.reason or "a stop request on another process"
        self.stream.close()  # training data workers are not needed any more
        self._restore(self.models["main"])
        if interrupted is None and self.checkpoint_period > 0 and (
                self._saved_iteration != self.iteration):
            self.save_checkpoint()
        metrics = self.last_metrics
        if (interrupted is None and self.val_loader is not None and self.phases[-1].evaluable
                and self._last_eval_iteration != self.iteration):
            metrics = self._evaluate(self.phases[-1])
            if metrics is None:  # stopped during the final evaluation
                interrupted = self._stopped_in_final_evaluation()
        self.logger.close()
        return {"metrics": metrics, "wall_time": time.perf_counter() - start,
                "iterations": self.iteration, "skipped_steps": self.skipped_steps,
                "checkpoint": self.last_checkpoint, "interrupted": interrupted}

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
        """Trainable flags, a fresh optimiser and scheduler (or the resumed ones); returns the
        module to step (DDP-wrapped under torchrun)."""
        model = self.models[phase.model]
        self._configure(model, phase)
        self._optimizer = self.optimizer_factory(param_groups(model, weight_decay=self.weight_decay))
        self._scheduler = torch.optim.lr_scheduler.LambdaLR(
            self._optimizer, self.lr_lambda_factory(total_iters=phase.iterations))
        if self._pending_optim is not None:
            self._optimizer.load_state_dict(self._pending_optim["optimizer"])
            self._scheduler.load_state_dict(self._pending_optim["scheduler"])
            self._pending_optim = None
        return dist.wrap_ddp(model, self.device)

    def _run_phase(self, phase: Phase) -> bool:
        """Train ``phase`` from ``self.phase_iter`` on; False when stopped early."""
        trained = self._start_phase(phase)
        window: dict[str, torch.Tensor] = {}
        norms: list[torch.Tensor] = []  # pre-clipping gradient norms of the window's steps
        window_start, window_len = time.perf_counter(), 0
        bar = tqdm(total=phase.iterations, initial=self.phase_iter, dynamic_ncols=True,
                   desc=f"step {self.phase_index + 1}/{len(self.phases)} {phase.name}",
                   disable=not self.progress)
        while self.phase_iter < phase.iterations:
            lr = self._optimizer.param_groups[0]["lr"]
            losses, norm, stop = self._step(trained, phase)
            self.divergence.observe_step(losses)  # (divergence hook: the first step's loss)
            with warnings.catch_warnings():  # after a skipped first step: "step() before ..."
                warnings.simplefilter("ignore", UserWarning)
                self._scheduler.step()
            self.iteration, self.phase_iter = self.iteration + 1, self.phase_iter + 1
            bar.update()
            for k, v in (losses or {}).items():
                window[k] = window.get(k, 0.0) + v
            if losses is not None:
                norms.append(norm)
            window_len += losses is not None
            last = self.phase_iter == phase.iterations
            if (self.phase_iter % self.log_period == 0 or last) and window_len:
                elapsed = (time.perf_counter() - window_start) / window_len
                averaged = self._average(window, window_len)
                grad_norm = _mean_max(norms)
                self.logger.train_point(
                    phase=phase.name, iteration=self.iteration, phase_iter=self.phase_iter,
                    phase_total=phase.iterations, losses=averaged, lr=lr, sec_per_iter=elapsed,
                    eta=elapsed * (self.total_iterations - self.iteration),
                    memory=memory_mb(self.device), grad_norm=grad_norm,
                    grad_ratios=grad_weight_ratios(self.models[phase.model]))
                bar.set_postfix(loss=f"{sum(averaged.values()):.3f}", lr=f"{lr:.1e}")
                self.divergence.check(loss=sum(averaged.values()), iteration=self.iteration,
                                      lr=lr, terms=averaged)  # (divergence hook)
                window, window_start, window_len, norms = {}, time.perf_counter(), 0, []
            if self.histogram_period and self.iteration % self.histogram_period == 0:
                self.logger.histograms(self.models[phase.model], self.iteration)
            if self.checkpoint_period > 0 and self.iteration % self.checkpoint_period == 0:
                self.save_checkpoint()
            # (the end of the last phase is evaluated once, by ``train``)
            final = last and self.phase_index == len(self.phases) - 1
            if self._should_evaluate(phase, self.phase_iter) and not final:
                stop = self._evaluate(phase) is None or stop  # None: stopped during it
                self._configure(self.models[phase.model], phase)
            if stop:
                bar.close()
                return self._stopped(phase)
        bar.close()
        return True

    def _average(self, window: dict[str, torch.Tensor], count: int) -> dict[str, float]:
        """Mean of each windowed loss over the window and over ranks."""
        values = torch.stack([v.float() for v in window.values()]) / count
        return dict(zip(window, dist.all_reduce(values).tolist(), strict=True))

    def _stopped_in_final_evaluation(self) -> str:
        """After a stop during the final evaluation: write the (finished) state, which resumes
        straight into that evaluation."""
        if self._saved_iteration != self.iteration:
            self.save_checkpoint()
        log.warning("%s: stopped during the final evaluation, after all %d iterations; state "
                    "saved to %s", self.stop_signal.reason, self.iteration, self.last_checkpoint)
        return self.stop_signal.reason or "a stop request on another process"

    def _stopped(self, phase: Phase) -> bool:
        if self._saved_iteration != self.iteration:
            self.save_checkpoint()
        log.warning("%s: stopped after iteration %d/%d (phase %s, step %d/%d); state saved to %s",
                    self.stop_signal.reason, self.iteration, self.total_iterations, phase.name,
                    self.phase_iter, phase.iterations, self.last_checkpoint)
        return False

    # ------------------------------------------------------------------ one step
    def _proposals(self, phase: Phase, images: torch.Tensor, batch: dict):
        if phase.proposals_from is None:
            return None
        source = self.models[phase.proposals_from]
        source.eval()
        source.proposal_generator.train()  # training-time top-k (e.g. 2000 proposals)
        with torch.no_grad(), autocast(self.device, self.precision):
            out = source(images, batch["image_sizes"], detect=False)
        return out["proposals"].float(), out["proposal_valid"]

    def _step(self, model: nn.Module, phase: Phase) -> tuple[dict | None, torch.Tensor, bool]:
        """One optimiser step. Returns (the phase's detached loss terms, or None if the step was
        skipped as non-finite; the gradient norm before clipping; whether to stop after it)."""
        # the state before the step, put back if it turns out non-finite: the random generators
        # and data position (for the checkpoint) and the buffers the forward updates (BN stats)
        cursor = {"rng": capture_rng_state(), "data": self.stream.state_dict()}
        buffers = list(self.models[phase.model].buffers())
        saved_buffers = [b.detach().clone() for b in buffers]
        batch = to_device(next(self.stream), self.device)
        targets = {k: batch[k] for k in TARGET_KEYS}
        images = batch["images"].contiguous(memory_format=self.memory_format)
        proposals = self._proposals(phase, images, batch)
        with autocast(self.device, self.precision):
            outputs = model(images, batch["image_sizes"], targets, detect=False,
                            proposals=proposals)
        losses = self.criterion(outputs, targets)  # float32 whatever the autocast dtype
        terms = {name: losses[name] for name in phase.losses}
        self._optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(sum(terms.values())).backward()
        norm = grad_norm(self._optimizer, self.scaler, max_norm=self.clip_grad_norm)
        # with a GradScaler, inf gradients are its business (it skips the step, lowers the scale)
        checked = dict(terms) if self.scaler.is_enabled() else {**terms, "grad_norm": norm}
        bad, stop = step_flags(checked, stop_requested=self.stop_signal.requested)
        if bad:
            with torch.no_grad():
                torch._foreach_copy_(buffers, saved_buffers)
            self._nonfinite(phase, checked, cursor)
        else:
            self._consecutive_skips = 0
            self.scaler.step(self._optimizer)
        self.scaler.update()
        return (None if bad else {k: v.detach() for k, v in terms.items()}), norm.detach(), stop

    def _nonfinite(self, phase: Phase, checked: dict[str, torch.Tensor], cursor: dict) -> None:
        """Skip the step (counted) or write the last good state and raise ``NonFiniteError``."""
        lr = self._optimizer.param_groups[0]["lr"]
        bad, message = describe_nonfinite(
            gather_values(checked), iteration=self.iteration + 1, phase=phase.name,
            phase_iter=self.phase_iter + 1, phase_total=phase.iterations, lr=lr)
        self._optimizer.zero_grad(set_to_none=True)
        self._consecutive_skips += 1
        if self.on_nonfinite == "skip" and self._consecutive_skips <= self.max_consecutive_skips:
            self.skipped_steps += 1
            log.warning("skipped step: %s (%d skipped so far)", message, self.skipped_steps)
            return
        if self.on_nonfinite == "skip":
            message += f"; {self._consecutive_skips} steps in a row"
        path = self.save_checkpoint(cursor=cursor)
        saved = f"the last good state (iteration {self.iteration}) is in {path}. " if path else ""
        raise NonFiniteError(f"{message}; {saved}{NONFINITE_HINT}", terms=bad,
                             iteration=self.iteration + 1, lr=lr, checkpoint=path)

    # ------------------------------------------------------------------ evaluation
    def _should_evaluate(self, phase: Phase, phase_iter: int) -> bool:
        return (self.val_loader is not None and self.eval_period > 0
                and phase_iter % self.eval_period == 0 and phase.evaluable)

    def _evaluate(self, phase: Phase) -> dict | None:
        """COCO metrics on the val set, or None when a stop request abandoned the evaluation
        (logged as skipped; nothing is recorded for it)."""
        t0 = time.perf_counter()
        log.info("evaluation at iteration %d (%d val images)", self.iteration,
                 len(self.val_loader.dataset))
        try:
            metrics, self.last_detections = dist.evaluate_sharded(
                self.models["main"], self.val_loader, device=self.device,
                precision=self.precision, progress=self.progress,
                should_stop=lambda: self.stop_signal.requested)
        except EvaluationStopped as stopped:
            log.warning("evaluation at iteration %d skipped: %s arrived during it (%s after %s)",
                        self.iteration, self.stop_signal.reason, stopped,
                        format_duration(time.perf_counter() - t0))
            return None
        self._last_eval_iteration = self.iteration
        self.logger.eval_point(phase=phase.name, iteration=self.iteration, metrics=metrics)
        log.info("evaluation took %s", format_duration(time.perf_counter() - t0))
        self.last_metrics = metrics
        return metrics
