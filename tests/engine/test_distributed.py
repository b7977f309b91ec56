"""Distributed helpers: the single-process identity without a process group, and (in-process,
one gloo rank joined the way torchrun does it) the DDP code paths of the trainer and the sharded
evaluation. Several real processes: tests/system/test_reliability.py (torchrun)."""

from __future__ import annotations

import socket

import pytest
import torch
from helpers import tiny_training as tiny
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detector.data import build_dataloader
from detector.engine import distributed as dist
from detector.evaluation.inference import evaluate
from detector.evaluation.sharded import evaluate_sharded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment torchrun gives a one-process job."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def process_group(torchrun_env):
    device = dist.init_distributed(torch.device("cpu"))
    assert dist.is_distributed() and device == torch.device("cpu")
    yield
    dist.cleanup_distributed()
    assert not dist.is_distributed()


def test_without_a_process_group_everything_is_the_identity(monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert not dist.launched_by_torchrun() and not dist.is_distributed()
    assert dist.init_distributed(torch.device("cpu")) == torch.device("cpu")
    assert (dist.get_rank(), dist.get_world_size(), dist.is_main()) == (0, 1, True)
    value = torch.tensor([1.0, 3.0])
    assert dist.all_reduce(value) is value and value.tolist() == [1.0, 3.0]
    assert dist.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert dist.broadcast_object("x") == "x"
    model = nn.Linear(2, 2)
    assert dist.wrap_ddp(model, torch.device("cpu")) is model


def test_torchrun_environment_joins_a_gloo_group(process_group):
    assert dist.launched_by_torchrun()
    assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
    assert dist.all_reduce(torch.tensor([2.0, 4.0]), op="mean").tolist() == [2.0, 4.0]
    assert dist.all_reduce(torch.tensor([5.0]), op="max").tolist() == [5.0]
    assert dist.all_gather_objects([1, 2]) == [[1, 2]]
    wrapped = dist.wrap_ddp(nn.Linear(2, 2), torch.device("cpu"))
    assert isinstance(wrapped, DistributedDataParallel)


def _train(root, out, **options):
    trainer = tiny.make_trainer(root, out, phases=tiny.four_step(2, 2, 1, 1), val=True,
                                **options)
    summary = trainer.train()
    return trainer, summary


def test_ddp_training_and_sharded_evaluation_match_a_plain_run(shapes_root, tmp_path,
                                                               monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    plain, plain_summary = _train(shapes_root, tmp_path / "plain")
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    dist.init_distributed(torch.device("cpu"))
    wrapped = []
    original = dist.wrap_ddp
    monkeypatch.setattr(dist, "wrap_ddp", lambda m, d: wrapped.append(m) or original(m, d))
    try:
        ddp, ddp_summary = _train(shapes_root, tmp_path / "ddp", checkpoint_period=3)
        # one DDP wrapper per phase, around the model that phase trains (the 4-step "rpn" copy)
        assert len(wrapped) == 4 and wrapped[0] is not ddp.models["main"]
        assert all(m is ddp.models["main"] for m in wrapped[1:])
        for key, value in plain.models["main"].state_dict().items():
            torch.testing.assert_close(ddp.models["main"].state_dict()[key], value, msg=key)
        assert ddp_summary["metrics"]["AP"] == pytest.approx(plain_summary["metrics"]["AP"])
        loader = build_dataloader(dataset=tiny.shapes(shapes_root, "val", train=False),
                                  batch_size=3, train=False, num_replicas=1, rank=0)
        sharded, detections = evaluate_sharded(ddp.models["main"], loader,
                                               device=torch.device("cpu"), progress=False)
        single, _ = evaluate(ddp.models["main"], loader, device=torch.device("cpu"),
                             progress=False)
        assert sharded == single and [d["image_id"] for d in detections] == [1, 2, 3, 4]
        assert ddp_summary["checkpoint"].name == "iter_0000006.pth"
    finally:
        dist.cleanup_distributed()
