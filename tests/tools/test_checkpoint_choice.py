"""Which final.pth the tools take when no checkpoint= is given (``cli.choose_checkpoint``).

The newest finished run with a final evaluation, not merely the newest final.pth: a small
experiment started (or diverged) after ``make train`` must not swap the model that eval,
predict, export, serve and inspect_model use. The choice and its reason are logged in one line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from detector import run_files
from detector_cli.cli import choose_checkpoint, resolve_checkpoint


def _run(outputs: Path, name: str, *, mtime: float, final: object = None, raw: str | None = None
         ) -> Path:
    """A fabricated run folder with checkpoints/final.pth (written at ``mtime``) and, when given,
    final_metrics.json (``final`` as JSON, or the text ``raw``)."""
    checkpoints = outputs / name / run_files.CHECKPOINTS
    checkpoints.mkdir(parents=True)
    path = checkpoints / run_files.FINAL
    path.write_bytes(b"weights")
    os.utime(path, (mtime, mtime))
    if final is not None:
        (outputs / name / run_files.FINAL_METRICS).write_text(json.dumps(final))
    if raw is not None:
        (outputs / name / run_files.FINAL_METRICS).write_text(raw)
    return path


FINISHED = {"status": "finished", "AP": 0.61, "AP50": 0.871, "iterations": 60}


def test_newest_finished_evaluated_run_wins_over_newer_ones(tmp_path, caplog):
    outputs = tmp_path / "outputs"
    _run(outputs, "oldest_finished", mtime=1_000, final={**FINISHED, "AP50": 0.5})
    chosen = _run(outputs, "finished", mtime=2_000, final=FINISHED)
    _run(outputs, "diverged", mtime=3_000,
         final={"status": "diverged", "reason": "non-finite loss", "iteration": 4})
    _run(outputs, "no_val_set", mtime=4_000,
         final={"status": "finished", "iterations": 6})  # finished, but never evaluated
    _run(outputs, "malformed", mtime=5_000, raw="{not json")
    _run(outputs, "bad_status", mtime=5_500, final={"status": "exploded", "AP50": 0.9})
    _run(outputs, "unfinished", mtime=6_000)  # still running, or killed: no final_metrics.json
    path, reason = choose_checkpoint(outputs)
    assert path == chosen
    assert reason.startswith(f"newest finished, evaluated run: {chosen} (AP50 0.871, ")
    assert "skipped 2 run(s) with an unreadable final_metrics.json" in reason
    assert reason.endswith("pin one with checkpoint=PATH")
    cfg = OmegaConf.create({"checkpoint": None, "outputs_root": str(outputs)})
    with caplog.at_level(logging.INFO, logger="checkpoint"):
        assert resolve_checkpoint(cfg) == chosen
    assert [r.getMessage() for r in caplog.records] == [f"checkpoint: {reason}"]


def test_early_stopped_counts_as_finished_and_ap_stands_in_for_ap50(tmp_path):
    outputs = tmp_path / "outputs"
    _run(outputs, "finished", mtime=1_000, final=FINISHED)
    chosen = _run(outputs, "early", mtime=2_000,
                  final={"status": "early_stopped", "AP": 0.25, "AP50": None})
    path, reason = choose_checkpoint(outputs)
    assert path == chosen and "(AP 0.250, " in reason


def test_without_an_evaluated_run_the_newest_final_pth(tmp_path):
    outputs = tmp_path / "outputs"
    _run(outputs, "diverged", mtime=1_000, final={"status": "diverged", "iteration": 3})
    newest = _run(outputs, "unfinished", mtime=2_000)
    path, reason = choose_checkpoint(outputs)
    assert path == newest
    assert reason.startswith(f"no finished, evaluated run; the newest final.pth: {newest} (")


def test_a_final_pth_outside_checkpoints_is_no_evaluated_run(tmp_path):
    outputs = tmp_path / "outputs"
    evaluated = _run(outputs, "finished", mtime=1_000, final=FINISHED)
    loose = outputs / "copied" / "final.pth"  # a copy someone left: no run folder around it
    loose.parent.mkdir(parents=True)
    loose.write_bytes(b"weights")
    (loose.parent / run_files.FINAL_METRICS).write_text(json.dumps(FINISHED))
    os.utime(loose, (2_000, 2_000))
    assert choose_checkpoint(outputs)[0] == evaluated


def test_nothing_to_choose(tmp_path):
    assert choose_checkpoint(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert choose_checkpoint(tmp_path / "empty") is None


def test_an_explicit_checkpoint_is_not_second_guessed(tmp_path, caplog):
    cfg = OmegaConf.create({"checkpoint": "some/where.pth", "outputs_root": str(tmp_path)})
    with caplog.at_level(logging.INFO, logger="checkpoint"):
        assert resolve_checkpoint(cfg) == Path("some/where.pth")
    assert not caplog.records


@pytest.mark.parametrize("tool", ["eval.py", "predict.py", "export.py", "serve.py",
                                  "inspect_model.py"])
def test_every_tool_takes_the_shared_rule(tool):
    """The tools choose through resolve_checkpoint (their shim modules import it)."""
    source = (Path(__file__).resolve().parents[2] / "detector_cli" /
              {"eval.py": "evaluate.py"}.get(tool, tool)).read_text()
    assert "resolve_checkpoint" in source


def test_counts_are_singular_or_plural():
    """What the tools print of a one-class model (raccoon): "1 class", never "1 classes"."""
    from detector_cli.cli import counted
    assert counted(1, "class", "classes") == "1 class"
    assert counted(4, "class", "classes") == "4 classes"
    assert counted(0, "image") == "0 images" and counted(1, "image") == "1 image"
