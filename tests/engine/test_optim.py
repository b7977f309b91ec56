"""Learning-rate multipliers (hand-computed values) and weight-decay parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detector.engine.optim import lr_lambda, param_groups


# ---------------------------------------------------------------------------- lr_lambda
def test_constant_without_warmup_is_one_everywhere():
    f = lr_lambda(total_iters=10, decay="constant")
    assert [f(it) for it in (0, 5, 9, 10)] == [1.0, 1.0, 1.0, 1.0]


def test_linear_warmup_from_warmup_factor_to_one():
    # factor(it) = wf * (1 - it / W) + it / W for it < W, then 1
    f = lr_lambda(total_iters=100, warmup_iters=10, warmup_factor=0.1, decay="constant")
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.1 * 0.5 + 0.5)  # 0.55
    assert f(9) == pytest.approx(0.1 * 0.1 + 0.9)  # 0.91
    assert f(10) == 1.0
    assert f(60) == 1.0


def test_step_decay_at_fractions_of_the_phase():
    f = lr_lambda(total_iters=100, decay="step", steps=(0.5, 0.75), gamma=0.1)
    assert f(0) == 1.0
    assert f(49) == 1.0
    assert f(50) == pytest.approx(0.1)
    assert f(74) == pytest.approx(0.1)
    assert f(75) == pytest.approx(0.01)
    assert f(99) == pytest.approx(0.01)


def test_step_decay_at_absolute_iterations_in_any_order():
    f = lr_lambda(total_iters=100, decay="step", steps=(60, 30), gamma=0.5)
    assert f(29) == 1.0
    assert f(30) == pytest.approx(0.5)
    assert f(59) == pytest.approx(0.5)
    assert f(60) == pytest.approx(0.25)


def test_step_decay_multiplies_the_warmup_ramp():
    f = lr_lambda(total_iters=100, warmup_iters=20, warmup_factor=0.0, decay="step", steps=(10,),
                  gamma=0.1)
    assert f(5) == pytest.approx(0.25)  # ramp 5/20
    assert f(10) == pytest.approx(0.5 * 0.1)  # ramp 10/20, after the milestone


def test_cosine_endpoints_and_midpoint():
    f = lr_lambda(total_iters=100, decay="cosine")
    assert f(0) == pytest.approx(1.0)
    assert f(50) == pytest.approx(0.5)
    assert f(25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_cosine_decays_to_min_factor_and_stays_there():
    f = lr_lambda(total_iters=100, decay="cosine", min_factor=0.2)
    assert f(0) == pytest.approx(1.0)
    assert f(50) == pytest.approx(0.2 + 0.8 * 0.5)  # 0.6
    assert f(100) == pytest.approx(0.2)
    assert f(150) == pytest.approx(0.2)


def test_cosine_with_warmup_is_the_product():
    f = lr_lambda(total_iters=100, warmup_iters=10, warmup_factor=0.0, decay="cosine")
    assert f(5) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.05)))


def test_unknown_decay_is_rejected():
    with pytest.raises(ValueError, match="decay"):
        lr_lambda(total_iters=10, decay="linear")


def test_lambda_lr_follows_the_factor():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total_iters=4, decay="step", steps=(0.5,), gamma=0.1))
    seen = []
    for _ in range(4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([2.0, 2.0, 0.2, 0.2])


# ---------------------------------------------------------------------------- param_groups
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        self.conv_nobias = nn.Conv2d(4, 4, 1, bias=False)
        self.frozen = nn.Conv2d(4, 4, 1)
        for p in self.frozen.parameters():
            p.requires_grad_(False)


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_param_groups_split_weights_from_biases_and_norms():
    net = _Net()
    groups = param_groups(net, weight_decay=1e-4)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    decay, no_decay = (_ids(g["params"]) for g in groups)
    assert decay == _ids([net.conv.weight, net.fc.weight, net.conv_nobias.weight])
    assert no_decay == _ids([net.conv.bias, net.fc.bias, net.bn.weight, net.bn.bias,
                             net.gn.weight, net.gn.bias, net.ln.weight, net.ln.bias])


def test_param_groups_skip_frozen_params_and_list_each_param_once():
    net = _Net()
    groups = param_groups(net, weight_decay=1e-4)
    listed = [p for g in groups for p in g["params"]]
    assert len(listed) == len(_ids(listed))
    assert _ids(listed) == _ids(p for p in net.parameters() if p.requires_grad)
    assert not _ids(net.frozen.parameters()) & _ids(listed)


def test_param_groups_leave_out_an_empty_group():
    groups = param_groups(nn.BatchNorm2d(3), weight_decay=0.1)
    assert len(groups) == 1
    assert groups[0]["weight_decay"] == 0.0


def test_param_groups_feed_an_optimizer_that_decays_weights_only():
    net = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.fill_(1.0)
    optimizer = torch.optim.SGD(param_groups(net, weight_decay=0.5), lr=0.1, weight_decay=0.9)
    net(torch.zeros(1, 2)).sum().mul(0.0).backward()  # zero gradient: only decay moves params
    optimizer.step()
    assert torch.allclose(net[0].weight, torch.full((2, 2), 1.0 - 0.1 * 0.5))
    assert torch.allclose(net[0].bias, torch.ones(2))
