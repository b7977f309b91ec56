"""A stop request during an evaluation (periodic or final) abandons it within one batch: the
checkpoint is written, the evaluation is logged as skipped and never recorded (no AP 0), and a
run stopped in its final evaluation resumes straight into it."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch
from helpers import tiny_training as tiny

from detector.checkpoint import load_checkpoint
from detector.data import build_dataloader
from detector.engine.guard import StopSignal
from detector.evaluation.inference import EvaluationStopped, predict


class SignalDuringEval:
    """Wraps a val loader: sends SIGTERM to this process as it hands out batch ``after`` (the
    signal arrives while that batch is evaluated), and counts the batches handed out."""

    def __init__(self, loader, after: int = 1) -> None:
        self.loader, self.after, self.handed_out = loader, after, 0
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.handed_out += 1
            if self.handed_out == self.after:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch


def _one_image_batches(trainer) -> None:
    """Val batches of one image: 4 batches, so that abandoning shows."""
    val = trainer.val_loader
    trainer.val_loader = torch.utils.data.DataLoader(
        val.dataset, batch_size=1, collate_fn=val.collate_fn)


def _eval_records(run) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "AP" in r]


def test_predict_stops_before_the_next_batch(shapes_root):
    torch.manual_seed(0)
    model = tiny.tiny_model()
    loader = build_dataloader(dataset=tiny.shapes(shapes_root, "val", train=False), batch_size=1,
                              train=False)
    asked = []
    with pytest.raises(EvaluationStopped) as info:
        predict(model, loader, device=torch.device("cpu"), progress=False,
                should_stop=lambda: asked.append(1) or len(asked) > 2)
    assert info.value.images_done == 2 and len(asked) == 3
    assert model.training  # the mode is given back
    assert len(predict(model, loader, device=torch.device("cpu"), progress=False,
                       should_stop=lambda: False)) == 4


def test_sigterm_during_a_periodic_evaluation_skips_it_and_saves(shapes_root, tmp_path, caplog):
    stop = StopSignal()
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(6), val=True,
                                eval_period=2, stop_signal=stop)
    _one_image_batches(trainer)
    trainer.val_loader = watched = SignalDuringEval(trainer.val_loader)
    with stop.installed(), caplog.at_level(logging.INFO, logger="detector.train"):
        summary = trainer.train()
    assert summary["interrupted"] == "SIGTERM" and summary["iterations"] == 2
    assert watched.handed_out == 1  # of 4: abandoned before the next batch
    assert summary["checkpoint"].name == "iter_0000002.pth" and summary["metrics"] is None
    state = load_checkpoint(summary["checkpoint"])
    assert state["trainer"]["last_eval_iteration"] is None  # nothing recorded for it
    assert state["trainer"]["last_metrics"] is None
    assert _eval_records(tmp_path) == []  # never an AP of 0
    assert any("evaluation at iteration 2 skipped: SIGTERM arrived during it" in r.getMessage()
               for r in caplog.records)


def test_sigterm_during_the_final_evaluation_saves_and_resume_evaluates(shapes_root, tmp_path):
    stop = StopSignal()
    trainer = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(3), val=True,
                                stop_signal=stop)  # checkpoint_period 0: only the stop writes
    _one_image_batches(trainer)
    trainer.val_loader = watched = SignalDuringEval(trainer.val_loader, after=2)
    with stop.installed():
        summary = trainer.train()
    assert summary["interrupted"] == "SIGTERM" and summary["iterations"] == 3
    assert watched.handed_out == 2 and summary["metrics"] is None
    assert summary["checkpoint"].name == "iter_0000003.pth"
    assert _eval_records(tmp_path) == []

    again = tiny.make_trainer(shapes_root, tmp_path, phases=tiny.end_to_end(3), val=True)
    again.resume(summary["checkpoint"])
    resumed = again.train()
    assert resumed["interrupted"] is None and resumed["iterations"] == 3
    assert resumed["metrics"]["num_images"] == 4
    assert [r["iter"] for r in _eval_records(tmp_path)] == [3]
    for key, value in load_checkpoint(summary["checkpoint"])["model"].items():
        assert torch.equal(again.models["main"].state_dict()[key], value), key  # no training
