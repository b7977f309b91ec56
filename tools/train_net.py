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
each in outputs/multirun/<date_time>/<its overrides>/ (output_dir follows it); detector_cli.sweep
indexes the jobs in sweep.jsonl / sweep.md. A diverged job writes final_metrics.json with status
diverged and the sweep goes on; a bad config or missing data stops it (exit code 2).

The work is ``detector_cli.train`` (build, run, report); this file is its command line.
"""

from __future__ import annotations

import os
import sys

# Transparent huge pages for PyTorch's CPU allocator (read when torch loads): far fewer page faults
# on large temporaries (tools/bench_ops.py: 24 instead of 35 ms). An exported value wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from detector_cli import train  # noqa: E402
from detector_cli.cli import check_command_line  # noqa: E402


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train.main(cfg)


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    check_command_line("train")  # a typo'd key or option: one line, exit code 2
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun only rank 0 writes run files
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    main()
