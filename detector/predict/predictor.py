"""Run a trained detector on your own images: ``Predictor.from_checkpoint(path)(images)``.

    >>> from detector.predict.predictor import Predictor
    >>> predictor = Predictor.from_checkpoint("outputs/focal_end_to_end/<run>/checkpoints/final.pth")
    >>> result = predictor("street.jpg").above(0.5)  # a path, an RGB array, a PIL image, or a list
    >>> for box, name, score in zip(result.boxes, result.class_names, result.scores):
    ...     print(name, round(float(score), 2), box)  # xyxy in the original image's pixels

Images go through the evaluation pipeline of the run (resize to the run's ``min_size``/``max_size``,
ImageNet normalisation), are batched, and the detections come back in original-image pixels:
all that the model keeps (its own ``score_threshold``, 0.05 by default); ``Detections.above``
keeps the confident ones.
The model is built once from the checkpoint's own description (no Hydra, nothing downloaded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.data.collate import collate_batch
from detector.data.transforms import DetectionTransforms, build_transforms
from detector.modeling.spec import (
    MAX_IMAGE_SIDE,
    SpecError,
    checked_label_map,
    model_from_checkpoint,
    read_checkpoint,
)
from detector.modeling.tta import forward_with_flip
from detector.ops.boxes import xyxy_to_xywh
from detector.predict.image_files import read_image_file
from detector.run_files import FINAL_METRICS
from detector.runtime import autocast, resolve_device, resolve_precision, to_device
from detector.untrusted import RunFileError, read_json

__all__ = ["Detections", "Predictor", "checkpoint_metrics", "load_image", "min_score_note",
           "resize_settings"]

ImageInput = Any  # str | Path | np.ndarray[H, W, 3] uint8 | PIL.Image.Image


def _side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_IMAGE_SIDE


def resize_settings(dataset: Mapping, *, where: str) -> tuple[int | None, int]:
    """(min_size, max_size) of a run's eval resize from its ``config["dataset"]`` (defaults 600
    and 1000; ``min_size`` None keeps images at their own size), each an integer in
    1..``MAX_IMAGE_SIDE``: a file asking for 60000 px (10 GB per image) is refused, not obeyed.

    Raises:
        SpecError: ``<where>: dataset.<key> ...``, one line.
    """
    min_size, max_size = dataset.get("min_size", 600), dataset.get("max_size", 1000)
    for key, value in (("min_size", min_size), ("max_size", max_size)):
        if not _side(value) and not (key == "min_size" and value is None):
            shown = (f"an integer of ~{int(abs(value).bit_length() * 0.30103) + 1} digits"
                     if isinstance(value, int) and abs(value) >= 10**12 else repr(value)[:40])
            raise SpecError(f"{where}: dataset.{key} must be an integer in 1..{MAX_IMAGE_SIDE} "
                            f"(pixels), got {shown}")
    return min_size, max_size


@dataclass(frozen=True)
class Detections:
    """Detections of one image (D of them, highest score first).

    Attributes:
        boxes (ndarray[D, 4] float32): xyxy, pixels of the original image.
        scores (ndarray[D] float32): class scores in [0, 1].
        labels (ndarray[D] int64): 1..K (``class_names[label - 1]`` names a label).
        class_names (list[str]): the name of each detection's class.
        image_size (tuple[int, int]): (height, width) of the original image.
        source (str | None): the file the image came from, if any.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    image_size: tuple[int, int]
    source: str | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def above(self, threshold: float, *, as_shown: bool = False) -> Detections:
        """Only the detections scoring at least ``threshold``; with ``as_shown``, the scores are
        compared as ``to_list`` shows them (rounded to 4 decimals), so that the result agrees with
        a filter on the JSON (the web page's slider)."""
        scores = np.array(_shown(self.scores), np.float64) if as_shown else self.scores
        keep = scores >= threshold
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep],
                          [n for n, k in zip(self.class_names, keep, strict=True) if k],
                          self.image_size, self.source)

    def to_list(self, *, label_to_cat_id: dict[int, int] | None = None) -> list[dict]:
        """One JSON-ready dict per detection: ``bbox`` as COCO xywh, ``box_xyxy``, ``score``,
        ``label``, ``category_id`` (the dataset's own id when ``label_to_cat_id`` is given) and
        ``category``."""
        out = []
        xywh = xyxy_to_xywh(torch.as_tensor(self.boxes, dtype=torch.float64).reshape(-1, 4))
        xywh = xywh.tolist()
        for xyxy, bbox, score, label, name in zip(
                self.boxes.tolist(), xywh, _shown(self.scores), self.labels.tolist(),
                self.class_names, strict=True):
            cat_id = label_to_cat_id.get(label, label) if label_to_cat_id else label
            out.append({"bbox": [round(v, 2) for v in bbox],
                        "box_xyxy": [round(v, 2) for v in xyxy],
                        "score": score, "label": label, "category_id": int(cat_id),
                        "category": name})
        return out


def _shown(scores: np.ndarray) -> list[float]:
    """Scores as the JSON shows them: 4 decimals."""
    return [round(score, 4) for score in scores.tolist()]


def load_image(image: ImageInput, *, bgr: bool = False) -> tuple[np.ndarray, str | None]:
    """Any supported input -> (RGB uint8 array [H, W, 3], source file name or None).

    Args:
        image: a file path (read with OpenCV; grayscale and alpha are converted; the header is
            checked first: more than ``DEFAULT_MAX_PIXELS`` pixels or a file over
            ``MAX_IMAGE_BYTES`` is refused, see ``detector.predict.image_files``), an array
            ``[H, W, 3]`` uint8 (RGB unless ``bgr``; pass ``bgr=True`` for arrays from
            ``cv2.imread``) or ``[H, W]`` grayscale, or a PIL image.

    Raises:
        DatasetError: an unreadable, non-image, too large or too many-pixelled file (the message
            names it).
        ValueError: an array of the wrong shape or type.
    """
    if isinstance(image, str | Path):
        return read_image_file(image), str(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image, without importing PIL
        return np.asarray(image.convert("RGB")), getattr(image, "filename", None) or None
    if not isinstance(image, np.ndarray):
        raise ValueError(f"an image must be a path, a numpy array or a PIL image, not "
                         f"{type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 (0-255), got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"an image array must be [H, W, 3] (or [H, W]), got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, ::-1] if bgr else image), None


_MAX_METRICS_BYTES = 2**20
_MAX_METRICS_DEPTH = 8


def _shallow(value: Any) -> bool:
    """Whether a parsed JSON value nests at most ``_MAX_METRICS_DEPTH`` levels (checked without
    recursion: what json.loads accepts can still be too deep for recursive code after it)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= _MAX_METRICS_DEPTH:
                return False
            stack.extend((child, depth + 1) for child in
                         (item.values() if isinstance(item, dict) else item))
    return True


def checkpoint_metrics(path: str | Path) -> dict | None:
    """The metrics a checkpoint was scored with: ``final_metrics.json`` of its run (training's
    final evaluation), else ``<name>_val_metrics.json`` beside it (``tools/eval.py``), else None.
    A file that is no regular file, over 1 MiB, not a JSON object or nested deeper than 8 levels
    counts as absent (``detector.untrusted.read_json``)."""
    path = Path(path)
    for candidate in (path.parent.parent / FINAL_METRICS,  # checkpoints/<name>.pth of a run
                      path.parent / f"{path.stem}_val_metrics.json"):
        try:
            metrics = read_json(candidate, limit=_MAX_METRICS_BYTES)
        except RunFileError:
            continue
        if isinstance(metrics, dict) and _shallow(metrics):
            return metrics
    return None


@dataclass
class Predictor:
    """A trained model plus its evaluation preprocessing; call it on images.

    Build it with ``from_checkpoint``. Attributes: ``model`` (eval mode, on ``device``),
    ``transforms`` (the run's eval pipeline), ``class_names``, ``label_to_cat_id``,
    ``batch_size``, ``precision`` ("fp32", "bf16" or "fp16"), ``info``
    (checkpoint path, iteration, metrics), ``tta`` (flip test-time augmentation; settable).
    """

    model: nn.Module
    transforms: DetectionTransforms
    class_names: list[str]
    device: torch.device
    precision: str = "fp32"
    batch_size: int = 8
    label_to_cat_id: dict[int, int] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    tta: bool = False

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "auto", precision: str = "auto",
                        batch_size: int = 8, channels_last: bool = True,
                        tta: bool = False) -> Predictor:
        """Load ``path`` (a ``final.pth`` or ``iter_*.pth`` from ``tools/train_net.py``).

        Args:
            device: "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
            precision: "auto" (bf16 where the device computes it natively), "fp32", "bf16", "fp16".
            batch_size: images per forward pass.
            channels_last: the model's weights in channels-last layout, as training keeps them
                by default (``train.channels_last``): the convolutions then run NHWC kernels,
                ~20% faster on a 2-core CPU at 600x1000 (docs/speed.md).
            tta: test-time augmentation: also run the horizontally flipped images and merge both
                passes per class before the final NMS (``detector.modeling.tta``; ~2x the time).
        """
        state = read_checkpoint(path)  # refuses a checkpoint holding more than plain data
        dataset = state["config"].get("dataset", {})
        min_size, max_size = resize_settings(dataset, where=f"checkpoint {path}")
        cat_ids = checked_label_map(state.get("label_to_cat_id", {}),
                                    path=f"checkpoint {path}: label_to_cat_id")
        transforms = build_transforms(train=False, min_size=min_size, max_size=max_size)
        dev = resolve_device(device)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = model_from_checkpoint(state, source=path).to(dev, memory_format=layout)
        info = {"checkpoint": str(path), "iteration": state.get("iteration"),
                "dataset": dataset.get("name"), "metrics": checkpoint_metrics(path)}
        return cls(model=model, transforms=transforms, class_names=list(state["class_names"]),
                   device=dev, precision=resolve_precision(precision, dev),
                   batch_size=int(batch_size), label_to_cat_id=cat_ids, info=info,
                   tta=bool(tta))

    @property
    def score_threshold(self) -> float | None:
        """The model's own filter: it keeps detections scoring above this (None: not known)."""
        postprocessor = getattr(self.model, "postprocessor", None)
        return None if postprocessor is None else float(postprocessor.score_threshold)

    def __call__(self, images: ImageInput | Sequence[ImageInput], *,
                 bgr: bool = False) -> Detections | list[Detections]:
        """Detect objects. One image in, one ``Detections`` out; a list in, a list out: every
        detection the model keeps (``.above(threshold)`` keeps the confident ones).

        Args:
            images: a path, an array (RGB uint8 ``[H, W, 3]``; ``bgr=True`` for OpenCV's BGR),
                a PIL image, or a list/tuple of them.
        """
        single = not isinstance(images, list | tuple)
        batch = [images] if single else list(images)
        results: list[Detections] = []
        for start in range(0, len(batch), self.batch_size):
            loaded = [load_image(image, bgr=bgr) for image in batch[start:start + self.batch_size]]
            results.extend(self.predict_arrays(loaded))
        return results[0] if single else results

    @torch.no_grad()
    def predict_arrays(self, images: Iterable[tuple[np.ndarray, str | None]]) -> list[Detections]:
        """One forward pass over (RGB array, source) pairs; see ``__call__``."""
        items, sources = [], []
        for index, (array, source) in enumerate(images):
            sample = self.transforms(image=array, boxes=np.zeros((0, 4), np.float32),
                                     labels=np.zeros((0,), np.int64))
            items.append({**sample, "image_id": index, "orig_size": tuple(array.shape[:2])})
            sources.append(source)
        if not items:
            return []
        batch = to_device(collate_batch(items), self.device)
        with autocast(self.device, self.precision):
            if self.tta:
                outputs = forward_with_flip(self.model, batch["images"], batch["image_sizes"])
            else:
                outputs = self.model(batch["images"], batch["image_sizes"], detect=True)
        per_image = self.model.detect(outputs, batch["scales"])
        return [self._to_detections(det, item["orig_size"], source)
                for det, item, source in zip(per_image, items, sources, strict=True)]

    def _to_detections(self, det: dict, size: tuple[int, int], source: str | None) -> Detections:
        labels = det["labels"].cpu().numpy().astype(np.int64)
        return Detections(
            boxes=det["boxes"].float().cpu().numpy().astype(np.float32).reshape(-1, 4),
            scores=det["scores"].float().cpu().numpy().astype(np.float32),
            labels=labels, class_names=[self.class_names[i - 1] for i in labels.tolist()],
            image_size=(int(size[0]), int(size[1])), source=source)


def min_score_note(min_score: float, model_threshold: float | None) -> str | None:
    """The one line to say at start when a filter after the model (``min_score`` of predict or
    the web demo) asks for less than the model keeps; None when it does not (or is unknown).

    Two filters, two names: the model's ``score_threshold`` keeps scores above it (0.05 by
    default); ``min_score`` then keeps those at or above it. A ``min_score`` under the model's
    threshold filters nothing more, and no detection under the threshold ever shows."""
    if model_threshold is None or min_score >= model_threshold:
        return None
    return (f"min_score {min_score:g} is below the model's own score_threshold "
            f"{model_threshold:g}: the model keeps only detections scoring above "
            f"{model_threshold:g}, so none below it will show")

