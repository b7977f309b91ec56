"""Per-block gradient-to-weight ratios and weight/gradient histograms during training."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.tiny_training import end_to_end, four_step, make_trainer
from torch import nn

from detector.engine.monitor import block_parameters, grad_weight_ratios, ratio_key


def _vgg_like() -> nn.Module:
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.features = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2), nn.ReLU())
    model.rpn_head = nn.Linear(2, 2)
    model.roi_head = nn.Linear(2, 2)  # no gradient: left out
    return model


def test_ratio_is_the_blocks_gradient_norm_over_its_weight_norm():
    model = _vgg_like()
    grads = {}
    for name, p in model.named_parameters():
        if not name.startswith("roi_head"):
            p.grad = torch.full_like(p, 0.5 if name.startswith("backbone") else 2.0)
            grads[name] = p.grad
    ratios = grad_weight_ratios(model)
    assert list(ratios) == ["backbone.conv1", "rpn_head"]
    for block, prefix in (("backbone.conv1", "backbone"), ("rpn_head", "rpn_head")):
        params = dict(model.named_parameters())
        names = [n for n in params if n.startswith(prefix)]
        g = math.sqrt(sum(grads[n].pow(2).sum().item() for n in names))
        w = math.sqrt(sum(params[n].detach().pow(2).sum().item() for n in names))
        assert ratios[block] == pytest.approx(g / w, rel=1e-5)
    assert [len(v) for v in block_parameters(model, with_grad=False).values()] == [4, 2, 2]


def test_ratio_keys_are_identifiers():
    assert ratio_key("backbone.conv1") == "grad_ratio_backbone_conv1"
    assert ratio_key("roi_head").isidentifier()


def test_no_gradients_no_ratios():
    assert grad_weight_ratios(_vgg_like()) == {}


def _records(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_ratios_are_logged_per_block_of_the_phase(shapes_root, tmp_path):
    make_trainer(shapes_root, tmp_path, phases=four_step(2, 2, 1, 1)).train()
    for record in _records(tmp_path):
        ratios = {k: v for k, v in record.items() if k.startswith("grad_ratio_")}
        trained = {"rpn": {"backbone.body", "rpn_head"}, "fast_rcnn": {"backbone.body", "roi_head"},
                   "rpn_finetune": {"rpn_head"}, "fast_rcnn_finetune": {"roi_head"}}
        assert set(ratios) == {ratio_key(b) for b in trained[record["phase"]]}
        assert all(math.isfinite(v) and v > 0 for v in ratios.values())


def _histogram_steps(tensorboard_dir) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir), size_guidance={"histograms": 0})
    events.Reload()
    return {tag: [e.step for e in events.Histograms(tag)] for tag in events.Tags()["histograms"]}


def test_histograms_every_period_and_none_by_default(shapes_root, tmp_path):
    make_trainer(shapes_root, tmp_path / "on", phases=end_to_end(5), histogram_period=2).train()
    steps = _histogram_steps(tmp_path / "on" / "tensorboard")
    blocks = ("backbone.body", "rpn_head", "roi_head")
    assert set(steps) == {f"{kind}/{b}" for kind in ("weights", "grads") for b in blocks}
    assert all(s == [2, 4] for s in steps.values())
    assert {ratio_key(b) for b in blocks} <= set(_records(tmp_path / "on")[-1])

    make_trainer(shapes_root, tmp_path / "off", phases=end_to_end(1)).train()
    assert _histogram_steps(tmp_path / "off" / "tensorboard") == {}
