"""Where a training step's time goes, by operator group (``tools/profile_step.py``).

``main(argv)`` builds exactly the run ``tools/train_net.py experiment=focal key=value ...`` would
build (``detector_cli.train.build_trainer``) in a temporary folder, times ``--timed`` steps after
``--warmup``, profiles ``--profiled`` more under ``torch.profiler`` and prints seconds per step
and the CPU time per operator group (``GROUPS``, ``group_of``, ``operator_groups``).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from detector.engine.guard import StopSignal
from detector.runtime import resolve_device, resolve_precision, seed_everything
from detector_cli.checks import CONFIG_DIR, check_train_config
from detector_cli.cli import quote_path_overrides
from detector_cli.train import build_trainer

__all__ = ["GROUPS", "group_of", "main", "operator_groups", "parse_args"]


# (group, substrings of an operator's name); the first group that matches takes the operator
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("waiting for data", ("enumerate(DataLoader)", "DataLoader")),
    ("conv backward", ("convolution_backward",)),
    ("conv forward", ("convolution",)),
    ("batch norm", ("batch_norm",)),
    ("RoI pooling", ("roi_pool", "roi_align", "sparse", "_coalesce", "index_add")),
    ("matrix products (linear, RPN/box heads)", ("addmm", "::mm", "bmm", "matmul", "linear")),
    ("ReLU, max-pool", ("relu", "threshold_backward", "max_pool")),
    ("optimiser, gradient norm", ("_foreach", "adam", "sgd", "norm", "lerp", "addcdiv")),
    ("NMS, top-k, sort", ("nms", "topk", "sort")),
    ("copies, layout, allocation", ("copy_", "clone", "contiguous", "empty", "zero_", "fill_",
                                    "cat", "stack", "to_dense", "_to_copy")),
)


def group_of(name: str) -> str:
    """The group an operator's name falls in ("other elementwise / indexing" when none)."""
    for group, keys in GROUPS:
        if any(key in name for key in keys):
            return group
    return "other (elementwise, indexing, losses)"


def operator_groups(events, steps: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Self CPU milliseconds per step of each group and of each operator, from a profiler's
    ``key_averages()``; both sorted by time, largest first."""
    groups: dict[str, float] = {}
    ops: list[tuple[str, float]] = []
    for event in events:
        ms = event.self_cpu_time_total / 1000 / steps
        if ms <= 0:
            continue
        group = group_of(event.key)
        groups[group] = groups.get(group, 0.0) + ms
        ops.append((event.key, ms))
    ordered = dict(sorted(groups.items(), key=lambda kv: -kv[1]))
    return ordered, sorted(ops, key=lambda kv: -kv[1])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Where a training step's time goes, by "
                                                 "operator group (see tools/profile_step.py).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=3, help="steps before anything is measured")
    parser.add_argument("--timed", type=int, default=10, help="steps timed without the profiler")
    parser.add_argument("--profiled", type=int, default=5, help="steps under torch.profiler")
    parser.add_argument("--top", type=int, default=15, help="also print the K costliest operators")
    parser.add_argument("--trace", type=Path, default=None, help="write a Chrome trace here")
    parser.add_argument("--by-shape", action="store_true",
                        help="the costliest operators split by input shapes (records shapes)")
    parser.add_argument("overrides", nargs="*", help="train.yaml overrides (key=value)")
    args = parser.parse_args(argv)
    if min(args.warmup, args.timed, args.profiled) < 0 or args.timed + args.profiled == 0:
        parser.error("--warmup, --timed and --profiled are >= 0, and something is measured")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    # one more step between the timed and the profiled ones: the profiler's own warm-up
    total = args.warmup + args.timed + (1 + args.profiled if args.profiled else 0)
    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        overrides = ["experiment=focal", "train.progress=false", f"output_dir={tmp}/run",
                     *quote_path_overrides(args.overrides)]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        check_train_config(cfg)
        if cfg.schedule.iterations < total:
            print(f"error: the run has {cfg.schedule.iterations} iterations, fewer than the "
                  f"{total} steps asked for (schedule.iterations=, --warmup/--timed/--profiled)",
                  file=sys.stderr)
            return 2
        device = resolve_device(cfg.device)
        seed_everything(cfg.seed)
        stop = StopSignal()
        trainer = build_trainer(cfg, Path(tmp) / "run", device, stop)
        clock: list[float] = [time.perf_counter()]
        profiler = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]
            + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []),
            schedule=torch.profiler.schedule(wait=args.warmup + args.timed, warmup=1,
                                             active=max(1, args.profiled), repeat=1),
            record_shapes=args.by_shape)

        def on_step(iteration: int) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            clock.append(time.perf_counter())
            if args.profiled:
                profiler.step()
            if iteration >= total:
                stop.request("profile done")

        trainer.on_step = on_step
        print(f"profiling {cfg.name}: device {device}, precision "
              f"{resolve_precision(cfg.precision, device)}, {torch.get_num_threads()} threads, "
              f"batch {cfg.batch_size}, {args.warmup} + {args.timed} + 1 + {args.profiled} steps",
              flush=True)
        with profiler:
            trainer.train()
    seconds = [b - a for a, b in zip(clock[:-1], clock[1:], strict=True)]
    timed = seconds[args.warmup:args.warmup + args.timed]
    profiled = seconds[total - args.profiled:total] if args.profiled else []
    if timed:
        print(f"s/it (timed, {len(timed)} steps): median {statistics.median(timed):.3f}, "
              f"mean {statistics.fmean(timed):.3f}, min {min(timed):.3f}")
    if not profiled:
        return 0
    step_ms = 1000 * statistics.fmean(profiled)
    print(f"s/it (profiled, {len(profiled)} steps): mean {step_ms / 1000:.3f}")
    groups, ops = operator_groups(profiler.key_averages(), len(profiled))
    cpu_ms = sum(groups.values())
    print(f"\nCPU time per step by operator group (self time; {cpu_ms:.0f} ms of operators in "
          f"{step_ms:.0f} ms of wall time):")
    for group, ms in groups.items():
        print(f"  {group:<42s} {ms:9.1f} ms  {100 * ms / cpu_ms:5.1f} %")
    if args.top:
        print(f"\nthe {args.top} costliest operators (self CPU ms per step):")
        for name, ms in ops[:args.top]:
            print(f"  {name[:60]:<60s} {ms:9.1f}  [{group_of(name)}]")
    if args.by_shape:
        by_shape = sorted(profiler.key_averages(group_by_input_shape=True),
                          key=lambda e: -e.self_cpu_time_total)
        print(f"\nthe {args.top} costliest operator calls by input shapes (self CPU ms per step):")
        for event in by_shape[:args.top]:
            shapes = ", ".join(str(s) for s in event.input_shapes if s)[:70]
            print(f"  {event.key[:28]:<28s} {event.self_cpu_time_total / 1000 / len(profiled):8.1f}"
                  f"  {shapes}")
    if args.trace is not None:
        profiler.export_chrome_trace(str(args.trace))
        print(f"trace: {args.trace}")
    return 0
