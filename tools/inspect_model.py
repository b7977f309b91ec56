"""Inside a trained model: python tools/inspect_model.py [checkpoint=A] [checkpoint_b=B]

Per layer (conv, BN, linear): count, mean |w|, std, near-zero fractions (absolute and relative
thresholds); BN gammas and the prunable channels; activation statistics after every backbone ReLU
on ``num_images`` images of the run's own validation set (mean, std, zeros, dead channels). With
checkpoint_b the two runs are side by side. Writes report.md + PNGs (one weight-histogram grid per
block) into one folder, prints the per-block summary table and the folder.

The work is ``detector_cli.inspect_model``; this file is its command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from detector_cli.cli import check_command_line, exit_on_user_error
from detector_cli.inspect_model import run


@hydra.main(config_path="../configs", config_name="inspect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        run(cfg)


if __name__ == "__main__":
    check_command_line("inspect")  # a typo'd key: one line, exit code 2
    main()
