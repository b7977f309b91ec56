"""The divergence guard: a finite loss that explodes relative to the first step's stops the run
as diverged (with the reason and the iteration), a spike does not, and the rule survives a
resume."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_training as tiny

from detector.engine.guard import DivergedError, DivergenceGuard, NonFiniteError
from detector.run_files import diverged_record


def _guard(reference: float, **options) -> DivergenceGuard:
    guard = DivergenceGuard(**options)
    guard.observe_step({"loss_cls": torch.tensor(reference * 0.75),
                        "loss_box": torch.tensor(reference * 0.25)})
    return guard


def test_the_first_step_is_the_reference_and_later_steps_do_not_move_it():
    guard = DivergenceGuard()
    guard.observe_step(None)  # a skipped step is no reference
    guard.observe_step({"a": torch.tensor(float("nan")), "b": torch.tensor(0.5)})  # nor a NaN
    assert guard.reference is None
    guard.observe_step({"a": torch.tensor(1.5), "b": torch.tensor(0.5)})
    guard.observe_step({"a": torch.tensor(100.0)})
    assert guard.reference == 2.0


def test_stops_at_the_window_th_log_point_above_the_limit_in_a_row():
    guard = _guard(2.0, factor=100.0, window=3)  # limit 200
    guard.check(loss=150.0, iteration=20, lr=1.0)
    guard.check(loss=201.0, iteration=40, lr=1.0)
    guard.check(loss=5e3, iteration=60, lr=1.0)
    with pytest.raises(DivergedError) as info:
        guard.check(loss=7e9, iteration=80, lr=1e3, terms={"loss_cls": 7e9})
    error = info.value
    assert error.iteration == 80 and error.lr == 1e3 and error.terms == {"loss_cls": 7e9}
    assert error.reason.startswith("loss 7e+09 = 3.5e+09 x the first step's 2")
    assert "3 log points in a row" in error.reason and "\n" not in str(error)
    assert "at iteration 80" in str(error) and "lower the learning rate" in str(error)
    assert not isinstance(error, NonFiniteError)


def test_a_spike_is_forgiven_and_the_boundary_is_not_over():
    guard = _guard(1.0, factor=10.0, window=2)
    for loss in (50.0, 1.0, 50.0, 10.0, 50.0, 0.5):  # never two in a row above 10 (10 is not)
        guard.check(loss=loss, iteration=1, lr=0.1)
    assert guard.strikes == 0


def test_non_finite_log_points_count_as_over():
    guard = _guard(1.0, window=2)
    guard.check(loss=float("nan"), iteration=1, lr=0.1)
    with pytest.raises(DivergedError, match="non-finite"):
        guard.check(loss=float("inf"), iteration=2, lr=0.1)


def test_off_and_bad_settings():
    for guard in (_guard(1.0, factor=None), _guard(1.0, window=0)):
        for it in range(10):
            guard.check(loss=1e12, iteration=it, lr=1.0)
    guard = DivergenceGuard(window=1)
    guard.check(loss=1e12, iteration=1, lr=1.0)  # no reference yet: nothing to compare with
    with pytest.raises(ValueError, match="> 1"):
        DivergenceGuard(factor=0.5)


def test_state_dict_round_trip():
    guard = _guard(3.0, window=3)
    guard.check(loss=1e6, iteration=1, lr=1.0)
    other = DivergenceGuard(window=3)
    other.load_state_dict(guard.state_dict())
    assert (other.reference, other.strikes) == (3.0, 1)
    other.load_state_dict(None)  # a checkpoint from before the guard: unchanged
    assert other.reference == 3.0


def test_diverged_record_keeps_the_reason_and_finite_values(tmp_path):
    record = diverged_record(iteration=60, lr=1e3, terms={"loss_cls": 7e9, "grad_norm": math.inf},
                             metrics_jsonl=tmp_path / "none.jsonl", wall_time_s=1.0,
                             reason="loss 7e+09 = 3.5e+09 x the first step's 2")
    assert record["status"] == "diverged" and record["reason"].startswith("loss 7e+09")
    assert record["values"] == {"loss_cls": 7e9, "grad_norm": "inf"}
    assert record["nonfinite"] == {"grad_norm": "inf"}
    assert record["iterations"] == 59  # a non-finite step is never applied
    exploded = diverged_record(iteration=60, lr=1e3, terms={"loss_cls": 7e9}, reason="loss 7e9",
                               metrics_jsonl=tmp_path / "none.jsonl", wall_time_s=1.0)
    assert exploded["iterations"] == 60 and exploded["nonfinite"] == {}
    nan = diverged_record(iteration=3, lr=0.1, terms={"loss_box": math.nan},
                          metrics_jsonl=tmp_path / "none.jsonl", wall_time_s=1.0)
    assert nan["reason"] == "non-finite loss_box"


def test_the_trainer_stops_a_run_whose_finite_loss_explodes(shapes_root, tmp_path):
    """From step 2 on the criterion reports losses x1000 (gradients untouched, so nothing
    turns NaN): finite, but diverged."""
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(12), log_period=2,
                                divergence=DivergenceGuard(factor=100.0, window=2))
    criterion = trainer.criterion

    def exploding(outputs, targets):
        losses = criterion(outputs, targets)
        boost = 1000.0 if trainer.iteration >= 1 else 1.0
        return {k: v + v.detach() * (boost - 1) for k, v in losses.items()}

    trainer.criterion = exploding
    with pytest.raises(DivergedError) as info:
        trainer.train()
    # log points at 2 (x1000 on one step of two: ~500x), 4: the second in a row
    assert info.value.iteration == 4 and trainer.iteration == 4
    assert info.value.reason.startswith("loss ") and "x the first step's" in info.value.reason
    assert all(math.isfinite(v) for v in info.value.terms.values())
