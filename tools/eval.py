"""COCO mAP (or Pascal VOC mAP) of a trained checkpoint, or of a saved results file:
python tools/eval.py [checkpoint=PATH] [dataset=... ...] [metric=coco|voc07|voc|[...]]
python tools/eval.py dataset=... results=PATH.json [metric=...]   # no model needed

With no arguments: the newest outputs/**/checkpoints/final.pth, on its own run's val split.
Prints the 12-number COCO table and per-class AP (metric=voc07/voc: the devkit's mAP and a
per-class table); writes, beside the checkpoint,
<name>_<split>_metrics.json (with "pr_iou50": precision at 101 recall points per class at IoU
0.5), <name>_<split>_results.json (COCO results: original category ids,
xywh) and <name>_<split>_detections/*.png (val images with their detections drawn).

The work is ``detector_cli.evaluate``; this file is its command line.
"""

from __future__ import annotations

import os

# Transparent huge pages for PyTorch's CPU allocator (read when torch loads): far fewer page faults
# on large temporaries (tools/bench_ops.py: 24 instead of 35 ms). An exported value wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from detector_cli.cli import check_command_line, exit_on_user_error  # noqa: E402
from detector_cli.evaluate import run  # noqa: E402


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():  # one line on stderr, exit code 2 (HYDRA_FULL_ERROR=1: trace)
        run(cfg)


if __name__ == "__main__":
    check_command_line("eval")
    main()
