"""Export a trained model to ONNX from a composed configs/export.yaml (``tools/export.py``).

``run(cfg)`` checks the config, exports ``cfg.checkpoint`` (or the newest ``final.pth``) to
``cfg.output`` (or beside it, .onnx) for the input size ``cfg.height`` x ``cfg.width`` (or the
run's), prints what it wrote and the command that runs it, and returns the file's path.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from detector.predict.inputs import printable
from detector.predict.onnx_export import export_checkpoint
from detector_cli.checks import check_export_config
from detector_cli.cli import command_arg, counted, resolve_checkpoint

__all__ = ["run"]


def run(cfg: DictConfig) -> Path:
    check_export_config(cfg)
    checkpoint = resolve_checkpoint(cfg)
    output = Path(cfg.output) if cfg.output else checkpoint.with_suffix(".onnx")
    start = time.perf_counter()
    # loaded in onnxruntime before it takes its name: the file is usable, or there is none
    result = export_checkpoint(checkpoint, output, height=cfg.height, width=cfg.width)
    seconds = time.perf_counter() - start
    height, width = result.input_size
    print(f"exported {printable(checkpoint)} in {seconds:.1f} s: input {height} x {width} (any "
          f"batch), {counted(len(result.metadata['class_names']), 'class', 'classes')}, "
          f"{result.path.stat().st_size / 2**20:.1f} MiB")
    print(f"wrote {printable(result.path)}; run it with: python tools/predict.py input=PATH "
          f"backend=onnxruntime {printable(command_arg('onnx', result.path))}")
    return result.path
