"""Exact resume: 2N iterations straight vs N, stop, resume N give the same weights on the CPU, for
the end-to-end and the 4-step schedule (stopping inside each step), and the periodic checkpoint
files (atomic, newest K kept)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import tiny_training as tiny

from detector.checkpoint import (
    find_resume_checkpoint,
    list_periodic_checkpoints,
    load_checkpoint,
    periodic_checkpoint_path,
    save_periodic_checkpoint,
)
from detector.engine.state import BatchStream, capture_rng_state, restore_rng_state
from detector.run_files import drop_records_after


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.models["main"].state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_end_to_end_resume_equals_an_uninterrupted_run(shapes_root, tmp_path):
    # 6 steps at batch 2 over 8 images: the stop (after 3) is mid-epoch, the run crosses epochs
    straight, resumed, summary = tiny.straight_and_resumed(
        shapes_root, tmp_path, tiny.end_to_end(6), stop_at=3)
    assert summary["checkpoint"] == periodic_checkpoint_path(tmp_path / "run" / "checkpoints", 3)
    _assert_same(_weights(straight), _weights(resumed))
    for a, b in zip(straight.optimization.optimizer.state_dict()["state"].values(),
                    resumed.optimization.optimizer.state_dict()["state"].values(), strict=True):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"])


def test_resume_is_not_trivially_equal(shapes_root, tmp_path):
    """The comparison above can fail: losing the random state or the data position shows."""
    straight = tiny.make_trainer(shapes_root, tmp_path / "a", phases=tiny.end_to_end(6))
    straight.train()
    stop = tiny.StopAfter(3)
    first = tiny.make_trainer(shapes_root, tmp_path / "b", phases=tiny.end_to_end(6),
                              stop_signal=stop)
    stop.trainer = first
    state = load_checkpoint(first.train()["checkpoint"])
    state["data"]["position"] = 0  # forget where the data stream was
    second = tiny.make_trainer(shapes_root, tmp_path / "b", phases=tiny.end_to_end(6))
    second.resume(state)
    second.train()
    differs = any(not torch.allclose(a, b, rtol=1e-5, atol=1e-6)
                  for a, b in zip(_weights(straight).values(), _weights(second).values(),
                                  strict=True))
    assert differs


@pytest.mark.parametrize("stop_at", [2, 3, 6], ids=["end_of_step1", "inside_step2",
                                                     "inside_step3"])
def test_four_step_resume_continues_inside_the_right_step(shapes_root, tmp_path, stop_at):
    phases = tiny.four_step(2, 3, 2, 2)  # steps: iterations 1-2, 3-5, 6-7, 8-9
    straight, resumed, summary = tiny.straight_and_resumed(shapes_root, tmp_path, phases, stop_at)
    state = load_checkpoint(summary["checkpoint"])
    expected_phase = {2: 0, 3: 1, 6: 2}[stop_at]
    assert state["trainer"]["phase_index"] == expected_phase
    assert (state["rpn_model"] is None) == (stop_at >= 6)  # step 3 took the step-1 RPN head
    _assert_same(_weights(straight), _weights(resumed))


def test_resume_with_data_workers(shapes_root, tmp_path):
    straight, resumed, _ = tiny.straight_and_resumed(
        shapes_root, tmp_path, tiny.end_to_end(5), stop_at=2, num_workers=2)
    _assert_same(_weights(straight), _weights(resumed))


def test_resume_refuses_another_schedule(shapes_root, tmp_path):
    stop = tiny.StopAfter(1)
    first = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(3), stop_signal=stop)
    stop.trainer = first
    path = first.train()["checkpoint"]
    other = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.four_step(1, 1, 1, 1))
    with pytest.raises(ValueError, match="same schedule"):
        other.resume(path)


def test_periodic_checkpoints_keep_the_newest_and_hold_the_full_state(shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(7),
                                checkpoint_period=2, keep_checkpoints=2,
                                checkpoint_extra={"class_names": ["a", "b", "c", "d"]})
    summary = trainer.train()
    directory = tmp_path / "checkpoints"
    # every 2 iterations and at the end (7), the newest 2 kept; no temp file left behind
    assert [p.name for p in directory.iterdir()] and not list(directory.glob(".*"))
    assert [p.name for p in list_periodic_checkpoints(directory)] == [
        "iter_0000006.pth", "iter_0000007.pth"]
    assert summary["checkpoint"] == find_resume_checkpoint(tmp_path) == directory / \
        "iter_0000007.pth"
    state = load_checkpoint(summary["checkpoint"])  # weights_only: plain values and tensors
    assert state["iteration"] == 7 and state["class_names"] == ["a", "b", "c", "d"]
    assert {"model", "optimizer", "scheduler", "scaler", "trainer", "data", "rng"} <= state.keys()
    assert state["trainer"]["phase_index"] == 1  # all phases done
    assert state["data"] == {"epoch": 1, "position": 3, "seed": 0}  # 7 batches of 4 per epoch


def test_resuming_a_finished_run_trains_nothing(shapes_root, tmp_path):
    first = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(2),
                              checkpoint_period=5)
    first.train()
    again = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(2))
    again.resume(find_resume_checkpoint(tmp_path))
    summary = again.train()
    assert summary["iterations"] == 2
    _assert_same(_weights(first), _weights(again))


def test_save_periodic_keeps_k_by_iteration_not_by_name_order(tmp_path):
    for it in (5, 100, 20, 7):
        save_periodic_checkpoint(tmp_path, {"iteration": it}, iteration=it, keep=2)
    assert [p.name for p in list_periodic_checkpoints(tmp_path)] == [
        "iter_0000020.pth", "iter_0000100.pth"]
    (tmp_path / ".iter_0000300.pth.0a1b.tmp").write_bytes(b"half")  # a killed write: ignored
    assert len(list_periodic_checkpoints(tmp_path)) == 2
    assert load_checkpoint(list_periodic_checkpoints(tmp_path)[-1])["iteration"] == 100


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    save_periodic_checkpoint(tmp_path, {"rng": state}, iteration=1, keep=1)
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(periodic_checkpoint_path(tmp_path, 1))["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_batch_stream_position_and_epochs(shapes_root):
    trainer = tiny.make_trainer(shapes_root, shapes_root.parent / "unused",
                                phases=tiny.end_to_end(1))
    stream = BatchStream(trainer.train_loader)  # 8 images, batch 2: 4 batches per epoch
    ids = [next(stream)["image_ids"].tolist() for _ in range(6)]
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["position"] == 2
    other = BatchStream(trainer.train_loader)
    other.load_state_dict({"epoch": 0, "position": 3, "seed": 0})
    assert [next(other)["image_ids"].tolist() for _ in range(3)] == ids[3:]


def test_resume_rewinds_the_metrics_log_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"iter": {i}, "loss": 1.0}}\n' for i in range(1, 8))
                    + '{"iter": 4, "AP": 0.5}\nnot json\n')
    assert drop_records_after(path, 4) == 3
    kept = path.read_text().splitlines()
    assert [line for line in kept if '"loss"' in line] == [
        f'{{"iter": {i}, "loss": 1.0}}' for i in range(1, 5)]
    assert '{"iter": 4, "AP": 0.5}' in kept and "not json" in kept
