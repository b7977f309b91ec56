"""Synthetic inputs and the four timed steps of the whole-model benchmark: a training step
(forward, losses, backward, SGD step) and inference to final detections, for ours and torchvision.

Shorthand: B images, H x W image size, Hp x Wp padded to multiples of 32, G = 8 boxes per image.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["SyntheticBatch", "make_optimizer", "make_steps", "synthetic_batch"]


@dataclass
class SyntheticBatch:
    """One batch in both models' formats.

    Attributes:
        images (Tensor[B, 3, Hp, Wp]): ours, zero-padded like our collate.
        image_sizes (LongTensor[B, 2]): (H, W) per image.
        targets (dict): ours: ``boxes [B, G, 4]``, ``labels [B, G]``, ``box_valid [B, G]``.
        tv_images (list[Tensor[3, H, W]]): torchvision's (it pads them itself).
        tv_targets (list[dict]): torchvision's ``boxes [G, 4]``, ``labels [G]`` per image.
    """

    images: Tensor
    image_sizes: Tensor
    targets: dict
    tv_images: list
    tv_targets: list


def synthetic_batch(
    *, batch: int, height: int, width: int, num_classes: int, num_gt: int = 8,
    device: torch.device, seed: int = 0, memory_format=torch.contiguous_format,
) -> SyntheticBatch:
    """Random normal images and ``num_gt`` random boxes (16 px to half the image) per image."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 3, height, width, generator=gen)
    padded = (math.ceil(height / 32) * 32, math.ceil(width / 32) * 32)
    images = pixels.new_zeros(batch, 3, *padded)
    images[:, :, :height, :width] = pixels
    size = torch.tensor([width, height], dtype=torch.float32)
    wh = 16 + torch.rand(batch, num_gt, 2, generator=gen) * (size / 2 - 16).clamp(min=0)
    xy = torch.rand(batch, num_gt, 2, generator=gen) * (size - wh)
    boxes = torch.cat((xy, xy + wh), dim=-1)
    labels = torch.randint(1, num_classes + 1, (batch, num_gt), generator=gen)
    images = images.to(device).contiguous(memory_format=memory_format)
    boxes, labels = boxes.to(device), labels.to(device)
    return SyntheticBatch(
        images=images,
        image_sizes=torch.tensor([[height, width]] * batch, device=device),
        targets={"boxes": boxes, "labels": labels,
                 "box_valid": torch.ones(batch, num_gt, dtype=torch.bool, device=device)},
        tv_images=[image[:, :height, :width] for image in images],
        tv_targets=[{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels, strict=True)],
    )


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """The same SGD for both sides (a small rate keeps random-init training finite)."""
    return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)


def _train_step(forward_losses: Callable[[], dict], model: nn.Module, optimizer, autocast):
    def step() -> Tensor:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = sum(forward_losses().values())
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def make_steps(
    *, ours: nn.Module, criterion: nn.Module, torchvision_model: nn.Module, data: SyntheticBatch,
    precision: str = "fp32",
) -> tuple[dict[str, Callable[[], object]], dict[str, torch.optim.Optimizer]]:
    """Steps ``{"ours_train", "torchvision_train", "ours_infer", "torchvision_infer"}``: callables
    that run one step on ``data`` (``precision``: "fp32" or "bf16" autocast for both), and the
    optimisers of the training steps ``{"ours", "torchvision"}``."""
    device_type = data.images.device.type

    def autocast():
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=torch.bfloat16)

    def ours_losses() -> dict:
        return criterion(ours(data.images, data.image_sizes, data.targets), data.targets)

    def ours_infer() -> list:
        ours.eval()
        with torch.inference_mode(), autocast():
            return ours.detect(ours(data.images, data.image_sizes))

    def torchvision_infer() -> list:
        torchvision_model.eval()
        with torch.inference_mode(), autocast():
            return torchvision_model(data.tv_images)

    optimizers = {"ours": make_optimizer(ours), "torchvision": make_optimizer(torchvision_model)}
    steps = {
        "ours_train": _train_step(ours_losses, ours, optimizers["ours"], autocast),
        "torchvision_train": _train_step(
            lambda: torchvision_model(data.tv_images, data.tv_targets), torchvision_model,
            optimizers["torchvision"], autocast,
        ),
        "ours_infer": ours_infer,
        "torchvision_infer": torchvision_infer,
    }
    return steps, optimizers
