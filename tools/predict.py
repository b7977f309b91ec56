"""Detect objects in your own files: python tools/predict.py input=PATH [checkpoint=PATH] [output=DIR]

PATH is an image, a folder (recursive), a glob ("photos/**/*.jpg", quoted) or a video (mp4, avi,
mov, ...). Without checkpoint: the newest outputs/**/checkpoints/final.pth. Writes annotated
images (and .mp4 videos) plus detections.json into output (default outputs/predict/<date_time>)
and prints a summary; unreadable files are skipped and named. backend=onnxruntime runs the
exported model (tools/export.py) instead of PyTorch: onnx=PATH.onnx, or the checkpoint's .onnx.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli import check_command_line, exit_on_user_error, resolve_checkpoint  # noqa: E402
from config_checks import ConfigError, check_predict_config  # noqa: E402

from detector.predict.files import output_paths, predict_files  # noqa: E402
from detector.predict.inputs import InputError, collect_inputs, printable  # noqa: E402
from detector.predict.onnx_predictor import OnnxModelError, OnnxPredictor  # noqa: E402
from detector.predict.predictor import Predictor  # noqa: E402


def build_predictor(cfg: DictConfig):
    if cfg.backend == "onnxruntime":
        model = Path(cfg.onnx) if cfg.onnx else resolve_checkpoint(cfg).with_suffix(".onnx")
        if not model.is_file():
            raise ConfigError(f"ONNX model {model} does not exist; write it with "
                              f"python tools/export.py or pass onnx=PATH.onnx")
        return OnnxPredictor.from_file(model, batch_size=cfg.batch_size)
    if cfg.backend != "torch":
        raise ConfigError(f"backend must be torch or onnxruntime, got {cfg.backend!r}")
    return Predictor.from_checkpoint(resolve_checkpoint(cfg), device=cfg.device,
                                     precision=cfg.precision, batch_size=cfg.batch_size)


def run(cfg: DictConfig) -> None:
    check_predict_config(cfg)
    inputs = collect_inputs(cfg.input)  # fails fast, before the model loads
    output = Path(cfg.output or Path(cfg.outputs_root) / "predict" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    output_paths(inputs, output)  # never over an input file
    predictor = build_predictor(cfg)
    source = predictor.info.get("model") or predictor.info.get("checkpoint")
    print(f"{len(inputs.images)} images, {len(inputs.videos)} videos from "
          f"{printable(cfg.input)}; model {printable(source)} ({cfg.backend})")
    report = predict_files(predictor, inputs, output, score_threshold=cfg.score_threshold,
                           progress=cfg.progress,
                           metadata={"input": str(cfg.input), "model": str(source),
                                     "backend": cfg.backend, "class_names": predictor.class_names})
    print(report.summary())


@hydra.main(config_path="../configs", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(InputError, OnnxModelError):
        run(cfg)


if __name__ == "__main__":
    check_command_line("predict")  # a typo'd key: one line, exit code 2
    main()
