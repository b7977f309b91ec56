"""The sweep index: job folder names, sweep.jsonl lines as jobs end, sweep.md."""
from __future__ import annotations

import json
import shlex

from detector.study.sweep_index import (
    INDEX_MD,
    index_markdown,
    job_entry,
    job_folder_name,
    read_index,
    record_job,
)


def test_job_folder_names_are_one_readable_component():
    assert job_folder_name("experiment=ce,seed=0", 3) == "experiment=ce,seed=0"
    assert job_folder_name("dataset.root=/data/coco,seed=1", 0) == "dataset.root=_data_coco,seed=1"
    assert job_folder_name("", 7) == "job7"
    long = ",".join(f"key{i}=value{i}" for i in range(40))
    cut = job_folder_name(long, 12, limit=50)
    assert cut == long[:50] + "_etc_job12" and len(cut) < 255


def _run(folder, final):
    folder.mkdir(parents=True)
    if final is not None:
        (folder / "final_metrics.json").write_text(json.dumps(final))
    return folder


def test_jobs_are_indexed_as_they_end_with_their_outcome(tmp_path):
    sweep = tmp_path / "sweep"
    done = _run(sweep / "optimizer.lr=0.001", {"status": "finished", "iterations": 20,
                                               "AP": 0.25, "AP50": 0.5, "per_class": {}})
    diverged = _run(sweep / "optimizer.lr=10.0", {"status": "diverged", "iteration": 7,
                                                  "lr": 9.5, "iterations": 6})
    broken = _run(sweep / "optimizer.lr=1.0", None)
    common = ["experiment=focal", "schedule.iterations=20"]
    for job, (folder, lr) in enumerate([(done, "0.001"), (diverged, "10.0"), (broken, "1.0")]):
        error = "RuntimeError: out of memory" if folder is broken else None
        record_job(sweep, job_entry(job=job, overrides=[*common, f"optimizer.lr={lr}"],
                                    run_dir=folder, sweep_dir=sweep, error=error))
    index = read_index(sweep)
    assert [(e["job"], e["dir"], e["status"]) for e in index] == [
        (0, "optimizer.lr=0.001", "finished"), (1, "optimizer.lr=10.0", "diverged"),
        (2, "optimizer.lr=1.0", "failed")]
    assert index[0]["AP50"] == 0.5 and index[0]["iterations"] == 20
    assert index[1]["diverged_at"] == 7 and index[1]["lr"] == 9.5 and index[1]["AP"] is None
    table = (sweep / INDEX_MD).read_text()
    assert "Overrides of every job: experiment=focal schedule.iterations=20" in table
    assert "| 0 | optimizer.lr=0.001 | optimizer.lr=0.001 | finished | 20 | 0.2500 | 0.5000 |" in table
    assert "| 1 | optimizer.lr=10.0 | optimizer.lr=10.0 | diverged at it 7 (lr 9.5e+00) | 6 |" in table
    assert "failed: RuntimeError: out of memory" in table
    assert f"python tools/compare.py {sweep}" in table


def test_the_compare_command_in_sweep_md_pastes_back(tmp_path):
    sweep = tmp_path / "my sweeps" / "2026-01-01_00-00-00"
    entry = {"job": 0, "overrides": ["seed=0"], "dir": "seed=0", "status": "finished"}
    command = index_markdown(sweep, [entry]).split("Compare the runs: ", 1)[1].strip()
    assert shlex.split(command) == ["python", "tools/compare.py", str(sweep)]
