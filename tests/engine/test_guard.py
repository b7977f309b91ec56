"""The NaN/Inf guard (stop with one clear message after saving the last good state, or skip and
count) and the graceful stop on SIGINT/SIGTERM."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from helpers import tiny_training as tiny

from detector.checkpoint import load_checkpoint
from detector.engine.guard import NonFiniteError, StopSignal, describe_nonfinite


class CorruptBatches:
    """Wraps a train loader: ``corrupt(batch)`` is applied to the batches numbered in ``at``
    (counted over the whole run). Keeps the sampler visible, so resuming logic still applies."""

    def __init__(self, loader, at: set[int], corrupt) -> None:
        self.loader, self.at, self.corrupt = loader, at, corrupt
        self.batch_sampler = loader.batch_sampler
        self.count = 0

    def __iter__(self):
        for batch in self.loader:
            if self.count in self.at:
                self.corrupt(batch)
            self.count += 1
            yield batch


def _corrupt(trainer, at, corrupt) -> None:
    trainer.stream.loader = CorruptBatches(trainer.train_loader, set(at), corrupt)


def _nan_image(batch) -> None:
    batch["images"][0, :, 3, 5] = float("nan")


def _finite_state(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def _finite(trainer) -> bool:
    return _finite_state(trainer.models["main"].state_dict())


def test_absurd_learning_rate_stops_with_a_clear_message_after_saving(shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(20), lr=1e10)
    with pytest.raises(NonFiniteError) as info:
        trainer.train()
    error, message = info.value, str(info.value)
    assert "\n" not in message
    assert f"at iteration {error.iteration} " in message and error.iteration <= 20
    assert "learning rate" in message and f"{error.lr:.3g}" in message and error.lr > 1e6
    assert "lower the learning rate" in message and "warmup" in message
    assert "clip" in message and "annotations" in message
    assert error.terms and all(not math.isfinite(v) for v in error.terms.values())
    for name in error.terms:
        assert f"{name}=" in message
    # the last good state: the weights before the failed step, finite, resumable
    assert error.checkpoint is not None and error.checkpoint.is_file()
    assert str(error.checkpoint) in message
    state = load_checkpoint(error.checkpoint)
    assert state["iteration"] == error.iteration - 1 == trainer.iteration
    assert _finite_state(state["model"])


def test_the_offending_term_is_named(shapes_root, tmp_path):
    """A non-finite value in one loss term (e.g. a corrupt regression target) is named alone."""
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(5))
    criterion = trainer.criterion

    def corrupt_box_loss(outputs, targets):
        losses = criterion(outputs, targets)
        if trainer.iteration == 2:
            losses["loss_box"] = losses["loss_box"] * float("inf")
        return losses

    trainer.criterion = corrupt_box_loss
    with pytest.raises(NonFiniteError, match="at iteration 3 ") as info:
        trainer.train()
    assert "loss_box" in info.value.terms
    assert not {"loss_rpn_cls", "loss_rpn_box", "loss_cls"} & info.value.terms.keys()
    assert "loss_box=" in str(info.value) and "loss_cls=" not in str(info.value)


def test_a_corrupted_image_in_a_batch_stops_training(shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(6))
    _corrupt(trainer, at={2}, corrupt=_nan_image)
    with pytest.raises(NonFiniteError, match="at iteration 3 ") as info:
        trainer.train()
    terms = info.value.terms
    assert "grad_norm" in terms and any(name.startswith("loss_") for name in terms)
    assert _finite(trainer)  # the bad step was never applied (BN statistics included)
    assert _finite_state(load_checkpoint(info.value.checkpoint)["model"])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
def test_corrupted_box_coordinates_are_never_matched(shapes_root, tmp_path, value):
    """A NaN/inf/huge box slipped into a batch has no positive IoU with any anchor or proposal,
    so it is never a training target: the guard does not fire and the weights stay finite."""
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(4))

    def corrupt(batch):
        batch["boxes"][:, 0, 2] = value

    _corrupt(trainer, at={1}, corrupt=corrupt)
    summary = trainer.train()
    assert summary["iterations"] == 4 and summary["skipped_steps"] == 0 and _finite(trainer)


def test_skip_mode_counts_skipped_steps_and_finishes(shapes_root, tmp_path, caplog):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(6),
                                on_nonfinite="skip")
    _corrupt(trainer, at={1, 4}, corrupt=_nan_image)
    with caplog.at_level("WARNING", logger="detector.train"):
        summary = trainer.train()
    assert summary["iterations"] == 6 and summary["skipped_steps"] == 2
    skipped = [r.getMessage() for r in caplog.records if "skipped step" in r.getMessage()]
    assert len(skipped) == 2 and "at iteration 2 " in skipped[0] and "2 skipped so far" in \
        skipped[1]
    assert _finite(trainer)


def test_skip_mode_gives_up_after_too_many_in_a_row(shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(10),
                                on_nonfinite="skip", max_consecutive_skips=3)
    _corrupt(trainer, at=set(range(2, 10)), corrupt=_nan_image)
    with pytest.raises(NonFiniteError, match="4 steps in a row") as info:
        trainer.train()
    assert info.value.iteration == 6 and trainer.skipped_steps == 3


def test_skipped_steps_leave_the_weights_untouched(shapes_root, tmp_path):
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(2),
                                on_nonfinite="skip")
    _corrupt(trainer, at={0, 1}, corrupt=_nan_image)
    before = {k: v.clone() for k, v in trainer.models["main"].state_dict().items()}
    assert trainer.train()["skipped_steps"] == 2
    after = trainer.models["main"].state_dict()
    for key, value in before.items():  # BN running statistics (moved by the forward) included
        assert torch.equal(value, after[key]), key


def test_describe_nonfinite_names_only_bad_values():
    bad, line = describe_nonfinite({"loss_cls": 1.0, "loss_box": float("nan"),
                                    "grad_norm": float("inf")}, iteration=7, phase="e2e",
                                   phase_iter=3, phase_total=9, lr=0.02)
    assert set(bad) == {"loss_box", "grad_norm"}
    assert line == ("non-finite loss_box=nan, grad_norm=inf at iteration 7 (phase e2e, step 3/9),"
                    " learning rate 0.02")


# ---------------------------------------------------------------------------- signals
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_sets_the_flag_and_handlers_are_restored(signum):
    previous = signal.getsignal(signum)
    stop = StopSignal()
    with stop.installed():
        os.kill(os.getpid(), signum)
        assert stop.requested and stop.reason == signal.Signals(signum).name
        assert stop.exit_code == 128 + signum
    assert signal.getsignal(signum) == previous


def test_no_handler_outlives_a_failed_block_or_a_failed_install():
    """An error inside the block (a refused resume) or while installing the second handler:
    the previous handlers are back either way (before, a failed install left SIGINT routed to
    a flag nobody reads: Ctrl-C did nothing)."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = StopSignal()
    with pytest.raises(RuntimeError, match="refused"), stop.installed():
        raise RuntimeError("refused")
    assert {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(ValueError), stop.installed((signal.SIGINT, signal.NSIG + 5)):
        pass
    assert {s: signal.getsignal(s) for s in before} == before


def test_second_sigint_aborts_at_once():
    stop = StopSignal()
    with stop.installed(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_sigterm_during_training_finishes_the_step_and_saves(shapes_root, tmp_path):
    stop = StopSignal()
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(8),
                                stop_signal=stop, checkpoint_period=100)
    criterion = trainer.criterion

    def signal_during_step_3(outputs, targets):
        if trainer.iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return criterion(outputs, targets)

    trainer.criterion = signal_during_step_3
    with stop.installed():
        summary = trainer.train()
    assert summary["interrupted"] == "SIGTERM" and summary["iterations"] == 3
    assert summary["checkpoint"].name == "iter_0000003.pth"
    assert load_checkpoint(summary["checkpoint"])["iteration"] == 3
