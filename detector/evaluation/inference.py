"""Model evaluation loops: inference over a data loader and COCO evaluation of the result
(used by training and tools/eval.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from detector.data.transforms import boxes_to_original
from detector.evaluation.coco_eval import detections_to_coco_results, evaluate_coco
from detector.evaluation.voc_eval import evaluate_voc
from detector.runtime import autocast, to_device

__all__ = ["EvaluationStopped", "evaluate", "predict", "score_detections", "voc_metrics"]

log = logging.getLogger(__name__)

class EvaluationStopped(RuntimeError):
    """``predict`` was abandoned because its ``should_stop()`` turned true (e.g. on SIGTERM).

    Attributes:
        images_done (int): images predicted before stopping (of this process).
    """

    def __init__(self, message: str, *, images_done: int) -> None:
        super().__init__(message)
        self.images_done = images_done


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
    forward: Callable[[nn.Module, Tensor, Tensor], dict] | None = None,
    keep_proposals: bool = False,
) -> list[dict]:
    """Detections for every image of ``loader``, in original-image pixels, on the CPU.

    Args:
        should_stop: asked before every batch; when it returns True, prediction is abandoned
            (within one batch of a stop request) with ``EvaluationStopped``.
        forward: how a batch goes through the model, ``forward(model, images, image_sizes)``
            -> raw outputs for ``model.detect`` (None: ``model(images, image_sizes,
            detect=True)``); e.g. ``detector.modeling.tta.forward_with_flip`` (test-time flip).
        keep_proposals: also return each image's RPN proposals (``proposals [R,4]`` xyxy,
            original-image pixels, best-scored first; for ``proposal_recall``).

    Returns:
        list of dicts with ``image_id`` (int), ``boxes [D,4]`` xyxy, ``scores [D]``, ``labels [D]``
        (and ``proposals [R,4]`` with ``keep_proposals``).
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
                outputs = (model(batch["images"], batch["image_sizes"], detect=True)
                           if forward is None else
                           forward(model, batch["images"], batch["image_sizes"]))
            per_image = model.detect(outputs, batch["scales"])
            if keep_proposals:
                _attach_proposals(per_image, outputs, batch["scales"])
            for image_id, det in zip(batch["image_ids"].tolist(), per_image, strict=True):
                detections.append({"image_id": image_id, **{k: v.cpu() for k, v in det.items()}})
            bar.update()
    finally:
        bar.close()
        del batches  # shut the loader's workers down now, not when a traceback is freed
        model.train(was_training)
    return detections


def _attach_proposals(per_image: list[dict], outputs: dict, scales: Tensor) -> None:
    """Add ``proposals [R,4]`` (the valid ones, original-image pixels) to each image's dict."""
    boxes = boxes_to_original(outputs["proposals"].float(), scales)
    for det, image_boxes, valid in zip(per_image, boxes, outputs["proposal_valid"], strict=True):
        det["proposals"] = image_boxes[valid]


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


def voc_metrics(dataset, detections: list[dict], names: Sequence[str]) -> dict:
    """Pascal VOC metrics (``detector.evaluation.voc_eval.evaluate_voc``) of ``detections``
    (from ``predict``) for each of ``names`` that is ``voc07`` or ``voc`` (others are skipped),
    restricted to the images that were predicted: ``VOC07``/``VOC`` and their per-class keys."""
    wanted = [name for name in names if name in ("voc07", "voc")]
    if not wanted:
        return {}
    results = detections_to_coco_results(detections, label_to_cat_id=dataset.label_to_cat_id)
    img_ids = sorted({d["image_id"] for d in detections})
    metrics: dict = {}
    for name in wanted:
        metrics.update(evaluate_voc(dataset.coco, results, metric=name, img_ids=img_ids))
    return metrics
