"""The training loop on a tiny detector: what each phase trains, freezes and logs."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torchvision
from torch import nn

from detector.data import ShapesDetection, build_dataloader, build_transforms
from detector.engine.logger import TrainLogger
from detector.engine.logger import mean_max as _mean_max
from detector.engine.optim import lr_lambda
from detector.engine.position import Cadence
from detector.engine.schedules import end_to_end, four_step
from detector.engine.trainer import Trainer
from detector.evaluation import STAT_NAMES
from detector.modeling import build_criterion, build_model
from detector.modeling.backbone import freeze_batch_norm
from detector.modeling.box_head import MLPBoxHead
from detector.ops.losses import BinaryCrossEntropy, CrossEntropy

RPN_LOSSES = {"loss_rpn_cls", "loss_rpn_box"}
ROI_LOSSES = {"loss_cls", "loss_box"}


class TinyBackbone(nn.Module):
    """Stride 16, 16 channels: a frozen stem (the model's own choice, like VGG's frozen conv1-2,
    with frozen BN) and a trainable body with ordinary BN."""

    out_channels, stride = 16, 16

    def __init__(self) -> None:
        super().__init__()
        self.stem = freeze_batch_norm(nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
        for p in self.stem.parameters():
            p.requires_grad_(False)
        # no conv bias before BN: its gradient is exactly zero
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=4, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())

    def forward(self, images):
        return self.body(self.stem(images))


def _model():
    torch.manual_seed(0)
    return build_model(
        backbone=TinyBackbone(), box_head=MLPBoxHead(in_channels=16, resolution=4, hidden_dim=16),
        pooler=torchvision.ops.RoIAlign(output_size=4, spatial_scale=1 / 16, sampling_ratio=2,
                                        aligned=True),
        num_classes=4, anchor_sizes=(16, 32), rpn_pre_nms_top_n=(200, 100),
        rpn_post_nms_top_n=(50, 20), roi_num_samples=32)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    transforms = build_transforms(train=False, min_size=64, max_size=64)
    return {split: ShapesDetection(root=root, split=split, num_train=8, num_val=4, image_size=64,
                                   transforms=transforms) for split in ("train", "val")}


class RecordingLogger(TrainLogger):
    """A TrainLogger (no TensorBoard) that also snapshots the models at the end of each phase
    (the trainer logs the last iteration of every phase)."""

    def __init__(self, output_dir):
        super().__init__(output_dir=output_dir, tensorboard=False)
        self.trainer: Trainer | None = None
        self.snapshots: dict[str, dict[str, dict[str, torch.Tensor]]] = {}

    def train_point(self, **kwargs):
        super().train_point(**kwargs)
        if kwargs["phase_iter"] == kwargs["phase_total"]:
            self.snapshots[kwargs["phase"]] = {
                name: _state(model) for name, model in self.trainer.models.items() if model}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _part(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix + ".")}


def _changed(a: dict, b: dict) -> set[str]:
    """Names of the entries that differ between two (non-empty, same-keyed) state dicts."""
    assert a.keys() == b.keys() and a
    return {k for k in a if not torch.equal(a[k], b[k])}


def _trainer(model, phases, shapes, tmp_path, *, val=False, eval_period=0):
    logger = RecordingLogger(tmp_path)
    trainer = Trainer(
        model=model,
        criterion=build_criterion(rpn_cls_loss=BinaryCrossEntropy(), roi_cls_loss=CrossEntropy()),
        train_loader=build_dataloader(dataset=shapes["train"], batch_size=2, train=True),
        val_loader=build_dataloader(dataset=shapes["val"], batch_size=4, train=False) if val
        else None,
        phases=phases, optimizer=functools.partial(torch.optim.SGD, lr=0.02, momentum=0.0),
        lr_lambda=functools.partial(lr_lambda, decay="constant"), weight_decay=0.0,
        device=torch.device("cpu"), output_dir=tmp_path,
        cadence=Cadence(eval_period=eval_period, log_period=100), progress=False, logger=logger)
    logger.trainer = trainer
    return trainer, logger


def _records(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_changes_every_trainable_parameter(shapes, tmp_path):
    model = _model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = _state(model)
    trainer, _ = _trainer(model, end_to_end(iterations=3), shapes, tmp_path)
    summary = trainer.train()

    after = _state(model)
    assert summary["iterations"] == 3
    assert summary["metrics"] is None  # no val loader
    assert trainable <= _changed(before, after)
    assert not _changed(_part(before, "backbone.stem"), _part(after, "backbone.stem"))
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}


def test_four_step_trains_each_part_in_its_own_phase(shapes, tmp_path):
    model = _model()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    s0 = _state(model)
    phases = four_step(rpn_iterations=2, fast_rcnn_iterations=2, rpn_finetune_iterations=2,
                       fast_rcnn_finetune_iterations=2)
    trainer, logger = _trainer(model, phases, shapes, tmp_path)
    trainer.train()
    snap = logger.snapshots
    assert list(snap) == ["rpn", "fast_rcnn", "rpn_finetune", "fast_rcnn_finetune"]

    # 1. rpn: a copy trains backbone + RPN; its ROI head and the main model stay as they were
    s1_rpn, s1_main = snap["rpn"]["rpn"], snap["rpn"]["main"]
    assert not _changed(s1_main, s0)
    assert _changed(_part(s0, "rpn_head"), _part(s1_rpn, "rpn_head")) == set(_part(s0, "rpn_head"))
    assert _changed(_part(s0, "backbone.body"), _part(s1_rpn, "backbone.body"))
    assert not _changed(_part(s1_rpn, "roi_head"), _part(s0, "roi_head"))

    # 2. fast_rcnn: the main model's backbone (from the initial weights) + ROI head
    s2 = snap["fast_rcnn"]["main"]
    assert _changed(_part(s0, "backbone.body"), _part(s2, "backbone.body"))
    assert _changed(_part(s0, "roi_head"), _part(s2, "roi_head")) == set(_part(s0, "roi_head"))
    assert not _changed(_part(s2, "rpn_head"), _part(s0, "rpn_head"))

    # 3. rpn_finetune: the step-1 RPN head, fine-tuned; backbone (BN statistics included) and
    #    ROI head fixed
    s3 = snap["rpn_finetune"]["main"]
    assert "rpn" not in snap["rpn_finetune"]  # the step-1 copy is released
    assert not _changed(_part(s3, "backbone"), _part(s2, "backbone"))
    assert not _changed(_part(s3, "roi_head"), _part(s2, "roi_head"))
    rpn_head_keys = set(_part(s0, "rpn_head"))
    assert _changed(_part(s1_rpn, "rpn_head"), _part(s3, "rpn_head")) == rpn_head_keys

    # 4. fast_rcnn_finetune: only the ROI head
    s4 = snap["fast_rcnn_finetune"]["main"]
    assert not _changed(_part(s4, "backbone"), _part(s3, "backbone"))
    assert not _changed(_part(s4, "rpn_head"), _part(s3, "rpn_head"))
    assert _changed(_part(s3, "roi_head"), _part(s4, "roi_head")) == set(_part(s0, "roi_head"))

    final = _state(model)
    assert not _changed(_part(final, "rpn_head"), _part(s3, "rpn_head"))  # what step 3 produced
    assert _changed(_part(s0, "rpn_head"), _part(final, "rpn_head")) == rpn_head_keys
    # the model's own frozen stem never changes, in the step-1 copy included
    for state in (s1_rpn, s2, s3, s4, final):
        assert not _changed(_part(state, "backbone.stem"), _part(s0, "backbone.stem"))
    # and the model leaves training with its own trainable flags
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_bn_statistics_of_frozen_parts_do_not_move(shapes, tmp_path):
    model = _model()
    s0 = _state(model)
    phases = four_step(rpn_iterations=1, fast_rcnn_iterations=2, rpn_finetune_iterations=2,
                       fast_rcnn_finetune_iterations=2)
    trainer, logger = _trainer(model, phases, shapes, tmp_path)
    trainer.train()
    stats = ("backbone.body.1.running_mean", "backbone.body.1.running_var",
             "backbone.body.1.num_batches_tracked")
    s2 = logger.snapshots["fast_rcnn"]["main"]
    for key in stats:  # trained in step 2: the statistics move ...
        assert not torch.equal(s2[key], s0[key]), key
    for phase in ("rpn_finetune", "fast_rcnn_finetune"):  # ... frozen in steps 3-4: they don't
        for key in stats:
            assert torch.equal(logger.snapshots[phase]["main"][key], s2[key]), (phase, key)


def test_metrics_jsonl_has_a_line_per_log_point_and_the_evaluations(shapes, tmp_path):
    model = _model()
    phases = four_step(rpn_iterations=1, fast_rcnn_iterations=1, rpn_finetune_iterations=2,
                       fast_rcnn_finetune_iterations=2)
    trainer, _ = _trainer(model, phases, shapes, tmp_path, val=True, eval_period=1)
    summary = trainer.train()

    records = _records(tmp_path)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "AP" in r]
    assert len(train) + len(evals) == len(records)
    assert [(r["iter"], r["phase"]) for r in train] == [
        (1, "rpn"), (2, "fast_rcnn"), (4, "rpn_finetune"), (6, "fast_rcnn_finetune")]
    for r in train:
        terms = RPN_LOSSES if r["phase"].startswith("rpn") else ROI_LOSSES
        assert terms <= r.keys()
        assert not (RPN_LOSSES | ROI_LOSSES) - terms & r.keys()
        assert r["loss"] == pytest.approx(sum(r[k] for k in terms))
        assert {"lr", "sec_per_iter", "memory_mb", "phase_iter"} <= r.keys()
        assert 0 < r["grad_norm"] <= r["grad_norm_max"] < float("inf")
    # eval_period=1: evaluations in the main-model phases that use their own proposals
    # (steps 3-4), none in steps 1-2, and exactly one at the very end
    assert [(r["iter"], r["phase"]) for r in evals] == [
        (3, "rpn_finetune"), (4, "rpn_finetune"), (5, "fast_rcnn_finetune"),
        (6, "fast_rcnn_finetune")]
    assert all(k.isidentifier() and not k.startswith("_") for r in records for k in r)
    metrics = summary["metrics"]
    assert set(STAT_NAMES) <= metrics.keys()
    assert not any(k.startswith("_") for k in metrics)
    assert summary["iterations"] == 6


def test_joint_step2_is_evaluated_as_a_whole_detector(shapes, tmp_path):
    # with step2_losses="all" the main model trains its own RPN in step 2: a complete detector
    phases = four_step(rpn_iterations=1, fast_rcnn_iterations=1, rpn_finetune_iterations=1,
                       fast_rcnn_finetune_iterations=1, step2_backbone="rpn", step2_losses="all")
    trainer, _ = _trainer(_model(), phases, shapes, tmp_path, val=True, eval_period=1)
    trainer.train()
    evals = [r for r in _records(tmp_path) if "AP" in r]
    assert [(r["iter"], r["phase"]) for r in evals] == [
        (2, "fast_rcnn"), (3, "rpn_finetune"), (4, "fast_rcnn_finetune")]


def test_logged_gradient_norm_is_the_mean_and_max_of_the_finite_pre_clipping_norms():
    norms = [torch.tensor(1.0), torch.tensor(float("inf")), torch.tensor(3.0)]
    assert _mean_max(norms) == (2.0, 3.0)
    assert _mean_max([torch.tensor(float("nan"))]) is None


def test_final_evaluation_runs_once_at_the_end(shapes, tmp_path):
    trainer, _ = _trainer(_model(), end_to_end(iterations=2), shapes, tmp_path, val=True)
    summary = trainer.train()
    evals = [r for r in _records(tmp_path) if "AP" in r]
    assert [(r["iter"], r["phase"]) for r in evals] == [(2, "end_to_end")]
    assert summary["metrics"]["num_images"] == 4
