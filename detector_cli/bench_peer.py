"""torchvision's FasterRCNN beside ours on one dataset and budget, from a composed
configs/bench_peer.yaml (``tools/bench_peer.py``; the same groups and keys as configs/train.yaml).

``run(cfg)`` checks the config (end-to-end schedules only; ``peer``, ``runs``,
``peer_overrides``), builds the datasets and the peer exactly as training builds ours (the same
seed, then datasets, anchors, our model: the peer takes its trunk, so both start from the same
trunk weights), trains the peer with our loader, optimiser (our param groups and weight-decay
rule), LR schedule, clipping, precision, memory layout and iterations (``detector.benchmark.peer``)
and evaluates it with our evaluation into ``<output_dir>/peer/``; then trains ours exactly as
``tools/train_net.py`` would into ``<output_dir>/ours/`` (``detector_cli.train.run``). It writes
``comparison.md`` and ``comparison.json`` (``detector.benchmark.peer_report``) and prints the
table. Returns the exit code (0, or 2 for a bad config or data: one line).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from detector import run_files
from detector.benchmark.peer import (
    FIXED_DIFFERENCES,
    PEERS,
    PeerDetector,
    PeerTraining,
    build_peer,
    peer_settings,
    step_time,
    train_peer,
)
from detector.benchmark.peer_report import RunResult, write_comparison
from detector.data import build_dataloader
from detector.engine.logger import memory_mb
from detector.engine.optim import param_groups
from detector.engine.state import BatchStream
from detector.errors import OptionError
from detector.evaluation import detections_to_coco_results, save_results
from detector.evaluation.inference import predict, score_detections
from detector.modeling.build import ROI_BOX_WEIGHTS, RPN_BOX_WEIGHTS
from detector.runtime import (
    apply_layout,
    resolve_device,
    resolve_layout,
    resolve_precision,
    seed_everything,
)
from detector_cli.anchors import settle_anchors
from detector_cli.checks import ConfigError, check_train_config
from detector_cli.train import build_datasets
from detector_cli.train import run as train_ours

__all__ = ["BENCH_KEYS", "RUNS", "check_bench_peer_config", "ours_settings", "prepare", "run"]

log = logging.getLogger("bench_peer")
RUNS = ("peer", "ours")
BENCH_KEYS = ("peer", "runs", "peer_overrides")  # this tool's own keys (not training's)
PEER_LOG, OURS_LOG = "peer.log", "train_net.log"


def check_bench_peer_config(cfg: DictConfig) -> list:
    """Raise ConfigError for the first bad value (this tool's keys, a schedule other than
    end-to-end, a resume, then training's own checks); returns the schedule's phases."""
    if cfg.peer not in PEERS:
        raise ConfigError(f"peer must be one of {', '.join(PEERS)}, got {cfg.peer!r}")
    runs = OmegaConf.to_object(cfg.runs) if isinstance(cfg.runs, ListConfig) else cfg.runs
    if not (isinstance(runs, list) and runs and set(runs) <= set(RUNS)
            and len(set(runs)) == len(runs)):
        raise ConfigError(f"runs must be a list of {' and/or '.join(RUNS)} (each once), got "
                          f"{cfg.runs!r}")
    if not OmegaConf.is_dict(cfg.peer_overrides):
        raise ConfigError(f"peer_overrides must be a mapping of torchvision FasterRCNN "
                          f"arguments, got {cfg.peer_overrides!r}")
    if cfg.resume not in (False, None):
        raise ConfigError(f"resume={cfg.resume}: tools/bench_peer.py trains both runs from the "
                          f"start (resume=false)")
    phases = hydra.utils.instantiate(cfg.schedule.phases)
    if len(phases) != 1 or phases[0].proposals_from is not None or phases[0].model != "main":
        raise ConfigError(f"schedule={cfg.schedule.name}: tools/bench_peer.py compares "
                          f"end-to-end training only (schedule=end_to_end)")
    check_train_config(cfg)
    return phases


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list | tuple | ListConfig):
        return ", ".join(_show(v) for v in value)
    return str(value)


def _loss(node: DictConfig, weight) -> str:
    name = str(node._target_).rsplit(".", 1)[-1]
    plain = {"BinaryCrossEntropy": "binary cross-entropy", "CrossEntropy": "softmax cross-entropy"}
    args = ", ".join(f"{k}={_show(v)}" for k, v in node.items() if k != "_target_")
    shown = plain.get(name, name) if not args else f"{name}({args})"
    return f"{shown}, weight {_show(float(weight))}"


def ours_settings(cfg: DictConfig) -> dict[str, str]:
    """Our run's settings from ``cfg``, as the display strings of ``peer_settings`` (same keys)."""
    m, c = cfg.model, cfg.loss.criterion
    weights = c.get("weights") or {}
    prior = cfg.loss.get("rpn_objectness_prior")
    pooler, head = m.get("pooler") or {}, m.get("box_head") or {}
    pool_name = str(pooler.get("_target_", "?")).rsplit(".", 1)[-1]
    size = pooler.get("output_size", 7)
    pool = (f"RoIAlign {size}x{size}, sampling {pooler.get('sampling_ratio')}, aligned "
            f"{bool(pooler.get('aligned', False))}" if pool_name == "RoIAlign"
            else f"{pool_name} {size}x{size}")
    head_name = str(head.get("_target_", "?")).rsplit(".", 1)[-1]
    return {
        "anchor_sizes": _show([float(s) for s in m.anchor_sizes]),
        "anchor_ratios": _show([float(r) for r in m.anchor_ratios]),
        "anchor_offset": _show(float(m.anchor_offset)),
        "rpn_num_samples": ("all (sampling-free)" if c.get("rpn_num_samples") is None
                            else str(c.rpn_num_samples)),
        "rpn_positive_fraction": _show(float(c.get("rpn_positive_fraction", 0.5))),
        "rpn_fg_iou / bg_iou": _show((float(c.get("rpn_fg_iou", 0.7)),
                                      float(c.get("rpn_bg_iou", 0.3)))),
        "rpn_pre_nms_top_n (train, test)": _show(list(m.rpn_pre_nms_top_n)),
        "rpn_post_nms_top_n (train, test)": _show(list(m.rpn_post_nms_top_n)),
        "rpn_nms_threshold": _show(float(m.rpn_nms_threshold)),
        "rpn_cls_loss": _loss(c.rpn_cls_loss, weights.get("loss_rpn_cls", 1.0)),
        "rpn_box_loss": f"smooth L1 beta {_show(float(c.get('rpn_box_beta', 1 / 9)))}, weight "
                        f"{_show(float(weights.get('loss_rpn_box', 1.0)))}, / "
                        + ("positive anchors" if c.get("rpn_num_samples") is None
                           else "sampled anchors"),
        "rpn_objectness_prior": "none (bias 0)" if prior is None else f"p = {_show(float(prior))}",
        "roi_num_samples": ("all proposals" if m.roi_num_samples is None
                            else str(m.roi_num_samples)),
        "roi_positive_fraction": _show(float(m.roi_positive_fraction)),
        "roi_fg_iou / bg_iou": _show((float(m.roi_fg_iou), float(m.roi_fg_iou)))
                               + ("" if float(m.roi_bg_iou_low) == 0 else
                                  f" (bg from {_show(float(m.roi_bg_iou_low))})"),
        "roi_cls_loss": _loss(c.roi_cls_loss, weights.get("loss_cls", 1.0)),
        "roi_box_loss": f"smooth L1 beta {_show(float(c.get('roi_box_beta', 1.0)))}, weight "
                        f"{_show(float(weights.get('loss_box', 1.0)))}, / "
                        + ("foreground RoIs" if c.get("roi_normalize_by_positives")
                           else "sampled RoIs"),
        "box_coder_weights (rpn; roi)": f"{_show(RPN_BOX_WEIGHTS)}; {_show(ROI_BOX_WEIGHTS)}",
        "pooler": pool,
        "box_head": (f"2 fc, {head.get('hidden_dim')} wide" if head_name == "MLPBoxHead"
                     else head_name),
        "score_threshold": _show(float(m.score_threshold)),
        "nms": f"{m.get('nms', 'hard')}, IoU {_show(float(m.nms_threshold))}",
        "max_detections": str(m.max_detections),
    }


@contextlib.contextmanager
def _log_file(path: Path) -> Iterator[None]:
    """Also write the log records of the block into ``path``."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def prepare(cfg: DictConfig):
    """(datasets, the peer) built as training builds ours: the same seed, then the datasets,
    the anchors (``auto`` settled in ``cfg``), our model, whose trunk the peer takes."""
    seed_everything(cfg.seed)
    train_set, val_set = build_datasets(cfg)
    settle_anchors(cfg, train_set)
    num_classes = len(train_set.class_names)
    ours = hydra.utils.instantiate(cfg.model, num_classes=num_classes)
    overrides = OmegaConf.to_container(cfg.peer_overrides, resolve=True)
    # one evaluation for both: the peer drops class scores under our model's cut (torchvision's
    # own default is 0.05), unless peer_overrides.box_score_thresh says otherwise
    overrides.setdefault("box_score_thresh", float(cfg.model.score_threshold))
    try:
        model = build_peer(trunk=ours.backbone, num_classes=num_classes,
                           anchor_sizes=list(cfg.model.anchor_sizes),
                           anchor_ratios=list(cfg.model.anchor_ratios), overrides=overrides)
    except OptionError as error:
        raise ConfigError(str(error)) from error
    return train_set, val_set, PeerDetector(model=model)


def _peer_run(cfg: DictConfig, folder: Path, parts, iterations: int) -> RunResult:
    """Train and evaluate the peer into ``folder`` (peer.log, metrics.jsonl,
    final_metrics.json, final_results.json)."""
    train_set, val_set, peer = parts
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    peer.to(device)
    layout = resolve_layout(cfg.train.channels_last, device, precision)
    memory_format = apply_layout(peer, layout)
    optimizer = hydra.utils.instantiate(cfg.optimizer)(
        param_groups(peer, weight_decay=cfg.optimizer.get("weight_decay", 0.0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, hydra.utils.instantiate(cfg.schedule.lr)(total_iters=iterations))
    shard = dict(num_workers=cfg.num_workers, seed=cfg.seed)
    batches = BatchStream(build_dataloader(dataset=train_set, batch_size=cfg.batch_size,
                                           train=True, **shard))
    log.info("peer: torchvision FasterRCNN, device %s, precision %s, %d iterations", device,
             precision, iterations)
    start = time.perf_counter()
    done = train_peer(peer, batches=batches, optimizer=optimizer, scheduler=scheduler,
                      device=device, options=PeerTraining(
                          iterations=iterations, precision=precision,
                          clip_grad_norm=cfg.train.clip_grad_norm,
                          log_period=cfg.train.log_period, progress=cfg.train.progress,
                          memory_format=memory_format),
                      metrics_path=folder / run_files.METRICS,
                      memory_mb=functools.partial(memory_mb, device))
    batches.close()
    if done.diverged is not None:
        return RunResult(name="peer", folder=str(folder), status=run_files.DIVERGED,
                         iterations=done.iterations, note=done.diverged,
                         wall_time_s=time.perf_counter() - start)
    val_loader = build_dataloader(dataset=val_set, batch_size=cfg.train.eval_batch_size,
                                  train=False, **shard)
    detections = predict(peer, val_loader, device=device, precision=precision,
                         progress=cfg.train.progress, desc="eval peer")
    metrics = score_detections(val_set, detections)
    wall = time.perf_counter() - start
    save_results(folder / run_files.FINAL_RESULTS, detections_to_coco_results(
        detections, label_to_cat_id=val_set.label_to_cat_id))
    run_files.write_final_metrics(folder, run_files.finished_record(
        metrics, iterations=done.iterations, wall_time_s=wall))
    return RunResult(name="peer", folder=str(folder), status=run_files.FINISHED, metrics=metrics,
                     iterations=done.iterations, wall_time_s=wall,
                     sec_per_step=step_time(run_files.read_metrics_jsonl(
                         folder / run_files.METRICS)))


def _ours_run(cfg: DictConfig, folder: Path) -> RunResult:
    """Train ours as tools/train_net.py would, into ``folder``; its row from its run files."""
    ours = copy.deepcopy(cfg)
    with open_dict(ours):
        for key in BENCH_KEYS:
            ours.pop(key)
        ours.output_dir = str(folder)
    code = train_ours(ours)
    record = run_files.read_final_metrics(folder)
    metrics_path = folder / run_files.METRICS
    seconds = step_time(run_files.read_metrics_jsonl(metrics_path)) if metrics_path.is_file() \
        else None
    if not isinstance(record, dict):
        return RunResult(name="ours", folder=str(folder), status="failed",
                         note=f"tools/train_net.py exited with code {code} (see {OURS_LOG})")
    status = record.get("status", run_files.FINISHED)
    completed = status in run_files.COMPLETED
    return RunResult(name="ours", folder=str(folder), status=status,
                     metrics=record if completed and "AP" in record else None,
                     iterations=int(record.get("iterations", 0)), sec_per_step=seconds,
                     wall_time_s=record.get("wall_time_s"),
                     note=None if completed else record.get("reason"))


def _notes(cfg: DictConfig) -> list[str]:
    notes = list(FIXED_DIFFERENCES)
    if cfg.train.get("ema_decay") is not None:
        notes.append(f"ours evaluates a weight average (train.ema_decay={cfg.train.ema_decay}); "
                     f"the peer its raw weights")
    if cfg.train.eval_period:
        notes.append(f"ours also evaluates every {cfg.train.eval_period} iterations (in its "
                     f"wall time)")
    notes.append("s/step: the median seconds per step of the training log points "
                 "(train.log_period; the first left out when there are several), data loading "
                 "included; wall time: training and the final evaluation")
    return notes


def run(cfg: DictConfig) -> int:
    """Check, run the peer and ours (``cfg.runs``), write and print the comparison; the exit
    code."""
    phases = check_bench_peer_config(cfg)
    folder = Path(str(cfg.output_dir))
    settled = copy.deepcopy(cfg)  # anchors: auto -> numbers (ours fits the same ones again)
    parts = prepare(settled)
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for name in cfg.runs:
        sub = folder / name
        sub.mkdir(parents=True, exist_ok=True)
        with _log_file(sub / (PEER_LOG if name == "peer" else OURS_LOG)):
            results.append(_peer_run(settled, sub, parts, phases[0].iterations) if name == "peer"
                           else _ours_run(cfg, sub))
    text = write_comparison(
        folder, results, peer_settings=peer_settings(parts[2].model),
        ours_settings=ours_settings(settled), notes=_notes(cfg),
        extra={"peer": cfg.peer, "dataset": cfg.dataset.name, "loss": cfg.loss.name,
               "iterations": phases[0].iterations, "batch_size": cfg.batch_size,
               "seed": cfg.seed, "optimizer": str(cfg.optimizer._target_),
               "lr": float(cfg.optimizer.lr), "precision": str(cfg.precision),
               "peer_overrides": OmegaConf.to_container(cfg.peer_overrides, resolve=True)})
    print(text, flush=True)
    print(f"comparison: {folder / 'comparison.md'} (and comparison.json, peer/, ours/)",
          flush=True)
    return 0
