"""Inference over a data loader and COCO evaluation of the result (used by training and eval)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detector.evaluation import evaluate_coco

__all__ = ["EvaluationStopped", "autocast", "evaluate", "predict", "score_detections",
           "to_device"]

log = logging.getLogger(__name__)

TARGET_KEYS = ("boxes", "labels", "box_valid")


class EvaluationStopped(RuntimeError):
    """``predict`` was abandoned because its ``should_stop()`` turned true (e.g. on SIGTERM).

    Attributes:
        images_done (int): images predicted before stopping (of this process).
    """

    def __init__(self, message: str, *, images_done: int) -> None:
        super().__init__(message)
        self.images_done = images_done


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a Batch dict (docs/design.md) to ``device`` (non-blocking)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def autocast(device: torch.device, precision: str):
    """Autocast context: "fp32" (none), "bf16" (CUDA, or CPUs with bf16 support via oneDNN) or
    "fp16" (CUDA only; pair it with a GradScaler). Losses are computed in float32 regardless."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cpu" and precision == "fp16":
        warnings.warn("fp16 mixed precision needs CUDA; running fp32 on the CPU", stacklevel=2)
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    precision: str = "fp32",
    progress: bool = True,
    desc: str = "eval",
    should_stop: Callable[[], bool] | None = None,
) -> list[dict]:
    """Detections for every image of ``loader``, in original-image pixels, on the CPU.

    Args:
        should_stop: asked before every batch; when it returns True, prediction is abandoned
            (within one batch of a stop request) with ``EvaluationStopped``.

    Returns:
        list of dicts with ``image_id`` (int), ``boxes [D,4]`` xyxy, ``scores [D]``, ``labels [D]``.
    """
    was_training = model.training
    model.eval()
    detections: list[dict] = []
    batches = iter(loader)
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    try:
        while not _stop_asked(should_stop, len(detections)):
            batch = next(batches, None)
            if batch is None:
                break
            batch = to_device(batch, device)
            with autocast(device, precision):
                outputs = model(batch["images"], batch["image_sizes"], detect=True)
            per_image = model.detect(outputs, batch["scales"])
            for image_id, det in zip(batch["image_ids"].tolist(), per_image, strict=True):
                detections.append({"image_id": image_id, **{k: v.cpu() for k, v in det.items()}})
            bar.update()
    finally:
        bar.close()
        del batches  # shut the loader's workers down now, not when a traceback is freed
        model.train(was_training)
    return detections


def _stop_asked(should_stop: Callable[[], bool] | None, images_done: int) -> bool:
    """False, or raise ``EvaluationStopped`` when ``should_stop()`` is true."""
    if should_stop is not None and should_stop():
        raise EvaluationStopped(f"evaluation abandoned after {images_done} images (stop "
                                f"requested)", images_done=images_done)
    return False


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    precision: str = "fp32",
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict, list[dict]]:
    """COCO mAP of ``model`` on ``loader.dataset`` (which provides ``coco``, ``label_to_cat_id``
    and ``class_names``). ``should_stop``: see ``predict`` (raises ``EvaluationStopped``).

    Returns:
        (metrics from ``detector.evaluation.evaluate_coco``, the detections).
    """
    detections = predict(model, loader, device=device, precision=precision, progress=progress,
                         should_stop=should_stop)
    return score_detections(loader.dataset, detections), detections


def score_detections(dataset, detections: list[dict]) -> dict:
    """COCO metrics of ``detections`` (from ``predict``) against ``dataset.coco``, restricted to
    the images that were predicted."""
    return evaluate_coco(
        dataset.coco, detections, label_to_cat_id=dataset.label_to_cat_id,
        class_names=dataset.class_names, img_ids=sorted({d["image_id"] for d in detections}),
    )
