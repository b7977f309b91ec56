"""Export the whole inference path of a trained model to one self-contained ONNX file.

    >>> from detector.predict.onnx_export import export_checkpoint
    >>> export_checkpoint("outputs/.../checkpoints/final.pth", "model.onnx")

The graph (B images, a dynamic batch; H x W, the fixed padded input size; D detections)::

    images [B,3,H,W] float32 (resized, ImageNet-normalised, zero-padded bottom/right)
    image_sizes [B,2] int64 (h, w) of each image before padding
      -> backbone -> anchors (constants of the H x W grid) -> RPN -> top-k, NMS -> proposals
      -> RoIPool/RoIAlign -> box head -> softmax, per-class decode, clip, score > threshold,
         class-wise NMS, top D
      -> boxes [B,D,4] float32 xyxy pixels of the resized image, scores [B,D] float32,
         labels [B,D] int64 (1..K), valid [B,D] bool (padding rows are all zero)

Resizing, normalisation and mapping boxes back to original pixels stay outside the graph: they
are ``detector.predict.onnx_predictor.OnnxPredictor``'s job, with the same code ``Predictor`` uses.
The file's ``metadata_props`` carry what that needs (``detector.*`` keys, JSON values): class
names, category ids, input size, resize settings, normalisation, the source checkpoint.

Export uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``):
torchvision registers ONNX symbolics for ``nms`` (NonMaxSuppression), ``roi_pool``
(MaxRoiPool) and ``roi_align`` (RoiAlign) there. The model's padded, static-shape design is what
makes the graph exportable as it is: every tensor has a fixed size except the candidate lists
that NMS takes, and those are produced with ``nonzero`` inside the graph.
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from detector.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from detector.errors import UserError
from detector.modeling.spec import (
    MAX_IMAGE_SIDE,
    checked_label_map,
    model_from_checkpoint,
    read_checkpoint,
)
from detector.predict.onnx_predictor import (
    INPUT_NAMES,
    METADATA_PREFIX,
    OUTPUT_NAMES,
    OnnxPredictor,
)
from detector.predict.predictor import resize_settings

__all__ = ["INPUT_NAMES", "METADATA_PREFIX", "OUTPUT_NAMES", "DetectionGraph", "ExportError",
           "ExportResult",
           "default_input_size", "export_checkpoint", "export_onnx"]

OPSET = 17  # RoiAlign's half_pixel mode (aligned=True) needs >= 16


class ExportError(UserError, ValueError):
    """A bad export setting (input size, output path)."""


class DetectionGraph(nn.Module):
    """A ``FasterRCNN`` as one function from a padded batch to padded detections (the ONNX graph).

    Args:
        model (FasterRCNN): in eval mode.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """images (Tensor[B, 3, H, W]), image_sizes (LongTensor[B, 2]) -> boxes (Tensor[B, D, 4])
        xyxy resized pixels, scores (Tensor[B, D]), labels (LongTensor[B, D]), valid
        (BoolTensor[B, D]); padding rows are zero."""
        out = self.model(images, image_sizes, detect=True)
        boxes, scores, labels, valid = self.model.postprocessor.padded(
            out["proposals"], out["proposal_valid"], out["pred_det_logits"],
            out["pred_det_deltas"], image_sizes)
        return (boxes * valid[..., None], scores * valid, labels * valid, valid)


def default_input_size(min_size: int, max_size: int, divisible: int = 32) -> tuple[int, int]:
    """(H, W) that holds every image the eval resize can produce: the resized shorter side is at
    most ``min_size`` and the longer at most ``max_size``, so a ``max_size`` square, rounded up
    to ``divisible`` as the PyTorch collate pads, fits both orientations."""
    del min_size  # the longer side bounds both
    side = (int(max_size) + divisible - 1) // divisible * divisible
    return side, side


def _trace(model: nn.Module, path: Path, *, height: int, width: int, metadata: dict | None,
           opset: int) -> None:
    """Write the traced graph of ``model`` with ``metadata`` into ``path``."""
    import onnx

    graph = DetectionGraph(model.eval().float().cpu()).eval()
    images = torch.zeros(2, 3, int(height), int(width))
    sizes = torch.tensor([[height, width], [height, width]], dtype=torch.long)
    dynamic = {name: {0: "batch"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on Python ints: the sizes are fixed here
        torch.onnx.export(graph, (images, sizes), str(path), dynamo=False, opset_version=opset,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic)
    proto = onnx.load(str(path))
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_onnx(model: nn.Module, path: str | Path, *, height: int, width: int,
                metadata: dict | None = None, opset: int = OPSET,
                verify: Callable[[Path], object] | None = None) -> Path:
    """Trace ``DetectionGraph(model)`` at input size ``height`` x ``width`` into ``path``.

    The batch dimension is dynamic. ``metadata`` values are stored JSON-encoded in the file's
    ``metadata_props`` under ``detector.<key>``. The file is written under a temporary name
    beside ``path``, checked (``verify(temporary path)``, e.g. loading it), and only then renamed
    to ``path`` (atomically, over an earlier export): a failure leaves no file behind.

    Raises:
        ExportError: ``path`` is an existing folder.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"output={path} is a folder: name the .onnx file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        _trace(model, partial, height=height, width=width, metadata=metadata, opset=opset)
        if verify is not None:
            verify(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class ExportResult:
    """path of the written file, input (height, width), and the metadata stored in it."""

    path: Path
    input_size: tuple[int, int]
    metadata: dict


def _input_size(height: int | None, width: int | None, min_size: int | None,
                max_size: int) -> tuple[int, int]:
    """(H, W) of the export: ``height``/``width`` or ``default_input_size``, multiples of 16 in
    32..``MAX_IMAGE_SIDE`` that hold a square image as the run resizes it."""
    default = default_input_size(min_size, max_size)
    size = (int(height or default[0]), int(width or default[1]))
    if min(size) < 32 or max(size) > MAX_IMAGE_SIDE or size[0] % 16 or size[1] % 16:
        raise ExportError(f"height and width must be multiples of 16 (the backbone's stride), at "
                          f"least 32 and at most {MAX_IMAGE_SIDE}; got {size[0]} x {size[1]}")
    if min_size is not None and min(size) < min(min_size, max_size):
        side = min(min_size, max_size)
        raise ExportError(f"an input of {size[0]} x {size[1]} cannot hold the {side} x {side} a "
                          f"square image resizes to (the run's min_size {min_size}, max_size "
                          f"{max_size}): give height and width of at least {side}")
    return size


def _check_output(checkpoint: Path, output: Path) -> None:
    """The export never replaces the checkpoint it reads."""
    if output.exists() and output.resolve() == checkpoint.resolve():
        raise ExportError(f"output={output} is the checkpoint itself: name another .onnx file")


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, height: int | None = None,
                      width: int | None = None) -> ExportResult:
    """Export a ``tools/train_net.py`` checkpoint; ``height``/``width`` default to
    ``default_input_size`` of the run's ``min_size``/``max_size``. The file is loaded with
    ``OnnxPredictor`` before it takes its name (``export_onnx``): nothing is left on a failure.

    Raises:
        FileNotFoundError, CheckpointError, SpecError: as ``read_checkpoint`` and
            ``model_from_checkpoint`` (a refused checkpoint, a ``min_size``/``max_size`` outside
            1..4096, a bad ``label_to_cat_id``: SpecError).
        ExportError: an input size below 32, above 4096, not a multiple of 16 or too small for
            a square image as the run resizes it; ``output`` is a folder or the checkpoint
            itself.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    _check_output(checkpoint, output)
    state = read_checkpoint(checkpoint)
    where = f"checkpoint {checkpoint}"
    min_size, max_size = resize_settings(state["config"].get("dataset", {}), where=where)
    size = _input_size(height, width, min_size, max_size)
    cat_ids = checked_label_map(state.get("label_to_cat_id", {}), path=f"{where}: label_to_cat_id")
    metadata = {
        "class_names": list(state["class_names"]),
        "label_to_cat_id": {str(k): v for k, v in cat_ids.items()},
        "input_size": list(size), "min_size": min_size, "max_size": max_size,
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "checkpoint": str(checkpoint), "iteration": state.get("iteration"),
        "outputs": "boxes [B,D,4] xyxy resized pixels, scores [B,D], labels [B,D] 1..K, "
                   "valid [B,D]",
    }
    model = model_from_checkpoint(state, source=checkpoint)
    path = export_onnx(model, output, height=size[0], width=size[1], metadata=metadata,
                       verify=OnnxPredictor.from_file)
    return ExportResult(path=path, input_size=size, metadata=metadata)
