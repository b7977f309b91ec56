"""The best checkpoint and the early stop (issue #28, part 2): the tracker's bookkeeping (max/min,
patience, NaN and undefined values, its state in a checkpoint), the options' rules, and in the
trainer: best.pth (the same payload as final.pth), stopping early, and a killed + resumed run
giving the same best.pth as an uninterrupted one."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import tiny_training as tiny

from detector.checkpoint import load_checkpoint
from detector.engine import validation
from detector.engine.best import BestCheckpoint, BestRule, BestTracker, save_model_file
from detector.errors import OptionError


def _tracker(metric="AP50", mode="max", patience=None) -> BestTracker:
    return BestTracker(rule=BestRule(metric=metric, mode=mode, patience=patience))


# ------------------------------------------------------------------------------ the tracker
@pytest.mark.parametrize(("mode", "values", "improved", "best"), [
    ("max", [0.1, 0.3, 0.2, 0.3, 0.5], [True, True, False, False, True], (0.5, 50)),
    ("min", [0.5, 0.3, 0.4, 0.3, 0.1], [True, True, False, False, True], (0.1, 50)),
    ("max", [0.2, 0.1], [True, False], (0.2, 10)),
])
def test_improves_or_not_by_mode(mode, values, improved, best):
    tracker = _tracker(mode=mode)
    seen = [tracker.observe({"AP50": v, "AP": 0.0}, 10 * (i + 1)) for i, v in enumerate(values)]
    assert seen == improved  # an equal value is no improvement
    assert (tracker.value, tracker.iteration) == best
    assert tracker.record() == {"metric": "AP50", "value": best[0], "iteration": best[1]}


def test_patience_counts_evaluations_without_improvement_and_resets():
    tracker = _tracker(patience=2)
    assert tracker.observe({"AP50": 0.1}, 1) and tracker.bad == 0
    assert not tracker.observe({"AP50": 0.1}, 2) and tracker.bad == 1 and not tracker.stop_due
    assert tracker.observe({"AP50": 0.2}, 3) and tracker.bad == 0  # an improvement resets it
    tracker.observe({"AP50": 0.0}, 4)
    assert not tracker.stop_due
    tracker.observe({"AP50": 0.15}, 5)
    assert tracker.bad == 2 and tracker.stop_due
    assert _tracker(patience=None).stop_due is False


@pytest.mark.parametrize("bad", [math.nan, None, math.inf, -math.inf])
def test_nan_or_undefined_never_improves(bad):
    tracker = _tracker(mode="min")
    assert not tracker.observe({"AP50": bad}, 1) and tracker.record() is None
    assert tracker.observe({"AP50": 0.4}, 2)
    assert not tracker.observe({"AP50": bad}, 3)
    assert (tracker.value, tracker.iteration, tracker.bad) == (0.4, 2, 1)


def test_a_metric_the_evaluation_lacks_is_one_line_naming_it():
    with pytest.raises(OptionError, match=r"^metric 'AP5O' is not one the evaluation reports "
                                          r"\(AP, AP50\)$") as caught:
        _tracker(metric="AP5O").observe({"AP": 0.1, "AP50": 0.2, "per_class": {}}, 1)
    assert caught.value.option == "metric"


def test_off_tracks_nothing():
    tracker = _tracker(metric=None)
    assert not tracker.observe({"AP50": 0.9}, 1) and tracker.record() is None


def test_state_round_trip_and_older_or_other_states_start_fresh(caplog):
    tracker = _tracker(patience=3)
    for i, v in enumerate([0.2, 0.5, 0.4]):
        tracker.observe({"AP50": v}, i + 1)
    state = tracker.state_dict()
    assert state == {"metric": "AP50", "mode": "max", "value": 0.5, "iteration": 2,
                     "bad_evaluations": 1}
    again = _tracker(patience=3)
    again.load_state_dict(state)
    assert again.state_dict() == state
    again.load_state_dict(None)  # a checkpoint from before the best was kept
    assert (again.value, again.iteration, again.bad) == (None, None, 0)
    other = _tracker(metric="AP", patience=3)
    other.load_state_dict(state)
    assert other.record() is None and other.bad == 0
    assert "the best value starts afresh" in caplog.text


@pytest.mark.parametrize(("options", "message"), [
    ({"mode": "biggest"}, r"^mode must be 'max' or 'min', got 'biggest'$"),
    ({"patience": -1}, r"^patience must be null or an integer >= 1, got -1$"),
    ({"patience": 0}, r"^patience must be null or an integer >= 1, got 0$"),
    ({"patience": True}, r"^patience must be null or an integer >= 1, got True$"),
    ({"patience": 2, "metric": None}, r"^patience needs a metric to watch"),
    ({"metric": ""}, r"^metric must be a metric name or null, got ''$"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(OptionError, match=message):
        BestRule(**{"metric": "AP50", **options})


def test_best_file_has_the_final_files_payload(tmp_path):
    model = torch.nn.Linear(2, 3)
    extra = {"config": {"a": 1}, "class_names": ["x"], "label_to_cat_id": {"1": 7}}
    best = BestCheckpoint(rule=BestRule(metric="AP50"), path=tmp_path / "best.pth", extra=extra)
    assert best.update({"AP50": 0.3}, 4, model)
    save_model_file(tmp_path / "final.pth", model=model, extra=extra, iteration=4)
    a, b = load_checkpoint(tmp_path / "best.pth"), load_checkpoint(tmp_path / "final.pth")
    assert a.keys() == b.keys() == {"config", "class_names", "label_to_cat_id", "model",
                                    "iteration"}
    assert a["iteration"] == 4 and all(torch.equal(a["model"][k], b["model"][k])
                                       for k in b["model"])
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not best.update({"AP50": 0.3}, 5, model)  # not better: the file stays as it was
    assert torch.equal(load_checkpoint(tmp_path / "best.pth")["model"]["weight"],
                       a["model"]["weight"])


# ------------------------------------------------------------------------------ in the trainer
RULE = BestRule(metric="AR100", mode="max")


def _run(root, out, *, stop_at=None, resume=None, best=RULE, iterations=6):
    stop = tiny.StopAfter(stop_at) if stop_at else None
    trainer = tiny.make_trainer(root, out, phases=tiny.end_to_end(iterations), val=True,
                                eval_period=2, checkpoint_period=1, keep_checkpoints=10,
                                best=best, stop_signal=stop,
                                checkpoint_extra={"class_names": ["a", "b", "c", "d"]})
    if stop is not None:
        stop.trainer = trainer
    if resume is not None:
        trainer.resume(resume)
    return trainer, trainer.train()


def _evaluations(out) -> list[float]:
    return [json.loads(line)["AR100"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"AR100"' in line]


def test_kill_and_resume_gives_the_same_best_checkpoint(shapes_root, tmp_path):
    _, straight = _run(shapes_root, tmp_path / "straight")
    assert straight["best"] is not None and not straight["early_stopped"]
    _, stopped = _run(shapes_root, tmp_path / "run", stop_at=4)
    assert stopped["interrupted"] == "test stop" and stopped["iterations"] == 4
    # stopped during the evaluation at 4: the resumed run carries the one at 2 and redoes 4
    _, resumed = _run(shapes_root, tmp_path / "run", resume=stopped["checkpoint"])
    assert resumed["best"] == straight["best"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "best.pth")
    b = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pth")
    assert a["iteration"] == b["iteration"] == straight["best"]["iteration"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    values = _evaluations(tmp_path / "straight")
    assert straight["best"]["value"] == pytest.approx(max(values))


def _scripted(monkeypatch, values):
    """Each evaluation of the trainer returns the next of ``values`` as its AP50 (no model run)."""
    script = iter(values)
    monkeypatch.setattr(validation, "evaluate_sharded",
                        lambda *args, **kwargs: ({"AP50": next(script), "AP": 0.0}, []))


def test_patience_stops_early_keeping_best_and_resume_remembers_it(shapes_root, tmp_path,
                                                                   monkeypatch):
    rule = BestRule(metric="AP50", patience=2)
    _scripted(monkeypatch, [0.3, 0.5, 0.4, 0.45, 0.9, 0.9])
    _, summary = _run(shapes_root, tmp_path / "run", best=rule, iterations=12)
    assert summary["early_stopped"] and summary["interrupted"] is None
    # evaluations at 2, 4 (the best), 6 and 8 (no better twice): stopped after 8 of 12
    assert summary["iterations"] == 8
    assert summary["best"] == {"metric": "AP50", "value": 0.5, "iteration": 4}
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pth")["iteration"] == 4
    last = tmp_path / "run" / "checkpoints" / "iter_0000008.pth"
    state = load_checkpoint(last)
    assert state["best"]["bad_evaluations"] == 2 and state["trainer"]["phase_iter"] == 8
    # resuming the stopped run's last state stops again at once (the count was kept)
    _, again = _run(shapes_root, tmp_path / "run", best=rule, iterations=12, resume=last)
    assert again["early_stopped"] and again["iterations"] == 8


def test_patience_running_out_at_the_final_evaluation_is_no_early_stop(shapes_root, tmp_path,
                                                                       monkeypatch):
    _scripted(monkeypatch, [0.5, 0.4, 0.3])  # at 2, 4 and the end (6)
    _, summary = _run(shapes_root, tmp_path / "run", best=BestRule(metric="AP50", patience=2))
    assert summary["iterations"] == 6 and not summary["early_stopped"]
    assert summary["best"] == {"metric": "AP50", "value": 0.5, "iteration": 2}


def test_a_checkpoint_at_an_evaluation_holds_its_result(shapes_root, tmp_path, monkeypatch):
    """Killed after the checkpoint of iteration 4 (an evaluation's, the best's): resuming it
    must not count the evaluation at 6 as a new best over the one at 2 (the checkpoint used to
    be written before the evaluation, so it lacked the best of iteration 4)."""
    _scripted(monkeypatch, [0.3, 0.5, 0.4])
    rule = BestRule(metric="AP50")
    _, straight = _run(shapes_root, tmp_path / "straight", best=rule)
    assert straight["best"] == {"metric": "AP50", "value": 0.5, "iteration": 4}
    shutil.copytree(tmp_path / "straight", tmp_path / "killed")
    _scripted(monkeypatch, [0.4])  # the evaluation at 6 again
    _, resumed = _run(shapes_root, tmp_path / "killed", best=rule,
                      resume=tmp_path / "killed" / "checkpoints" / "iter_0000004.pth")
    assert resumed["best"] == straight["best"]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "best.pth")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "best.pth")
    assert a["iteration"] == b["iteration"] == 4
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
