"""Box-aware image pipelines (albumentations, `pascal_voc` boxes) and the scale bookkeeping.

Train: optional box-safe random crop -> resize (shorter side S, longer side at most L) ->
horizontal flip -> optional colour jitter -> ImageNet normalisation. Eval: resize -> normalise,
deterministic, so `boxes_to_original` maps detections back to the original pixels exactly.
"""

from __future__ import annotations

import os
from typing import Any

# albumentations asks PyPI for a newer version on import; nothing may go online at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.core.transforms_interface import BaseTransformInitSchema  # noqa: E402
from pydantic import Field  # noqa: E402
from torch import Tensor  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_scale(height: int, width: int, *, min_size: int, max_size: int) -> float:
    """The factor making the shorter side `min_size`, unless the longer would exceed `max_size`."""
    return min(min_size / min(height, width), max_size / max(height, width))


def boxes_to_original(boxes: Tensor, scales: Tensor) -> Tensor:
    """Map boxes from resized-image pixels back to original-image pixels.

    Args:
        boxes (Tensor[..., N, 4]): xyxy, resized pixels.
        scales (Tensor[..., 2]): (sy, sx) = resized / original, one row per image (the batch
            dims of `boxes` without N).

    Returns:
        Tensor[..., N, 4]: xyxy, original pixels.
    """
    sy, sx = scales[..., 0], scales[..., 1]
    divisor = torch.stack([sx, sy, sx, sy], dim=-1).unsqueeze(-2).to(boxes)
    return boxes / divisor


class ShorterSideResize(A.DualTransform):
    """Resize keeping the aspect ratio: shorter side `min_size`, longer side at most `max_size`.

    Boxes need no change: albumentations keeps them normalised to the image size internally.
    """

    class InitSchema(BaseTransformInitSchema):
        min_size: int = Field(ge=1)
        max_size: int = Field(ge=1)

    def __init__(self, min_size: int = 600, max_size: int = 1000, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.min_size = min_size
        self.max_size = max_size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict:
        height, width = params["shape"][:2]
        scale = resize_scale(height, width, min_size=self.min_size, max_size=self.max_size)
        return {"scale": scale}

    def apply(self, img: np.ndarray, scale: float, **params: Any) -> np.ndarray:
        height, width = img.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        return cv2.resize(img, size, interpolation=interpolation)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_size", "max_size")


class DetectionTransforms:
    """Callable pipeline: RGB uint8 image + boxes -> normalised tensor + boxes, labels aligned.

    Build it with `build_transforms`. Its random state is its own (albumentations does not use
    the global seeds); `set_seed` makes it reproducible, e.g. per DataLoader worker.
    """

    def __init__(self, *, compose: A.Compose) -> None:
        self.compose = compose

    def set_seed(self, seed: int) -> None:
        self.compose.set_random_seed(int(seed) % 2**32)

    def __call__(self, *, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> dict:
        """Apply the pipeline.

        Args:
            image (ndarray[H, W, 3]): uint8 RGB.
            boxes (ndarray[N, 4]): xyxy, pixels of `image`, inside the image, positive size.
            labels (ndarray[N]): int labels 1..K.

        Returns:
            dict: ``image`` FloatTensor[3, h, w] normalised; ``boxes`` FloatTensor[M, 4] xyxy
            pixels of the output; ``labels`` LongTensor[M] (M <= N: boxes a crop removed are
            gone with their labels); ``scale`` (sy, sx) = output size / input size.
        """
        out = self.compose(
            image=image,
            bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        )
        out_image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
        scale = (out_image.shape[1] / image.shape[0], out_image.shape[2] / image.shape[1])
        return {
            "image": out_image.float(),
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32)).reshape(-1, 4),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64)).reshape(-1),
            "scale": scale,
        }


def build_transforms(
    *,
    train: bool,
    min_size: int | None = 600,
    max_size: int = 1000,
    hflip_prob: float = 0.5,
    color_jitter: float = 0.0,
    crop_prob: float = 0.0,
    min_visibility: float = 0.3,
    seed: int | None = None,
) -> DetectionTransforms:
    """Build the train or eval pipeline from plain values.

    Args:
        train: adds the random augmentations; eval is deterministic (resize + normalise).
        min_size: target shorter side S (``None``: keep the original size).
        max_size: cap L on the longer side.
        hflip_prob: probability of a horizontal flip (train).
        color_jitter: strength c of brightness/contrast/saturation jitter, factors drawn from
            [1 - c, 1 + c] (train; 0 disables it).
        crop_prob: probability of a random crop that keeps every box whole (train; 0 disables).
        min_visibility: a box keeping less than this fraction of its area after an augmentation
            is dropped with its label.
        seed: seed of the pipeline's own random state (``None``: fresh entropy).
    """
    steps: list[A.BasicTransform] = []
    if train and crop_prob > 0:
        steps.append(A.BBoxSafeRandomCrop(erosion_rate=0.0, p=crop_prob))
    if min_size is not None:
        steps.append(ShorterSideResize(min_size=min_size, max_size=max_size))
    if train and hflip_prob > 0:
        steps.append(A.HorizontalFlip(p=hflip_prob))
    if train and color_jitter > 0:
        c = float(color_jitter)
        steps.append(A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=0.0, p=1.0))
    if not any(isinstance(step, A.DualTransform) for step in steps):
        steps.append(A.NoOp())  # a box-aware step, so albumentations carries the boxes through
    steps.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0))
    bbox_params = A.BboxParams(
        format="pascal_voc",
        label_fields=["labels"],
        min_visibility=min_visibility,
        clip=True,
        filter_invalid_bboxes=True,
    )
    return DetectionTransforms(compose=A.Compose(steps, bbox_params=bbox_params, seed=seed))
