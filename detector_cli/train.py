"""Training from a composed configs/train.yaml (the Hydra side of ``tools/train_net.py``).

``main(cfg)`` is the tool's Hydra task: ``run(cfg)`` (check, train, report; returns the exit
code), the multirun rules (each sweep job writes into the folder Hydra made for it; a diverged
job is an outcome of the sweep, not its end) and a failed start leaving no run folder behind
(``remove_unstarted_run``). ``train(cfg)`` trains or resumes; ``build_trainer`` builds what it
trains, the cheap parts first (``build_options``: their constructors refuse a bad ``train.*`` or
``schedule.*`` value, named by its key, before any data is read) and then the datasets, model
and loaders (``build_datasets``); ``report`` writes final_metrics.json and logs the summary;
``resume_command`` is the command line that continues a stopped run. Importing it registers the
``${job_folder:...}`` resolver of a sweep's job folders (``detector_cli.sweep``).

The run folder it writes: .hydra/ (resolved config), train_net.log, config.json, metrics.jsonl,
tensorboard/, checkpoints/iter_*.pth, final.pth and best.pth, loss_curves.png, final_metrics.json and
final_results.json (see tools/train_net.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import detector_cli.sweep  # noqa: F401  (registers hydra.sweep.subdir's ${job_folder:...})
from detector import run_files
from detector.data import build_dataloader
from detector.engine import distributed as dist
from detector.engine.best import BestRule, save_model_file
from detector.engine.ema import EMAOptions
from detector.engine.guard import DivergedError, DivergenceGuard, StopSignal
from detector.engine.logger import TrainLogger
from detector.engine.position import Cadence, StepOptions
from detector.engine.schedules import Phase
from detector.engine.trainer import Trainer
from detector.evaluation import (
    detections_to_coco_results,
    format_coco_table,
    save_results,
)
from detector.runtime import resolve_device, resolve_precision, seed_everything
from detector.study.curves import plot_metrics
from detector_cli.anchors import settle_anchors
from detector_cli.checks import (
    ConfigError,
    check_eval_metric,
    check_train_config,
    resume_checkpoint,
)
from detector_cli.class_counts import settle_class_weights
from detector_cli.cli import (
    USER_ERRORS,
    command_arg,
    config_keys,
    exit_on_user_error,
    report_user_error,
)

__all__ = ["NONFINITE_KEYS", "UNSTARTED", "TrainerOptions", "build_best", "build_datasets",
           "build_options",
           "build_trainer", "main", "remove_unstarted_run", "report", "resume_command", "run",
           "train"]

log = logging.getLogger("train_net")
NONFINITE_KEYS = ("(config: optimizer.lr, schedule.lr.warmup_iters, train.clip_grad_norm, "
                  "dataset.on_bad; train.on_nonfinite=skip)")


@dataclass(frozen=True)
class TrainerOptions:
    """The Trainer's parts that are cheap to build (no data, no model): how a step runs, how
    often the periodic work happens, the divergence guard and the schedule's phases."""

    step: StepOptions
    cadence: Cadence
    divergence: DivergenceGuard
    phases: list[Phase]
    best: BestRule
    ema: EMAOptions | None = None  # train.ema_decay (null: off), train.ema_warmup, ema_eval_raw


def build_options(cfg: DictConfig, device: torch.device) -> TrainerOptions:
    """The cheap parts of the Trainer, built before any data is read: their constructors hold
    the value rules of precision, ``train.*`` (on_nonfinite, channels_last, divergence_factor)
    and the schedule's choices (step2_*), and a bad value is one ConfigError line naming its
    key."""
    t = cfg.train
    precision = resolve_precision(cfg.precision, device)
    with config_keys("train", factor="train.divergence_factor",
                     window="train.divergence_window", decay="train.ema_decay",
                     warmup="train.ema_warmup", eval_raw="train.ema_eval_raw"):
        step = StepOptions(precision=precision, channels_last=t.channels_last,
                           clip_grad_norm=t.clip_grad_norm, on_nonfinite=t.on_nonfinite)
        divergence = DivergenceGuard(factor=t.divergence_factor, window=t.divergence_window)
        cadence = Cadence(log_period=t.log_period, eval_period=t.eval_period,
                          checkpoint_period=t.checkpoint_period,
                          keep_checkpoints=t.keep_checkpoints,
                          histogram_period=t.histogram_period,
                          eval_metrics=tuple(check_eval_metric(t.get("eval_metric", "coco"),
                                                               key="train.eval_metric")))
        ema = None if t.get("ema_decay") is None else EMAOptions(
            decay=t.ema_decay, warmup=t.get("ema_warmup", 100),
            eval_raw=t.get("ema_eval_raw", True))
    with config_keys("schedule"):
        phases = hydra.utils.instantiate(cfg.schedule.phases)
    return TrainerOptions(step=step, cadence=cadence, divergence=divergence, phases=phases,
                          best=build_best(cfg), ema=ema)


BEST_KEYS = {"metric": "train.best_metric", "mode": "train.best_mode",
             "patience": "train.early_stop_patience"}


def build_best(cfg: DictConfig) -> BestRule:
    """``train.best_metric`` (``auto``: AP50 when ``train.eval_period`` evaluates periodically,
    else off; null: off), ``train.best_mode`` and ``train.early_stop_patience`` as a
    ``BestRule`` (a bad value: one ConfigError line naming its key)."""
    t = cfg.train
    metric = t.get("best_metric", "auto")
    if metric == "auto":
        metric = "AP50" if t.eval_period > 0 else None
    with config_keys("train", **BEST_KEYS):
        return BestRule(metric=metric, mode=t.get("best_mode", "max"),
                        patience=t.get("early_stop_patience"))


def build_datasets(cfg: DictConfig):
    train = hydra.utils.instantiate(cfg.dataset.train)
    val = hydra.utils.instantiate(cfg.dataset.val)
    if list(train.class_names) != list(val.class_names):
        raise ConfigError(
            f"train and val splits have different classes ({train.class_names} vs "
            f"{val.class_names}); set dataset.class_names=[...] explicitly")
    for name, ds in (("train", train), ("val", val)):
        images, classes = len(ds), len(ds.class_names)
        log.info("%s: %d image%s, %d class%s; %s", name, images, "" if images == 1 else "s",
                 classes, "" if classes == 1 else "es",
                 ds.report.summary() if hasattr(ds, "report") else "")
    return train, val


def build_trainer(cfg: DictConfig, output_dir: Path, device: torch.device,
                  stop_signal: StopSignal | None) -> Trainer:
    """The Trainer of ``cfg``: options first (``build_options``), then datasets, model, loaders."""
    options = build_options(cfg, device)  # before any data is read
    train_set, val_set = build_datasets(cfg)
    settle_anchors(cfg, train_set)  # dataset.anchor_*=auto: numbers in cfg before the model
    settle_class_weights(cfg, train_set)  # loss.class_balance: numbers before the criterion
    model = hydra.utils.instantiate(cfg.model, num_classes=len(train_set.class_names))
    if dist.get_rank():  # the same initial weights everywhere, then per-rank RPN/ROI sampling
        seed_everything(cfg.seed + dist.get_rank())
    shard = dict(num_workers=cfg.num_workers, seed=cfg.seed, num_replicas=dist.get_world_size(),
                 rank=dist.get_rank())
    t = cfg.train
    return Trainer(
        model=model, criterion=hydra.utils.instantiate(cfg.loss.criterion),
        train_loader=build_dataloader(dataset=train_set, batch_size=cfg.batch_size, train=True,
                                      **shard),
        val_loader=build_dataloader(dataset=val_set, batch_size=t.eval_batch_size, train=False,
                                    **shard),
        phases=options.phases,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        lr_lambda=hydra.utils.instantiate(cfg.schedule.lr),
        weight_decay=cfg.optimizer.get("weight_decay", 0.0), device=device,
        output_dir=output_dir,
        cadence=options.cadence, step=options.step, progress=t.progress,
        logger=TrainLogger(output_dir=output_dir, enabled=dist.is_main()),
        checkpoint_extra={"config": OmegaConf.to_container(cfg, resolve=True),
                          "class_names": list(train_set.class_names),
                          "label_to_cat_id": dict(train_set.label_to_cat_id)},
        stop_signal=stop_signal, divergence=options.divergence, best=options.best,
        ema=options.ema)


def train(cfg: DictConfig, stop_signal: StopSignal | None = None) -> dict:
    """Train (or resume) the run ``cfg`` describes; returns the trainer's summary."""
    device = dist.init_distributed(resolve_device(cfg.device))
    seed_everything(cfg.seed)
    output_dir = Path(dist.broadcast_object(str(cfg.output_dir)))  # every rank: rank 0's run
    if not dist.is_main():
        logging.getLogger().setLevel(logging.WARNING)
        own = Path(cfg.output_dir)  # Hydra made it; it differs if ${now:} ticked between ranks
        if own != output_dir and own.is_dir() and not any(own.iterdir()):
            own.rmdir()
    resume = resume_checkpoint(cfg)
    trainer = build_trainer(cfg, output_dir, device, stop_signal)
    if resume is not None:  # checked in full before it restores or rewrites anything
        trainer.resume(resume)
    if dist.is_main():  # what tools/compare.py reads to tell runs apart (replaces a symlink)
        run_files.write_config(output_dir, OmegaConf.to_container(cfg, resolve=True))
    log.info("device %s x %d process(es), precision %s (precision=%s), %d iterations", device,
             dist.get_world_size(), resolve_precision(cfg.precision, device), cfg.precision,
             trainer.total_iterations)
    with config_keys("train", metric=BEST_KEYS["metric"]):  # a metric the evaluation lacks
        summary = trainer.train()
    if summary["interrupted"] is None and dist.is_main():
        summary["final"] = save_model_file(  # the same payload as best.pth (BestCheckpoint)
            output_dir / run_files.CHECKPOINTS / run_files.FINAL, model=trainer.eval_model,
            extra=trainer.checkpointer.extra, iteration=summary["iterations"])
        plot_metrics(output_dir / run_files.METRICS, output_dir / run_files.LOSS_CURVES)
        detections = trainer.evaluation.last_detections
        if detections is not None:  # what tools/analyze.py reads
            save_results(output_dir / run_files.FINAL_RESULTS, detections_to_coco_results(
                detections, label_to_cat_id=trainer.checkpointer.extra["label_to_cat_id"]))
        report(summary, summary["final"], output_dir)
    return summary


def report(summary: dict, checkpoint: Path, output_dir: Path) -> None:
    metrics = summary["metrics"]
    best, early = summary.get("best"), summary.get("early_stopped", False)
    run_files.write_final_metrics(output_dir, run_files.finished_record(
        metrics, iterations=summary["iterations"], wall_time_s=summary["wall_time"],
        skipped_steps=summary["skipped_steps"], best=best, early_stopped=early))
    if metrics is not None:
        log.info("final evaluation:\n%s", format_coco_table(metrics))
    ap = "n/a" if not metrics or metrics["AP"] is None else f"{metrics['AP']:.4f}"
    ap50 = "n/a" if not metrics or metrics["AP50"] is None else f"{metrics['AP50']:.4f}"
    minutes = summary["wall_time"] / 60
    log.info("done: %d iterations in %.1f min (%d non-finite steps skipped); AP %s, AP50 %s",
             summary["iterations"], minutes, summary["skipped_steps"], ap, ap50)
    log.info("checkpoint: %s", checkpoint)
    log.info("logs: %s (train_net.log, metrics.jsonl, tensorboard/, loss_curves.png)", output_dir)
    log.info("evaluate it with: python tools/eval.py %s", command_arg("checkpoint", checkpoint))
    if early:
        log.info("stopped early at iteration %d: %s did not improve for train.early_stop_patience "
                 "evaluations", summary["iterations"], best["metric"] if best else "the metric")
    if best is not None:
        path = Path(checkpoint).parent / run_files.BEST
        log.info("best: %s %.4f at iteration %d (%s); evaluate it with: python tools/eval.py %s",
                 best["metric"], best["value"], best["iteration"], path,
                 command_arg("checkpoint", path))


def resume_command(cfg: DictConfig) -> str:
    """The command line that continues this run: its overrides + output_dir + resume=true."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("output_dir=", "resume="))]
    world = dist.get_world_size()
    launcher = f"torchrun --nproc_per_node={world}" if world > 1 else "python"
    args = [*map(shlex.quote, kept), command_arg("output_dir", cfg.output_dir), "resume=true"]
    return " ".join([launcher, "tools/train_net.py", *args])


def run(cfg: DictConfig) -> int:
    """Validate, train, report; returns the process exit code (0 done, 2 config/data error,
    3 non-finite loss, 128 + signal number when stopped by SIGINT/SIGTERM)."""
    stop, start = StopSignal(), time.perf_counter()
    try:
        check_train_config(cfg)
        with stop.installed():
            summary = train(cfg, stop)
    except USER_ERRORS as error:  # one line on stderr (wrapped ones: see main)
        return report_user_error(error)
    except DivergedError as error:  # a non-finite value, or a loss that exploded
        log.error("training diverged: %s %s", error, NONFINITE_KEYS)
        if dist.is_main():  # an outcome a study reads, like the metrics of a finished run
            run_files.write_final_metrics(cfg.output_dir, run_files.diverged_record(
                iteration=error.iteration, lr=error.lr, terms=error.terms, reason=error.reason,
                metrics_jsonl=Path(cfg.output_dir) / run_files.METRICS,
                wall_time_s=time.perf_counter() - start, checkpoint=error.checkpoint))
        return 3
    finally:
        dist.cleanup_distributed()
    if summary["interrupted"] is not None:
        log.warning("stopped by %s at iteration %d; checkpoint %s. Resume with: %s",
                    summary["interrupted"], summary["iterations"], summary["checkpoint"],
                    resume_command(cfg))
        return stop.exit_code
    return 0


UNSTARTED = {run_files.HYDRA, "train_net.log", run_files.CONFIG}  # what a run folder holds before training


def remove_unstarted_run(run_dir: str | Path, *, name: str | None = None) -> None:
    """Remove ``run_dir`` if it holds only what Hydra and the start of a run write
    (``UNSTARTED``), and its parent when that is left empty and named ``name`` (the default
    ``outputs/<name>/<date>``): a start that failed on a user error leaves no run behind. A
    folder with anything else in it (a run to resume, a user's files) stays."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or run_dir.resolve() == Path.cwd().resolve():
        return
    if any(entry.name not in UNSTARTED for entry in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir, ignore_errors=True)  # under torchrun every rank may try
    if name and run_dir.parent.name == name:
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # only when empty


def main(cfg: DictConfig) -> None:
    """tools/train_net.py's Hydra task: ``run(cfg)``, then exit with its code (a sweep job that
    diverged returns: the sweep goes on); a failed start of a single run leaves no run folder."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun:  # each job of a sweep writes into the folder Hydra made for it (hydra.sweep)
        job_dir = HydraConfig.get().runtime.output_dir  # absolute
        inside = Path(job_dir).is_relative_to(Path.cwd())
        cfg.output_dir = os.path.relpath(job_dir) if inside else job_dir
    try:
        with exit_on_user_error():  # e.g. a DatasetError inside Hydra's InstantiationException
            code = run(cfg)
    except SystemExit as stop:
        code = stop.code
    if code == 2 and not multirun:  # a failed start: no run folder left behind
        remove_unstarted_run(HydraConfig.get().runtime.output_dir if HydraConfig.initialized()
                             else cfg.output_dir, name=cfg.get("name"))
    if code == 3 and multirun:  # a diverged job is an outcome of the sweep, not its end
        log.warning("job diverged (final_metrics.json: status diverged); the sweep goes on")
    elif code:
        sys.exit(code)

