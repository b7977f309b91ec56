"""Detect objects in your own files: python tools/predict.py input=PATH [checkpoint=PATH] [output=DIR]

PATH is an image, a folder (recursive), a glob ("photos/**/*.jpg", quoted) or a video (mp4, avi,
mov, ...). Without checkpoint: the newest outputs/**/checkpoints/final.pth. Writes annotated
images (and .mp4 videos) plus detections.json into output (default outputs/predict/<date_time>)
and prints a summary; unreadable files are skipped and named. backend=onnxruntime runs the
exported model (tools/export.py) instead of PyTorch: onnx=PATH.onnx, or the checkpoint's .onnx.

The work is ``detector_cli.predict``; this file is its command line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from detector.predict.inputs import InputError
from detector.predict.onnx_predictor import OnnxModelError
from detector_cli.cli import check_command_line, exit_on_user_error
from detector_cli.predict import run


@hydra.main(config_path="../configs", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(InputError, OnnxModelError):
        run(cfg)


if __name__ == "__main__":
    check_command_line("predict")  # a typo'd key: one line, exit code 2
    main()
