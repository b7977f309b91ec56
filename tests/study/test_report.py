"""tools/compare.py's library on fabricated run folders: which keys differ, the seed groups,
their mean/std and paired difference against hand-computed values, every output file, a
half-finished run listed, mixed datasets refused."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from helpers.load_file import load_tool

from detector.run_files import last_logged_losses
from detector.study import StudyError, build_study, compare, find_runs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ("circle", "square")
AP = {("ce", 0): 0.30, ("ce", 1): 0.34, ("ce", 2): 0.32,
      ("focal", 0): 0.40, ("focal", 1): 0.41, ("focal", 2): 0.45}


def make_run(folder: Path, *, overrides: list[str], config: dict, final: dict | None,
             records: list[dict]) -> Path:
    """A run folder as tools/train_net.py writes it (only the files a study reads)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if final is not None:
        (folder / "final_metrics.json").write_text(json.dumps(final))
    return folder


def train_records(iters, phase="end_to_end", scale=1.0) -> list[dict]:
    return [{"iter": it, "phase": phase, "loss": 2.0 * scale / it, "loss_cls": 1.0 * scale / it,
             "loss_box": 1.0 * scale / it, "grad_norm": 5.0, "lr": 1e-3} for it in iters]


def finished(ap: float, dataset_classes=CLASSES) -> dict:
    metrics = {"AP": ap, "AP50": ap + 0.3, "AP75": ap - 0.1, "APs": None, "APm": ap, "APl": ap,
               "per_class": {c: ap + 0.01 * i for i, c in enumerate(dataset_classes)},
               "pr_iou50": {"iou": 0.5, "recall": [0.0, 0.5, 1.0],
                            "precision": {c: [1.0, ap + 0.3, 0.0] for c in dataset_classes}}}
    return {**metrics, "status": "finished", "iterations": 20, "wall_time_s": 120.0}


def config(loss: str, seed: int, dataset: str = "shapes", lr: float = 1e-3) -> dict:
    return {"seed": seed, "name": f"{loss}_end_to_end", "output_dir": f"x/{loss}{seed}",
            "dataset": {"name": dataset}, "loss": {"name": loss, "gamma": 2.0 if loss == "focal"
                                                   else None}, "optimizer": {"lr": lr}}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """experiment=ce,focal x seed=0,1,2 finished, plus focal seed 3 still running."""
    root = tmp_path_factory.mktemp("multirun") / "2026-11-30_12-00-00"
    for (loss, seed), ap in AP.items():
        make_run(root / f"experiment={loss},seed={seed}",
                 overrides=[f"experiment={loss}", f"seed={seed}", "schedule.iterations=20"],
                 config=config(loss, seed), final=finished(ap),
                 records=[*train_records([10, 20]), {"iter": 20, "phase": "end_to_end",
                                                     "AP": ap, "AP50": ap + 0.3}])
    make_run(root / "experiment=focal,seed=3",
             overrides=["experiment=focal", "seed=3", "schedule.iterations=20"],
             config=config("focal", 3), final=None, records=train_records([10]))
    (root / "sweep.jsonl").write_text("")  # a sweep folder's own files are not runs
    return root


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    return compare([str(sweep)], tmp_path_factory.mktemp("report"))


def test_groups_stats_and_paired_difference_match_hand_computed_values(report):
    study = report.study
    assert study.keys == ["experiment", "seed"]  # schedule.iterations is the same everywhere
    assert [g.label for g in study.groups] == ["experiment=ce", "experiment=focal"]
    ce, focal = study.groups
    assert ce.stat("AP") == pytest.approx((0.32, 0.02, 3))
    assert focal.stat("AP") == pytest.approx((0.42, math.sqrt(0.0007), 3))  # the running one: out
    assert len(focal.runs) == 4 and len(focal.finished()) == 3
    diff = study.differences["AP"]  # focal - ce per seed: 0.10, 0.07, 0.13
    assert diff.paired and diff.n == 3
    assert diff.mean == pytest.approx(0.10)
    assert diff.half_width == pytest.approx(4.303 * 0.03 / math.sqrt(3))
    assert "AP: [experiment=focal] - [experiment=ce] = +0.1000 +- 0.0745" in report.text
    assert "| experiment=ce | 3/3 | 0.3200 +- 0.0200 |" in report.text
    assert "| experiment=focal | 3/4 | 0.4200 +- 0.0265 |" in report.text


def test_every_file_is_written_and_the_running_run_is_listed(report):
    out = report.out_dir
    names = {p.name for p in report.files}
    assert names == {"summary.md", "summary.csv", "curves.png", "pr_curves.png"}
    for png in ("curves.png", "pr_curves.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC)
    assert (out / "summary.md").read_text() == report.text
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 7
    by_run = {r["run"]: r for r in rows}
    assert float(by_run["experiment=ce,seed=1"]["AP"]) == pytest.approx(0.34)
    assert float(by_run["experiment=ce,seed=1"]["AP[square]"]) == pytest.approx(0.35)
    assert by_run["experiment=ce,seed=1"]["APs"] == ""  # undefined: empty, not -1 or nan
    running = by_run["experiment=focal,seed=3"]
    assert running["status"] == "incomplete" and running["AP"] == "" and running["iterations"] == "10"
    assert "| experiment=focal,seed=3 | focal | 3 | no final metrics (last logged it 10) |" in report.text


def test_lr_sweep_plot_with_a_diverged_run(tmp_path):
    root = tmp_path / "lr"
    for lr in (1e-4, 1e-3, 1e-2):
        diverged = lr == 1e-2
        final = ({"status": "diverged", "iteration": 7, "lr": lr, "iterations": 6}
                 if diverged else finished(0.3))
        make_run(root / f"optimizer.lr={lr}", overrides=["experiment=focal", f"optimizer.lr={lr}"],
                 config=config("focal", 0, lr=lr), final=final, records=train_records([5]))
    report = compare([root], tmp_path / "out")
    assert report.study.keys == ["optimizer.lr"]
    assert (tmp_path / "out" / "lr_sweep.png").read_bytes().startswith(PNG_MAGIC)
    assert "diverged at it 7 (lr 1.0e-02)" in report.text
    assert len(report.study.groups) == 3 and not report.study.differences


def test_configs_tell_runs_apart_when_overrides_do_not(tmp_path):
    """Two runs made with the same command line from different config files."""
    for loss in ("ce", "focal"):
        make_run(tmp_path / loss, overrides=[], config=config(loss, 0), final=finished(0.3),
                 records=train_records([5]))
    runs = find_runs([str(tmp_path / "*")])  # a glob
    assert [r.name for r in runs] == ["ce", "focal"]
    assert build_study(runs).keys == ["loss.gamma", "loss.name"]  # not output_dir or name


def test_mixed_datasets_are_refused_with_one_sentence(sweep, tmp_path):
    make_run(tmp_path / "coco_run", overrides=["dataset=coco"], config=config("ce", 0, "coco"),
             final=finished(0.2, ("person", "car")), records=[])
    with pytest.raises(StudyError) as info:
        compare([sweep, tmp_path / "coco_run"], tmp_path / "out")
    message = str(info.value)
    assert "different datasets" in message and "\n" not in message and message.count(". ") == 0
    assert not (tmp_path / "out").exists()


def test_no_runs_is_one_sentence(tmp_path):
    with pytest.raises(StudyError, match="no run folders"):
        find_runs([tmp_path])
    with pytest.raises(StudyError, match="is not a run or sweep folder"):
        find_runs([tmp_path / "nowhere"])


def test_last_logged_losses_skip_eval_lines_and_non_finite_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 1, "loss": 2.0, "loss_cls": 1.0, "grad_norm": 3.0, "lr": 0.1}\n'
                    '{"iter": 2, "loss": NaN, "loss_cls": NaN}\n'
                    '{"iter": 2, "AP": 0.1}\n{"iter": 3, "lo')  # a half-written tail
    with pytest.warns(UserWarning, match="metrics.jsonl:4: not a JSON object"):  # the one reader
        assert last_logged_losses(path) == {"iter": 1, "loss": 2.0, "loss_cls": 1.0,
                                            "grad_norm": 3.0}
    assert last_logged_losses(tmp_path / "absent.jsonl") is None


def _compare_tool():
    return load_tool("compare.py", register=True)


def test_tool_prints_the_table_and_where_the_report_is(sweep, tmp_path, capsys):
    tool = _compare_tool()
    assert tool.main([str(sweep)]) == 0
    printed = capsys.readouterr().out
    assert "| experiment=ce | 3/3 |" in printed
    assert f"report: {sweep / 'compare'}" in printed and (sweep / "compare" / "curves.png").is_file()
    coco = make_run(tmp_path / "coco", overrides=[], config=config("ce", 0, "coco"),
                    final=finished(0.2, ("person",)), records=[])
    assert tool.main([str(sweep), str(coco), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1


def test_four_step_phases_are_marked_and_lines_break_where_a_term_is_not_logged(tmp_path):
    from detector.study.plots import _grid, _phase_starts

    records = [*train_records([10, 20], phase="rpn"), *train_records([30, 40], phase="fast_rcnn")]
    for r in records[:2]:
        del r["loss_cls"]  # the RPN steps do not train the ROI head
    run = make_run(tmp_path / "two_stage", overrides=["experiment=two_stage"],
                          config=config("ce", 0), final=None, records=records)
    load = find_runs([run])
    assert _phase_starts(load) == {30.0: "fast_rcnn"}  # without phase_iter: the first log point
    records[2]["phase_iter"] = 15  # logged every 15 iterations: step 2 began after iteration 15
    run = make_run(tmp_path / "two_stage_b", overrides=["experiment=two_stage"],
                   config=config("ce", 0), final=None, records=records)
    assert _phase_starts(find_runs([run])) == {15.0: "fast_rcnn"}
    iters, values = _grid(load, "loss_cls")
    assert iters.tolist() == [10, 20, 30, 40]
    assert math.isnan(values[0, 0]) and math.isnan(values[0, 1]) and values[0, 2] == pytest.approx(1 / 30)
