"""A run folder's files (detector.run_files): each written then read back in today's exact
format, written whole or not at all, the log rewound and read past bad lines with a warning,
the outcome records, and each file name spelled once in the package."""

from __future__ import annotations

import ast
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from detector import fileio, run_files
from detector.evaluation.coco_eval import save_metrics
from detector.run_files import (
    DIVERGED,
    FINISHED,
    append_record,
    diverged_record,
    drop_records_after,
    eval_record,
    finished_record,
    last_logged_losses,
    parse_record,
    read_config,
    read_final_metrics,
    read_metrics_jsonl,
    train_record,
    write_config,
    write_final_metrics,
)
from detector.untrusted import RunFileError

PACKAGE = Path(__file__).resolve().parents[1] / "detector"
CONFIG = {"model": {"name": "faster_rcnn", "anchors": [32, 64]}, "seed": 0, "output_dir": "é"}


# --- round trips, in today's format ------------------------------------------------------------


def test_config_round_trip_is_indented_json(tmp_path):
    path = write_config(tmp_path / "run", CONFIG)
    assert path == tmp_path / "run" / "config.json"
    assert path.read_text() == json.dumps(CONFIG, indent=1)  # what training always wrote
    assert read_config(tmp_path / "run") == CONFIG
    assert read_config(tmp_path / "elsewhere") is None


def test_final_metrics_round_trip_matches_the_old_writer(tmp_path):
    record = finished_record({"AP": 0.5, "AP50": None, "per_class": {"cat": 0.25}},
                             iterations=12, wall_time_s=3.0)
    path = write_final_metrics(tmp_path, record)
    assert path.name == "final_metrics.json"
    old = save_metrics(tmp_path / "old.json", record)  # evaluation's writer, used until now
    assert path.read_bytes() == old.read_bytes()
    assert read_final_metrics(tmp_path) == record
    (tmp_path / "final_metrics.json").write_text('{"AP": 0.')
    with pytest.raises(RunFileError, match="final_metrics.json is not valid JSON"):
        read_final_metrics(tmp_path)


def test_metrics_records_round_trip_line_by_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    train = train_record(iteration=3, phase="end_to_end", phase_iter=3,
                         losses={"loss_cls": 1.0, "loss_box": float("nan")}, lr=0.01,
                         sec_per_iter=0.5, memory_mb=100.0, grad_norm=(2.0, 4.0),
                         extra={"grad_ratio_backbone": 0.1})
    val = eval_record(iteration=3, phase="end_to_end",
                      metrics={"AP": 0.5, "AP50": None, "per_class": {"cat": 0.2}})
    append_record(path, train)
    append_record(path, val)
    assert list(train) == ["iter", "phase", "phase_iter", "loss", "loss_cls", "loss_box", "lr",
                           "sec_per_iter", "memory_mb", "grad_norm", "grad_norm_max",
                           "grad_ratio_backbone"]
    assert val == {"iter": 3, "phase": "end_to_end", "AP": 0.5}  # numbers only
    assert path.read_text() == json.dumps(train) + "\n" + json.dumps(val) + "\n"  # NaN as NaN
    loaded = read_metrics_jsonl(path)
    assert loaded[1] == val and loaded[0]["loss_cls"] == 1.0 and math.isnan(loaded[0]["loss"])


# --- written whole or not at all --------------------------------------------------------------


def test_a_final_metrics_write_that_fails_midway_keeps_the_old_file(tmp_path):
    """json.dump writes piece by piece: NaN is refused after '{"AP": 0.5, ...' is out."""
    write_final_metrics(tmp_path, {"AP": 0.5})
    before = (tmp_path / "final_metrics.json").read_bytes()
    with pytest.raises(ValueError, match="Out of range float"):
        write_final_metrics(tmp_path, {"AP": 0.25, "AP50": float("nan")})
    assert (tmp_path / "final_metrics.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["final_metrics.json"]  # no temp file


def test_a_config_write_that_fails_leaves_the_old_one_or_nothing(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(28, "No space left on device")

    write_config(tmp_path / "run", {"seed": 0})
    monkeypatch.setattr(fileio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_config(tmp_path / "run", CONFIG)
    with pytest.raises(OSError, match="No space left"):
        write_config(tmp_path / "fresh", CONFIG)
    assert read_config(tmp_path / "run") == {"seed": 0}
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.json"]
    assert list((tmp_path / "fresh").iterdir()) == []


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_record_is_never_appended_through_a_link_or_into_a_fifo(kind, tmp_path):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not the run's\n")
    path = tmp_path / "metrics.jsonl"
    if kind == "symlink":
        os.symlink(outside, path)
    else:
        os.mkfifo(path)
    signal.alarm(10)  # a blocking open of the FIFO would hang: fail instead
    try:
        with pytest.raises(OSError):
            append_record(path, {"iter": 1})
    finally:
        signal.alarm(0)
    assert outside.read_text() == "not the run's\n"


# --- reading the log back, rewinding it -------------------------------------------------------


def test_lines_that_are_no_record_are_skipped_with_one_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"iter": 1, "loss": 2.0}\n[1, 2]\n\n"text"\n\xff\xfe{"iter": 9}\n'
                     b'{"iter": 2, "loss": 1.5}\n{"iter": 3, "lo')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl:2: not a JSON object, skipped "
                                         r"\(and 3 more lines\)"):
        records = read_metrics_jsonl(path)
    assert records == [{"iter": 1, "loss": 2.0}, {"iter": 2, "loss": 1.5}]


def test_someone_elses_log_is_read_bounded(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_metrics_jsonl(path, limit=100) == []  # absent
    path.write_text('{"iter": 1}\n' * 200)  # 2,400 bytes
    assert len(read_metrics_jsonl(path, limit=4096)) == 200
    with pytest.raises(RunFileError, match=r"metrics\.jsonl is larger than 2 KiB"):
        read_metrics_jsonl(path, limit=2048)
    with pytest.raises(FileNotFoundError):  # the run's own log: it must be there
        read_metrics_jsonl(tmp_path / "absent.jsonl")


def test_parse_record_takes_objects_only():
    assert parse_record('{"iter": 3, "loss": 1.5}') == {"iter": 3, "loss": 1.5}
    assert parse_record('{"iter": 3, "lo') is None  # half-written tail
    assert parse_record("[1, 2]") is None and parse_record("") is None
    assert parse_record("[" * 100_000) is None  # deeper than the stack
    assert parse_record('{"iter": 1' + "0" * 5000 + "}") is None  # over 4,300 digits


def test_drop_records_after_keeps_what_it_cannot_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [b'{"iter": 1, "loss": 1.0}\n', b'{"iter": 2.5, "loss": 1.0}\n', b"\n",
             b'{"iter": null}\n', b"[1, 2]\n", b'{"iter": 4, "AP": 0.1}\n', b'{"phase": "x"}\n',
             b'{"iter": Infinity}\n', b'{"iter": 2}\n', b'{"iter": 5, "lo']
    path.write_bytes(b"".join(lines))
    assert drop_records_after(path, 2) == 2  # iterations 2.5 and 4
    assert path.read_bytes() == b"".join(lines[:1] + lines[2:5] + lines[6:])
    assert drop_records_after(path, 2) == 0
    with pytest.raises(ValueError, match="iteration must be >= 0"):
        drop_records_after(path, -1)


# --- how a run ended --------------------------------------------------------------------------


def test_last_logged_losses_returns_the_newest_finite_training_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        {"iter": 10, "loss": 3.0, "loss_cls": 2.0, "lr": 0.1},
        {"iter": 20, "loss": 2.0, "loss_cls": 1.5, "grad_norm": 4.0},
        {"iter": 20, "AP": 0.2},  # an evaluation line, no loss
        {"iter": 30, "loss": 1.0, "loss_cls": 0.5, "loss_box": 0.5},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert last_logged_losses(path) == {"iter": 30, "loss": 1.0, "loss_cls": 0.5, "loss_box": 0.5}


def test_a_diverged_run_counts_the_iterations_it_finished(tmp_path):
    """The guard stopped iteration 7 (1-based): 6 iterations finished; the last finite losses
    are the newest logged ones, the non-finite terms strings."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 2, "loss": 2.0}\n{"iter": 4, "loss": 1.5, "loss_cls": 1.0}\n')
    record = diverged_record(iteration=7, lr=0.01, terms={"loss_cls": float("nan")},
                             metrics_jsonl=path, wall_time_s=1.5)
    assert record == {"status": DIVERGED, "reason": "non-finite loss_cls", "iteration": 7,
                      "lr": 0.01, "nonfinite": {"loss_cls": "nan"}, "values": {"loss_cls": "nan"},
                      "last_finite": {"iter": 4, "loss": 1.5, "loss_cls": 1.0},
                      "iterations": 6, "wall_time_s": 1.5, "checkpoint": None}
    json.dumps(record, allow_nan=False)  # valid JSON
    first = diverged_record(iteration=1, lr=0.01, terms={"loss": float("inf")},
                            metrics_jsonl=tmp_path / "none.jsonl", wall_time_s=0.1,
                            checkpoint=tmp_path / "iter_0.pth")
    assert first["iterations"] == 0 and first["last_finite"] is None
    assert first["nonfinite"] == {"loss": "inf"} and first["checkpoint"].endswith("iter_0.pth")


def test_a_finished_run_counts_every_iteration():
    record = finished_record({"AP": 0.5}, iterations=120, wall_time_s=9.0, skipped_steps=2)
    assert record == {"AP": 0.5, "status": FINISHED, "iterations": 120, "wall_time_s": 9.0,
                      "skipped_steps": 2}


# --- one owner ----------------------------------------------------------------------------------

NAMES = (run_files.CONFIG, run_files.METRICS, run_files.FINAL_METRICS, run_files.FINAL_RESULTS,
         Path(run_files.OVERRIDES).name)


def _spellings(path: Path) -> list[str]:
    """The string literals of a module that name a run folder's file (``"config.json"``,
    ``"x/metrics.jsonl"``, an f-string part ``"/final_metrics.json"``): docstrings, which
    describe the files, and messages that merely mention one (``"config.json: ..."``) do not
    count."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings
            and any(node.value == name or node.value.endswith("/" + name) for name in NAMES)]


def test_the_run_folders_file_names_are_spelled_once():
    owner = PACKAGE / "run_files.py"
    assert len(_spellings(owner)) == len(NAMES)  # the check sees them
    sources = [*PACKAGE.rglob("*.py"), *(PACKAGE.parent / "detector_cli").rglob("*.py")]
    elsewhere = {str(path.relative_to(PACKAGE.parent)): found
                 for path in sorted(sources) if path != owner
                 if (found := _spellings(path))}
    assert not elsewhere, f"use detector.run_files' names instead: {elsewhere}"


def test_reading_a_run_folder_needs_neither_torch_nor_matplotlib():
    code = ("import sys, detector.run_files; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'matplotlib'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=PACKAGE.parent).stdout
    assert loaded.strip() == "[]"
