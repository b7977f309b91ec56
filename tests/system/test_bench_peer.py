"""tools/bench_peer.py as a user runs it, on a tiny generated shapes set with the tiny backbone
and 2 iterations per run: both rows in comparison.md and comparison.json (finite metrics or
None), the peer's and our run folders, the default output folder; the peer starts from the
trunk weights our training starts from; a two-stage schedule and bad tool keys are one line,
exit code 2, nothing written.

The command lines run in this process (helpers/run_tool.py).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from helpers.run_tool import run_tool
from helpers.tiny_training import CLI_OVERRIDES
from hydra import compose, initialize_config_dir

from detector import run_files
from detector.benchmark.peer_report import COLUMNS
from detector.data import generate_shapes_dataset
from detector.runtime import seed_everything
from detector_cli.bench_peer import prepare
from detector_cli.train import build_trainer

pytestmark = pytest.mark.slow  # two tiny training runs (a few seconds each)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    root = generate_shapes_dataset(root=tmp_path_factory.mktemp("data") / "shapes",
                                   num_train=8, num_val=4, image_size=64)
    return [*CLI_OVERRIDES, f"dataset.root={root}"]


TWO = "schedule.iterations=2"


def _finite_or_none(value) -> bool:
    return value is None or (isinstance(value, float) and math.isfinite(value)
                             and 0.0 <= value <= 1.0)


def test_both_runs_side_by_side_in_the_default_folder(tiny, tmp_path):
    done = run_tool("bench_peer.py", ["experiment=ce", *tiny, TWO], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (out,) = (tmp_path / "outputs" / "bench_peer").iterdir()  # <name>_<date>
    assert out.name.startswith("ce_end_to_end_")
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "comparison.md",
                                                     "ours", "peer"]
    text = (out / "comparison.md").read_text()
    assert "\n| peer | finished |" in text and "\n| ours | finished |" in text
    assert "| anchor_offset | 0 | 0.5 |" in text  # a listed difference
    assert text.strip() in done.stdout and f"comparison: {out.relative_to(tmp_path)}" in done.stdout
    record = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in record["runs"]] == ["peer", "ours"]
    for row in record["runs"]:
        assert row["status"] == "finished" and row["iterations"] == 2
        assert all(_finite_or_none(row["metrics"][c]) for c in COLUMNS), row["metrics"]
        assert set(row["metrics"]["class_AP50"]) == {"rectangle", "ellipse", "triangle", "star"}
        assert row["sec_per_step"] > 0 and row["wall_time_s"] > 0
    peer = out / "peer"
    assert [r["iter"] for r in run_files.read_metrics_jsonl(peer / run_files.METRICS)] == [1, 2]
    assert run_files.read_final_metrics(peer)["iterations"] == 2
    assert "[peer] iter 2/2" in (peer / "peer.log").read_text()
    assert (out / "ours" / run_files.CHECKPOINTS / run_files.FINAL).is_file()
    assert "iter 2/2" in (out / "ours" / "train_net.log").read_text()


def test_the_peer_starts_from_the_trunk_our_training_starts_from(tiny, tmp_path):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "configs"), version_base="1.3"):
        cfg = compose("bench_peer", overrides=["experiment=ce", *tiny, TWO,
                                               f"output_dir={tmp_path / 'run'}"])
    _, _, peer = prepare(copy.deepcopy(cfg))
    seed_everything(cfg.seed)  # as detector_cli.train.train does before build_trainer
    ours = build_trainer(cfg, tmp_path / "run", torch.device("cpu"), None).models["main"]
    theirs = peer.model.backbone.body.state_dict()
    mine = ours.backbone.body.state_dict()
    assert theirs.keys() == mine.keys()
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)


@pytest.mark.parametrize(("args", "message"), [
    (["schedule=two_stage"], "error: schedule=two_stage: tools/bench_peer.py compares "
                             "end-to-end training only"),
    ([TWO, "runs=[peer,peer]"], "error: runs must be a list of peer and/or ours"),
    ([TWO, "+peer_overrides.num_classes=3"], "error: peer_overrides.num_classes is fixed"),
    ([TWO, "peer=detectron2"], "error: peer must be one of torchvision"),
])
def test_refused_in_one_line_before_anything_is_written(tiny, tmp_path, args, message):
    done = run_tool("bench_peer.py", [*tiny, *args, f"output_dir={tmp_path / 'out'}"],
                    cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "out").exists()


def test_one_run_alone_and_the_peer_overrides_in_its_settings(tiny, tmp_path):
    done = run_tool("bench_peer.py", [*tiny, TWO, "runs=[peer]", "schedule.lr.warmup_iters=0",
                                      "+peer_overrides.box_batch_size_per_image=16",
                                      "model.score_threshold=0.3",
                                      f"output_dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["comparison.json", "comparison.md", "peer"]
    record = json.loads((out / "comparison.json").read_text())
    assert [r["name"] for r in record["runs"]] == ["peer"]
    assert record["peer_settings"]["roi_num_samples"] == "16"
    # one evaluation for both: the peer's class-score cut is ours unless overridden
    assert record["peer_settings"]["score_threshold"] == "0.3"
    assert record["peer_overrides"] == {"box_batch_size_per_image": 16}
    assert "| peer | finished |" in (out / "comparison.md").read_text()
