"""Export a trained model to ONNX: python tools/export.py [checkpoint=PATH] [output=model.onnx]
[height=H width=W]

Without checkpoint: the newest outputs/**/checkpoints/final.pth; without output: beside it
(final.pth -> final.onnx), where tools/predict.py backend=onnxruntime looks by default. The graph
holds the whole inference path for a fixed padded input size (default: the run's max_size rounded
up to 32, square) and a dynamic batch: inputs images [B,3,H,W] (resized, normalised, zero-padded)
and image_sizes [B,2]; outputs boxes [B,D,4], scores [B,D], labels [B,D], valid [B,D].
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli import check_command_line, command_arg, exit_on_user_error, resolve_checkpoint  # noqa: E402
from config_checks import check_export_config  # noqa: E402

from detector.predict.inputs import printable  # noqa: E402
from detector.predict.onnx_export import ExportError, export_checkpoint  # noqa: E402
from detector.predict.onnx_predictor import OnnxModelError  # noqa: E402


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
          f"batch), {len(result.metadata['class_names'])} classes, "
          f"{result.path.stat().st_size / 2**20:.1f} MiB")
    print(f"wrote {printable(result.path)}; run it with: python tools/predict.py input=PATH "
          f"backend=onnxruntime {printable(command_arg('onnx', result.path))}")
    return result.path


@hydra.main(config_path="../configs", config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(ExportError, OnnxModelError):
        run(cfg)


if __name__ == "__main__":
    check_command_line("export")  # a typo'd key: one line, exit code 2
    main()
