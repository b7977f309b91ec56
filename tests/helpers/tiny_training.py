"""Tiny training set-ups shared by the engine, tool and system tests (not a test module).

Test modules import it as ``from helpers import tiny_training``; a subprocess imports it by the
same name with ``tests/`` (``TESTS``) on ``PYTHONPATH``, e.g.
``model.backbone._target_=helpers.tiny_training.TinyBackbone`` for ``tools/train_net.py``.
A checkpoint of such a run names ``BACKBONE``: a test that loads one adds it to
``detector.modeling.spec.MODEL_CONSTRUCTORS`` (the checkpoint allow-list) for its duration.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from detector.data import ShapesDetection, build_dataloader, build_transforms
from detector.engine import schedules
from detector.engine.optim import lr_lambda
from detector.engine.position import Cadence, StepOptions
from detector.engine.trainer import Trainer
from detector.modeling.box_head import MLPBoxHead
from detector.modeling.build import build_criterion, build_model
from detector.ops.losses import BinaryCrossEntropy, CrossEntropy

IMAGE_SIZE = 64
TESTS = Path(__file__).resolve().parents[1]  # tests/: on PYTHONPATH, ``helpers`` imports
BACKBONE = "helpers.tiny_training.TinyBackbone"  # the backbone's _target_ in configs

# configs/train.yaml overrides that make tools/train_net.py train this set-up in seconds
CLI_OVERRIDES = [
    "dataset.image_size=64", "dataset.min_size=64", "dataset.max_size=64",
    "dataset.num_train=8", "dataset.num_val=4", "dataset.rpn_pre_nms_top_n=[200,100]",
    "dataset.rpn_post_nms_top_n=[32,32]", "dataset.roi_num_samples=32",
    f"model.backbone._target_={BACKBONE}", "model.box_head.in_channels=32",
    "model.box_head.hidden_dim=32", "batch_size=2", "num_workers=0", "train.progress=false",
    "train.log_period=1", "loss.criterion.rpn_num_samples=64", "schedule.lr.warmup_iters=2",
    "device=cpu",
]


class TinyBackbone(nn.Module):
    """Four stride-2 conv + BN + ReLU blocks: stride 16, 32 channels. Accepts (and ignores) the
    VGG backbone's config keys so it can replace it from the command line."""

    out_channels, stride = 32, 16

    def __init__(self, **unused) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (8, 16, 32, 32):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.body = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class SlowEvalBackbone(TinyBackbone):
    """``TinyBackbone`` that sleeps ``eval_delay`` seconds per batch in eval mode: an evaluation
    that lasts long enough to be interrupted (``+model.backbone.eval_delay=0.5``)."""

    def __init__(self, eval_delay: float = 0.5, **unused) -> None:
        super().__init__()
        self.eval_delay = float(eval_delay)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training:
            time.sleep(self.eval_delay)
        return super().forward(images)


def tiny_model(num_classes: int = 4) -> nn.Module:
    return build_model(
        backbone=TinyBackbone(), box_head=MLPBoxHead(in_channels=32, resolution=7, hidden_dim=32),
        pooler=torchvision.ops.RoIPool(7, 1.0 / 16), num_classes=num_classes,
        anchor_sizes=(16, 32, 64), anchor_offset=0.5, rpn_pre_nms_top_n=(200, 100),
        rpn_post_nms_top_n=(32, 32), roi_num_samples=32)


def tiny_criterion() -> nn.Module:
    return build_criterion(rpn_cls_loss=BinaryCrossEntropy(), roi_cls_loss=CrossEntropy(),
                           rpn_num_samples=64)


def shapes(root: Path, split: str, *, train: bool, num_train: int = 8, num_val: int = 4):
    transforms = build_transforms(train=train, min_size=IMAGE_SIZE, max_size=IMAGE_SIZE,
                                  hflip_prob=0.5, color_jitter=0.2 if train else 0.0)
    return ShapesDetection(root=root, split=split, num_train=num_train, num_val=num_val,
                           image_size=IMAGE_SIZE, transforms=transforms)


def _split_options(options: dict) -> dict:
    """Flat keywords (``eval_period=2, precision="fp16"``) -> the Trainer's ``cadence=`` and
    ``step=`` groups; the other keywords pass as they are."""
    groups = {}
    for key, group in (("cadence", Cadence), ("step", StepOptions)):
        names = {f.name for f in dataclasses.fields(group)}
        groups[key] = group(**{k: options.pop(k) for k in names & options.keys()})
    return {**options, **groups}


def make_trainer(root: Path, output_dir: Path, *, phases, seed: int = 0, lr: float = 0.01,
                 num_workers: int = 0, batch_size: int = 2, val: bool = False,
                 device: str | torch.device = "cpu", **options) -> Trainer:
    """A Trainer of the tiny model on the tiny shapes set; the model is initialised from
    ``seed`` and the data order and augmentation from ``seed`` too. ``options``: Trainer
    keywords, and the fields of ``Cadence`` and ``StepOptions`` as plain keywords."""
    torch.manual_seed(seed)
    model = tiny_model()
    loader = build_dataloader(dataset=shapes(root, "train", train=True), batch_size=batch_size,
                              train=True, num_workers=num_workers, seed=seed)
    val_loader = None
    if val:
        val_loader = build_dataloader(dataset=shapes(root, "val", train=False), batch_size=2,
                                      train=False)
    options = _split_options({"progress": False, "log_period": 1, **options})
    return Trainer(
        model=model, criterion=tiny_criterion(), train_loader=loader, phases=phases,
        optimizer=functools.partial(torch.optim.SGD, lr=lr, momentum=0.9),
        lr_lambda=functools.partial(lr_lambda, warmup_iters=2, decay="cosine"),
        weight_decay=1e-4, device=torch.device(device), output_dir=output_dir,
        val_loader=val_loader, **options)


def end_to_end(iterations: int):
    return schedules.end_to_end(iterations=iterations)


def four_step(a: int, b: int, c: int, d: int):
    return schedules.four_step(rpn_iterations=a, fast_rcnn_iterations=b,
                               rpn_finetune_iterations=c, fast_rcnn_finetune_iterations=d)


class StopAfter:
    """A stop signal that makes the trainer stop after ``iterations`` steps (it is read during
    a step, like a signal arriving then)."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.trainer: Trainer | None = None
        self.reason, self.signum = "test stop", None

    @property
    def requested(self) -> bool:
        return self.trainer is not None and self.trainer.iteration + 1 >= self.iterations


def straight_and_resumed(root, tmp_path, phases, stop_at, **options):
    """(an uninterrupted run, the same run stopped after ``stop_at`` steps and resumed into a
    fresh trainer, the stopped run's summary). The resumed trainer starts from other weights
    (and another weight average) and random state, as in a fresh process: everything must come
    from the checkpoint file."""
    straight = make_trainer(root, tmp_path / "straight", phases=phases, **options)
    straight.train()
    stop = StopAfter(stop_at)
    first = make_trainer(root, tmp_path / "run", phases=phases, stop_signal=stop, **options)
    stop.trainer = first
    summary = first.train()
    assert summary["interrupted"] == "test stop" and summary["iterations"] == stop_at
    second = make_trainer(root, tmp_path / "run", phases=phases, **options)
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    second.models["main"].load_state_dict(tiny_model().state_dict())
    if second.ema is not None:
        second.ema.reset(second.models["main"])
    second.resume(summary["checkpoint"])
    result = second.train()
    assert result["interrupted"] is None and result["iterations"] == straight.iteration
    return straight, second, summary
