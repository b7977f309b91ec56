"""Detect objects in files from a composed configs/predict.yaml (``tools/predict.py``).

``build_predictor(cfg)`` is the PyTorch ``Predictor`` of ``cfg.checkpoint`` (or the newest
``final.pth``) or, with ``backend=onnxruntime``, the ``OnnxPredictor`` of ``cfg.onnx`` (or the
checkpoint's .onnx); ``run(cfg)`` checks the config, collects the inputs (before the model
loads), predicts and writes annotated files plus detections.json, and prints a summary.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from detector.predict.files import output_paths, predict_files
from detector.predict.inputs import collect_inputs, printable
from detector.predict.onnx_predictor import OnnxPredictor
from detector.predict.predictor import Predictor, min_score_note
from detector_cli.checks import ConfigError, check_predict_config
from detector_cli.cli import counted, resolve_checkpoint

__all__ = ["build_predictor", "run"]


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
                                     precision=cfg.precision, batch_size=cfg.batch_size,
                                     tta=cfg.get("tta", False))


def run(cfg: DictConfig) -> None:
    check_predict_config(cfg)
    inputs = collect_inputs(cfg.input)  # fails fast, before the model loads
    output = Path(cfg.output or Path(cfg.outputs_root) / "predict" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    output_paths(inputs, output)  # never over an input file
    predictor = build_predictor(cfg)
    source = predictor.info.get("model") or predictor.info.get("checkpoint")
    note = min_score_note(cfg.min_score, getattr(predictor, "score_threshold", None))
    if note is not None:
        print(f"note: {note}")
    print(f"{counted(len(inputs.images), 'image')}, {counted(len(inputs.videos), 'video')} from "
          f"{printable(cfg.input)}; model {printable(source)} ({cfg.backend})")
    report = predict_files(predictor, inputs, output, min_score=cfg.min_score,
                           progress=cfg.progress,
                           metadata={"input": str(cfg.input), "model": str(source),
                                     "backend": cfg.backend, "class_names": predictor.class_names})
    print(report.summary())
