"""dataset.anchor_sizes=auto / dataset.anchor_ratios=auto end to end: a tiny shapes run fits the
anchors, its config.json and checkpoints hold the numbers, tools/eval.py rebuilds the model from
them, a resumed run keeps them; the configured anchors' coverage is logged; a bad value is one
line and exit code 2. The command lines run in this process (helpers/run_tool.py)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.run_tool import run_tool
from hydra import compose, initialize_config_dir

from detector.checkpoint import load_checkpoint
from detector.data import generate_shapes_dataset
from detector.data.dataset import ImageRecord
from detector_cli.anchors import LIBRARY_DEFAULTS, settle_anchors

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

TINY = ["dataset.num_train=16", "dataset.num_val=8", "dataset.image_size=64",
        "dataset.min_size=64", "dataset.max_size=64", "batch_size=2", "num_workers=0",
        "train.progress=false", "train.eval_batch_size=8", "device=cpu"]
AUTO = ["dataset.anchor_sizes=auto", "dataset.anchor_ratios=auto"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("auto_anchors")


@pytest.fixture(scope="module")
def shapes_root(workdir) -> Path:
    return generate_shapes_dataset(root=workdir / "shapes", num_train=16, num_val=8,
                                   image_size=64)


def _ok(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output
    return output


def _numbers(values) -> bool:
    return isinstance(values, list) and values and all(isinstance(v, float) for v in values)


@pytest.fixture(scope="module")
def auto_run(workdir, shapes_root):
    run_dir = workdir / "auto"
    output = _ok(run_tool("train_net.py", [f"dataset.root={shapes_root}", *TINY, *AUTO,
                                           "schedule.iterations=2", "train.checkpoint_period=2",
                                           f"output_dir={run_dir}"], cwd=workdir))
    return run_dir, output


@pytest.mark.slow
def test_fitted_numbers_reach_config_and_checkpoints(auto_run):
    run_dir, output = auto_run
    config = json.loads((run_dir / "config.json").read_text())
    sizes, ratios = config["dataset"]["anchor_sizes"], config["dataset"]["anchor_ratios"]
    assert _numbers(sizes) and _numbers(ratios) and len(sizes) == len(ratios) == 3
    assert config["model"]["anchor_sizes"] == sizes and config["model"]["anchor_ratios"] == ratios
    for name in ("final.pth", "iter_0000002.pth"):
        model = load_checkpoint(run_dir / "checkpoints" / name)["config"]["model"]
        assert (model["anchor_sizes"], model["anchor_ratios"]) == (sizes, ratios)
    assert f"anchor_sizes={sizes} anchor_ratios={ratios}" in output
    line = re.search(r"anchor coverage \(IoU >= 0.5\): before (\d+\.\d) % -> after (\d+\.\d) % "
                     r"\(IoU >= 0.7: (\d+\.\d) % -> (\d+\.\d) %\); before: sizes "
                     r"\[16.0, 32.0, 64.0\] x ratios \[0.5, 1.0, 2.0\]", output)
    assert line, output[-3000:]  # before: the shapes config's own grid


@pytest.mark.slow
def test_eval_rebuilds_the_fitted_model(auto_run, workdir):
    run_dir, _ = auto_run
    checkpoint = run_dir / "checkpoints" / "final.pth"
    output = _ok(run_tool("eval.py", [f"checkpoint={checkpoint}", "num_workers=0",
                                      "batch_size=8", "num_visualize=0"], cwd=workdir))
    assert "Average Precision" in output


@pytest.mark.slow
def test_resume_takes_the_checkpoints_anchors(auto_run, workdir, shapes_root):
    run_dir, _ = auto_run
    first = json.loads((run_dir / "config.json").read_text())["dataset"]
    output = _ok(run_tool("train_net.py", [f"dataset.root={shapes_root}", *TINY, *AUTO,
                                           "schedule.iterations=3", f"output_dir={run_dir}",
                                           "resume=true"], cwd=workdir))
    assert "anchors of the resumed run: anchor_sizes=" in output
    assert "anchors fitted" not in output
    resumed = json.loads((run_dir / "config.json").read_text())["dataset"]
    assert (resumed["anchor_sizes"], resumed["anchor_ratios"]) == (
        first["anchor_sizes"], first["anchor_ratios"])


@pytest.mark.slow
def test_configured_anchors_coverage_and_hint(workdir, shapes_root):
    output = _ok(run_tool("train_net.py", [f"dataset.root={shapes_root}", *TINY,
                                           "dataset.anchor_sizes=[200,400]",
                                           "dataset.anchor_ratios=[1.0]", "schedule.iterations=1",
                                           f"output_dir={workdir / 'configured'}"], cwd=workdir))
    assert re.search(r"anchor coverage of the 32 training boxes: IoU >= 0.5: 0.0 %, "
                     r"IoU >= 0.7: 0.0 %", output), output[-3000:]
    assert "dataset.anchor_sizes=auto" in output


@pytest.mark.slow
@pytest.mark.parametrize("overrides,shown", [
    (["dataset.anchor_sizes=big"], "dataset.anchor_sizes must be a list of positive numbers or "
                                   "auto, got 'big'"),
    (["dataset.anchor_ratios=[1.0,-2]"],
     "dataset.anchor_ratios must be a list of positive numbers"),
    (["dataset.anchor_sizes=[]"], "dataset.anchor_sizes must be a list of positive numbers"),
    # 3 sizes (the shapes config's) x 11 ratios need 33 boxes; the 16 images hold 32
    (["dataset.anchor_sizes=auto", f"dataset.anchor_ratios=[{','.join(['1.0'] * 11)}]"],
     "dataset.anchor_sizes=auto: fitting 3 sizes x 11 ratios needs at least 33 boxes of "
     "positive size, got 32 in the training set"),
])
def test_bad_value_is_one_line(overrides, shown, workdir, shapes_root):
    result = run_tool("train_net.py", [f"dataset.root={shapes_root}", *TINY, *overrides,
                                       f"output_dir={workdir / 'bad'}"], cwd=workdir)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and shown in errors[0], output
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    if "auto" not in overrides[0]:  # a value check: before any data is read, nothing else
        assert len([line for line in output.splitlines() if line.strip()]) == 1, output
    assert not (workdir / "bad").exists()  # a failed start leaves no run folder


def test_settle_anchors_without_hydra_runtime(caplog):
    """Composed outside a Hydra run (no command line to leave out): an ``auto`` value replaces
    the library's default grid, and only that value is fitted."""
    rng = np.random.default_rng(0)
    records = []
    for index in range(20):
        wh = rng.uniform(10, 50, (3, 2))
        xy = rng.uniform(0, 60, (3, 2))
        records.append(ImageRecord(index, Path("/nonexistent.png"), 128, 128,
                                   np.concatenate([xy, xy + wh], 1).astype(np.float32),
                                   np.ones(3, np.int64)))
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["dataset.anchor_sizes=auto"])
    with caplog.at_level(logging.INFO, logger="train_net"):
        settle_anchors(cfg, SimpleNamespace(records=records))
    sizes = cfg.dataset.anchor_sizes
    assert len(sizes) == len(LIBRARY_DEFAULTS["dataset.anchor_sizes"])
    assert all(isinstance(v, float) and v > 0 for v in sizes)
    assert list(cfg.dataset.anchor_ratios) == [0.5, 1.0, 2.0]  # given: kept
    assert list(cfg.model.anchor_sizes) == list(sizes)  # the model's interpolation follows
    assert "before: sizes [128.0, 256.0, 512.0] x ratios [0.5, 1.0, 2.0] (the library default)" \
        in caplog.text
