"""torchvision's FasterRCNN beside ours: python tools/bench_peer.py [experiment=NAME] [key=value ...]

The same config as training (configs/bench_peer.yaml composes configs/train.yaml: experiment=,
dataset=, schedule.iterations=, batch_size=, seed= ... mean what they mean to
tools/train_net.py), plus peer=torchvision, runs=[peer,ours] (either alone allowed),
peer_overrides={...} (torchvision FasterRCNN arguments) and output_dir= (default
outputs/bench_peer/<name>_<date>/). The peer, torchvision.models.detection.FasterRCNN on our
trunk (the same initial weights), trains on our loader with our optimiser, LR schedule,
clipping, precision, iterations, batch size and seed, its own defaults otherwise; then ours
trains as tools/train_net.py would. Both are evaluated by our COCO evaluation. Writes peer/,
ours/, comparison.md (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs, per-class AP50, s/step,
iterations, wall time; the peer's settings that differ from ours) and comparison.json, and
prints the table. End-to-end schedules only (schedule=two_stage: one line, exit code 2).

The work is ``detector_cli.bench_peer``; this file is its command line.
"""

from __future__ import annotations

import os
import sys

# as tools/train_net.py: transparent huge pages for PyTorch's CPU allocator (read when torch loads)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import hydra  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from detector_cli.bench_peer import run  # noqa: E402
from detector_cli.cli import check_command_line, exit_on_user_error  # noqa: E402


@hydra.main(config_path="../configs", config_name="bench_peer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():  # one line on stderr, exit code 2 (HYDRA_FULL_ERROR=1: trace)
        code = run(cfg)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    check_command_line("bench_peer")  # a typo'd key: one line, exit code 2
    main()
