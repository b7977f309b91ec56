"""Train a Faster R-CNN: python tools/train_net.py [experiment=NAME] [key=value ...]

Composes configs/train.yaml, builds datasets, model and criterion with hydra.utils.instantiate,
runs the schedule (end-to-end or 4-step) and writes everything into the run directory:
.hydra/ (resolved config), train_net.log, metrics.jsonl, tensorboard/, checkpoints/iter_*.pth
(every train.checkpoint_period iterations), checkpoints/final.pth, loss_curves.png,
final_metrics.json and final_results.json (the final evaluation's detections, COCO results:
what tools/analyze.py reads).

Reliability: resume=true (with output_dir=<run>) or resume=PATH continues a run exactly;
SIGINT/SIGTERM finish the current step, write a checkpoint and print the command that resumes
(exit code 130/143); a NaN/Inf loss or gradient stops with one line after saving the last good
state (exit code 3; train.on_nonfinite=skip skips such steps), and so does a finite loss that
explodes (train.divergence_factor/divergence_window); a bad config is one line (exit
code 2). Multi-GPU / multi-node: torchrun --nproc_per_node=N tools/train_net.py ...

Sweeps: python tools/train_net.py -m experiment=ce,focal seed=0,1 runs one job per combination,
each in outputs/multirun/<date_time>/<its overrides>/ (output_dir follows it); sweep_callback.py
indexes the jobs in sweep.jsonl / sweep.md. A diverged job writes final_metrics.json with status
diverged and the sweep goes on; a bad config or missing data stops it (exit code 2).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

# Transparent huge pages for PyTorch's CPU allocator (read when torch loads): far fewer page faults
# on large temporaries (tools/bench_ops.py: 24 instead of 35 ms). An exported value wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import hydra  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep_callback  # noqa: E402, F401  (the ${job_folder:...} resolver of hydra.sweep.subdir)
from cli import (  # noqa: E402
    USER_ERRORS,
    check_command_line,
    command_arg,
    exit_on_user_error,
    quote_path_overrides,  # noqa: F401  (tools/soak.py composes train.yaml with it)
    report_user_error,
)
from config_checks import ConfigError, check_train_config, resume_checkpoint  # noqa: E402

from detector.checkpoint import save_checkpoint  # noqa: E402
from detector.data import build_dataloader  # noqa: E402
from detector.engine import distributed as dist  # noqa: E402
from detector.engine.guard import DivergedError, DivergenceGuard, StopSignal  # noqa: E402
from detector.engine.logger import TrainLogger  # noqa: E402
from detector.engine.position import Cadence, StepOptions  # noqa: E402
from detector.engine.trainer import Trainer  # noqa: E402
from detector.evaluation import (  # noqa: E402
    detections_to_coco_results,
    format_coco_table,
    save_metrics,
    save_results,
)
from detector.fileio import atomic_write_text  # noqa: E402
from detector.runtime import resolve_device, resolve_precision, seed_everything  # noqa: E402
from detector.study import FINAL_RESULTS, diverged_record, finished_record  # noqa: E402
from detector.study.curves import plot_metrics  # noqa: E402

log = logging.getLogger("train_net")
NONFINITE_KEYS = ("(config: optimizer.lr, schedule.lr.warmup_iters, train.clip_grad_norm, "
                  "dataset.on_bad; train.on_nonfinite=skip)")


def build_datasets(cfg: DictConfig):
    train = hydra.utils.instantiate(cfg.dataset.train)
    val = hydra.utils.instantiate(cfg.dataset.val)
    if list(train.class_names) != list(val.class_names):
        raise ConfigError(
            f"train and val splits have different classes ({train.class_names} vs "
            f"{val.class_names}); set dataset.class_names=[...] explicitly")
    for name, ds in (("train", train), ("val", val)):
        log.info("%s: %d images, %d classes; %s", name, len(ds), len(ds.class_names),
                 ds.report.summary() if hasattr(ds, "report") else "")
    return train, val


def build_trainer(cfg: DictConfig, output_dir: Path, device: torch.device,
                  stop_signal: StopSignal | None) -> Trainer:
    train_set, val_set = build_datasets(cfg)
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
        phases=hydra.utils.instantiate(cfg.schedule.phases),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        lr_lambda=hydra.utils.instantiate(cfg.schedule.lr),
        weight_decay=cfg.optimizer.get("weight_decay", 0.0), device=device,
        output_dir=output_dir,
        cadence=Cadence(log_period=t.log_period, eval_period=t.eval_period,
                        checkpoint_period=t.checkpoint_period,
                        keep_checkpoints=t.keep_checkpoints, histogram_period=t.histogram_period),
        step=StepOptions(precision=resolve_precision(cfg.precision, device),
                         channels_last=t.channels_last, clip_grad_norm=t.clip_grad_norm,
                         on_nonfinite=t.on_nonfinite),
        progress=t.progress, logger=TrainLogger(output_dir=output_dir, enabled=dist.is_main()),
        checkpoint_extra={"config": OmegaConf.to_container(cfg, resolve=True),
                          "class_names": list(train_set.class_names),
                          "label_to_cat_id": dict(train_set.label_to_cat_id)},
        stop_signal=stop_signal,
        divergence=DivergenceGuard(factor=t.divergence_factor, window=t.divergence_window))


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
        atomic_write_text(output_dir / "config.json",
                          json.dumps(OmegaConf.to_container(cfg, resolve=True), indent=1))
    log.info("device %s x %d process(es), %d iterations", device, dist.get_world_size(),
             trainer.total_iterations)
    summary = trainer.train()
    if summary["interrupted"] is None and dist.is_main():
        summary["final"] = save_checkpoint(output_dir / "checkpoints" / "final.pth", {
            **trainer.checkpointer.extra, "model": trainer.models["main"].state_dict(),
            "iteration": summary["iterations"]})
        plot_metrics(output_dir / "metrics.jsonl", output_dir / "loss_curves.png")
        detections = trainer.evaluation.last_detections
        if detections is not None:  # what tools/analyze.py reads
            save_results(output_dir / FINAL_RESULTS, detections_to_coco_results(
                detections, label_to_cat_id=trainer.checkpointer.extra["label_to_cat_id"]))
        report(summary, summary["final"], output_dir)
    return summary


def report(summary: dict, checkpoint: Path, output_dir: Path) -> None:
    metrics = summary["metrics"]
    save_metrics(output_dir / "final_metrics.json", finished_record(
        metrics, iterations=summary["iterations"], wall_time_s=summary["wall_time"],
        skipped_steps=summary["skipped_steps"]))
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
            save_metrics(Path(cfg.output_dir) / "final_metrics.json", diverged_record(
                iteration=error.iteration, lr=error.lr, terms=error.terms, reason=error.reason,
                metrics_jsonl=Path(cfg.output_dir) / "metrics.jsonl",
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


UNSTARTED = {".hydra", "train_net.log", "config.json"}  # what a run folder holds before training


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


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
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


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    check_command_line("train")  # a typo'd key or option: one line, exit code 2
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 writes run files
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    main()
