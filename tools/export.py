"""Export a trained model to ONNX: python tools/export.py [checkpoint=PATH] [output=model.onnx]
[height=H width=W]

Without checkpoint: the newest outputs/**/checkpoints/final.pth; without output: beside it
(final.pth -> final.onnx), where tools/predict.py backend=onnxruntime looks by default. The graph
holds the whole inference path for a fixed padded input size (default: the run's max_size rounded
up to 32, square) and a dynamic batch: inputs images [B,3,H,W] (resized, normalised, zero-padded)
and image_sizes [B,2]; outputs boxes [B,D,4], scores [B,D], labels [B,D], valid [B,D].

The work is ``detector_cli.export``; this file is its command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from detector.predict.onnx_export import ExportError
from detector.predict.onnx_predictor import OnnxModelError
from detector_cli.cli import check_command_line, exit_on_user_error
from detector_cli.export import run


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(ExportError, OnnxModelError):
        run(cfg)


if __name__ == "__main__":
    check_command_line("export")  # a typo'd key: one line, exit code 2
    main()
