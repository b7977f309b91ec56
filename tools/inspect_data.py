"""Look at the data before training: python tools/inspect_data.py [experiment=NAME] [dataset=...]

The same config as training (configs/inspect_data.yaml composes configs/train.yaml: experiment=,
dataset=, dataset.root=, the anchors and every other override mean what they mean to
tools/train_net.py), plus split=train|val, num_images=16, output_dir=, seed=. Writes, into
output_dir (default outputs/inspect_data/<dataset>_<split>/): contact_sheet.png (samples after
the training transforms, ground truth drawn), boxes.png (box width/height and aspect ratio per
class against the anchors) and report.md (boxes per class, imbalance, images without boxes, tiny
and duplicate boxes, the loader's data problems, anchor coverage per class and size, advice);
prints the summary, with ``anchor coverage (IoU >= 0.5): NN.N %``, and the folder.

The work is ``detector_cli.inspect_data``; this file is its command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from detector_cli.cli import check_command_line, exit_on_user_error
from detector_cli.inspect_data import run


@hydra.main(config_path="../configs", config_name="inspect_data", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():  # one line on stderr, exit code 2 (HYDRA_FULL_ERROR=1: trace)
        run(cfg)


if __name__ == "__main__":
    check_command_line("inspect_data")  # a typo'd key: one line, exit code 2
    main()
